"""Offline WordNet 3.0 for METEOR: an NLTK-readable corpus folder built from the WordNet dict files.

Nothing is downloaded. The dict files come from, in order:

1. ``$MOLBRIDGE_WORDNET_DIR``: any folder with the WordNet 3.0 dict files (``data.noun``, ``index.noun``,
   ``noun.exc``, ...), e.g. an unzipped ``nltk_data/corpora/wordnet``;
2. ``/usr/share/wordnet``: Debian/Ubuntu
   ``apt-get install --no-install-recommends wordnet-base wordnet-sense-index``.

NLTK's reader also needs ``lexnames``, which Debian does not ship, and (NLTK >= 3.9 path security) only
reads folders under an entry of ``nltk.data.path``, so the files are copied once into
``$MOLBRIDGE_CACHE/nltk_data/corpora/wordnet`` (default ``~/.cache/molbridge``) with a generated
``lexnames``, and that ``nltk_data`` folder is added to ``nltk.data.path``. The build is deterministic and
atomic (a folder is renamed into place), and is redone when the source files change.
"""

import functools
import hashlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from molbridge.core.errors import MolbridgeError

VERSION = "3.0"
SYSTEM_DIR = Path("/usr/share/wordnet")
INSTALL_HINT = (
    "install it with `sudo apt-get install --no-install-recommends wordnet-base wordnet-sense-index` "
    "(Debian/Ubuntu), or set MOLBRIDGE_WORDNET_DIR to a folder holding the WordNet 3.0 dict files (data.noun, "
    "index.noun, noun.exc, ...; without root: `apt-get download wordnet-base && dpkg-deb -x wordnet-base_*.deb D`, "
    "then D/usr/share/wordnet)"
)

_POS = ("noun", "verb", "adj", "adv")
REQUIRED = tuple(f"{kind}.{pos}" for kind in ("data", "index") for pos in _POS) + tuple(f"{p}.exc" for p in _POS)
# Used by NLTK only for sense keys and lemma counts, not by METEOR: written empty when the source lacks them.
OPTIONAL = ("index.sense", "cntlist.rev")
_MARKER = "molbridge-source.txt"

# The 45 lexicographer files of WordNet 3.0, numbered as in the lexnames(5) manual page; the third column
# is the synset type (1 noun, 2 verb, 3 adjective, 4 adverb). NLTK parses this file to name each synset's
# lexname; the order matters because data files store the number.
LEXNAMES = (
    ["adj.all", "adj.pert", "adv.all"]
    + [
        f"noun.{n}"
        for n in (
            "Tops act animal artifact attribute body cognition communication event feeling food group location "
            "motive object person phenomenon plant possession process quantity relation shape state substance time"
        ).split()
    ]
    + [
        f"verb.{n}"
        for n in (
            "body change cognition communication competition consumption contact creation emotion motion perception "
            "possession social stative weather"
        ).split()
    ]
    + ["adj.ppl"]
)
_POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


class WordNetUnavailableError(MolbridgeError):
    """WordNet 3.0 is needed (METEOR) but no usable copy was found."""


def lexnames_text() -> str:
    """Contents of NLTK's ``lexnames`` file: ``NN<TAB>name<TAB>posnum`` for each lexicographer file."""
    return "".join(f"{i:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


def cache_dir(cache_root: Path | None = None) -> Path:
    """Where the NLTK-readable copy lives: ``<cache_root>/nltk_data/corpora/wordnet``; the cache root defaults
    to ``$MOLBRIDGE_CACHE`` or ``~/.cache/molbridge``."""
    base = cache_root or Path(os.environ.get("MOLBRIDGE_CACHE", Path.home() / ".cache" / "molbridge"))
    return Path(base) / "nltk_data" / "corpora" / "wordnet"


def source_dirs() -> list[Path]:
    """Folders searched for the dict files, in order of preference."""
    override = os.environ.get("MOLBRIDGE_WORDNET_DIR")
    return ([Path(override)] if override else []) + [SYSTEM_DIR]


def _missing(folder: Path) -> list[str]:
    return [name for name in REQUIRED if not (folder / name).is_file()]


def _fingerprint(source: Path) -> str:
    """Names and sizes of the source files (cheap; a package upgrade changes them)."""
    entries = [f"{n}:{(source / n).stat().st_size}" for n in REQUIRED + OPTIONAL if (source / n).is_file()]
    return f"{source.resolve()}\n" + hashlib.sha256("\n".join(entries).encode()).hexdigest() + "\n"


def _find_source(folders: list[Path]) -> Path:
    problems = []
    for folder in folders:
        missing = _missing(folder)
        if not missing:
            return folder
        problems.append(f"{folder}: " + ("not found" if not folder.is_dir() else f"missing {', '.join(missing)}"))
    raise WordNetUnavailableError(
        f"METEOR needs WordNet {VERSION} and no usable copy was found ({'; '.join(problems)}); {INSTALL_HINT}"
    )


def build(source: Path, target: Path) -> Path:
    """Copy the dict files from ``source`` into ``target`` with a generated ``lexnames``; return ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=target.parent))
    try:
        for name in REQUIRED:
            shutil.copyfile(source / name, staging / name)
        for name in OPTIONAL:
            if (source / name).is_file():
                shutil.copyfile(source / name, staging / name)
            else:
                (staging / name).touch()
        if (source / "lexnames").is_file():
            shutil.copyfile(source / "lexnames", staging / "lexnames")
        else:
            (staging / "lexnames").write_text(lexnames_text())
        (staging / _MARKER).write_text(_fingerprint(source))
        shutil.rmtree(target, ignore_errors=True)  # a stale copy
        try:
            staging.rename(target)
        except OSError:  # another process (e.g. a DDP rank) renamed its identical copy first
            if not _is_current(target, source):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def corpus_dir(sources: list[Path] | None = None, cache_root: Path | None = None) -> Path:
    """The NLTK-readable WordNet folder, built on first use; rebuilt if the source files changed.

    A complete cached copy is used as it is when no source is present any more.
    """
    cache = cache_dir(cache_root)
    sources = source_dirs() if sources is None else sources
    try:
        source = _find_source(sources)
    except WordNetUnavailableError:
        if (cache / _MARKER).is_file() and not _missing(cache):
            return cache
        raise
    return cache if _is_current(cache, source) else build(source, cache)


def _is_current(cache: Path, source: Path) -> bool:
    marker = cache / _MARKER
    return marker.is_file() and marker.read_text() == _fingerprint(source) and not _missing(cache)


def _reader_class():
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class WordNet30Reader(WordNetCorpusReader):
        """NLTK's reader without the WordNet 3.0 -> loaded-version sense map (built for the multilingual
        OMW data, which METEOR does not use): with 3.0 loaded it is the identity, yet NLTK builds it by
        reading index.sense twice (~5 s of the ~8 s load)."""

        def map_wn(self, version="wordnet"):
            return None

    return WordNet30Reader


@functools.cache
def _reader(root: str):
    import nltk

    data_root = str(Path(root).parent.parent)  # <data_root>/corpora/wordnet, the layout NLTK expects
    if data_root not in nltk.data.path:
        nltk.data.path.append(data_root)
    try:
        with warnings.catch_warnings():  # "multilingual functions are not available": no OMW data, on purpose
            warnings.simplefilter("ignore", UserWarning)
            reader = _reader_class()(root, None)
    except (OSError, ValueError, LookupError) as exc:
        raise WordNetUnavailableError(f"WordNet in {root} cannot be read ({exc}); {INSTALL_HINT}") from exc
    if reader.get_version() != VERSION:
        raise WordNetUnavailableError(
            f"WordNet in {root} is version {reader.get_version()}, METEOR here uses {VERSION}; {INSTALL_HINT}"
        )
    return reader


def wordnet_reader(sources: list[Path] | None = None, cache_root: Path | None = None):
    """An NLTK ``WordNetCorpusReader`` for WordNet 3.0 (loaded once per folder, ~3 s); raises
    WordNetUnavailableError naming what is missing and how to install it."""
    return _reader(str(corpus_dir(sources, cache_root)))
