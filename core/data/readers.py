"""Readers for the formats molecules arrive in; each yields :class:`MoleculeInput` in file order.

- ``.smi``: ``SMILES [id]`` per line (RDKit's NCI set, PubChem CID-SMILES dumps).
- ``.sdf`` / ``.mol`` (optionally ``.gz``): MOL blocks; SD data fields become text fields.
- ``.csv`` / ``.tsv`` / ``.txt``: a header with a SMILES column (``smiles``/``SMILES``) and optional
  id (``cid``/``CID``/``id``), text (``description``/``text``) and split (``split``) columns. ChEBI-20's TSV
  (``CID  SMILES  description``) is this format.
- ``.jsonl``: one object per line with the same keys.
- ``.json``: 3D-MoIT instruction records ``{instruction, input, output, task}`` (a list, or a dict
  ``cid -> list``); records are grouped per molecule (``cid`` when present, else ``input``). An ``input``
  that is a SMILES is embedded; one that is a key (a PubChem CID or PubChemQC index, as in the release)
  has no conformer in a lone JSON file: each such molecule is a ``missing_conformer`` failure that says
  to prepare the release folder instead.
- ``.lmdb`` (directory or file): a 3D-MoLM PubChem LMDB, key = CID, value = a **pickled** dict
  ``{atoms, coordinates, smiles, description, enriched_description, cid}``. Unpickling runs arbitrary
  code from the file, so it is refused unless ``trust_pickle=True``; convert it once with
  ``bench data prepare data.lmdb --trust-pickle --out DIR`` and use the pickle-free Parquet afterwards.
- a **directory**: the whole 3D-MoLM release (:mod:`~molbridge.core.data.release`: every LMDB and 3D-MoIT
  file joined, its splits kept), or one file per split (``train``/``valid``/``validation``/``test``/
  ``pretrain`` + an extension above, e.g. ChEBI-20's ``train.txt``, ``validation.txt``, ``test.txt``), read
  as one dataset whose ``given`` split is those files. Several files given together are read the same way.

Split labels (a ``split`` column, the file a molecule came from, the release's folder) become the dataset's
``given`` split kind (:mod:`~molbridge.core.data.splits`).
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from molbridge.core.data.conformers import MoleculeInput
from molbridge.core.data.splits import normalize_label
from molbridge.core.errors import MolbridgeError

SMILES_KEYS = ("smiles", "SMILES", "canonical_smiles", "Smiles")
ID_KEYS = ("cid", "CID", "id", "ID", "name")
TEXT_KEYS = ("description", "text", "caption", "Description")
SPLIT_KEYS = ("split", "Split", "SPLIT")
MOIT_KEYS = ("instruction", "input", "output", "task")
SPLIT_FILES = ("pretrain", "train", "valid", "test")  # order of one-file-per-split inputs
_KEY = re.compile(r"\d+")  # a PubChem CID or PubChemQC index, not a SMILES


class InputFormatError(MolbridgeError):
    """An input file is not in the format its extension says, or lacks a needed column."""


def _open_text(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    return opener(path, "rt", encoding="utf-8", newline="")


def _kind(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    if path.is_dir() and (path / "data.mdb").is_file():
        return ".lmdb"
    return suffixes[-1].lower() if suffixes else ""


def read_smi(path: Path) -> Iterator[MoleculeInput]:
    with _open_text(path) as handle:
        index = 0
        for line_no, line in enumerate(handle, 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            mol_id = parts[1] if len(parts) > 1 else f"{path.name}:{line_no}"
            yield MoleculeInput(index, mol_id, smiles=parts[0])
            index += 1


def read_sdf(path: Path, id_field: str | None = None) -> Iterator[MoleculeInput]:
    """MOL blocks split on ``$$$$`` ourselves, so an unparsable block is kept (as a failure) not skipped."""
    with _open_text(path) as handle:
        text = handle.read()
    first, *rest = text.split("$$$$")
    # each later chunk starts with the end of its "$$$$" line; only that goes, as a MOL block's first line
    # (its title) may be empty
    blocks = [b for b in [first] + [chunk.partition("\n")[2] for chunk in rest] if b.strip()]
    for index, block in enumerate(blocks):
        molblock, _, data = block.partition("M  END")
        fields = _sd_fields(data)
        title = molblock.splitlines()[0].strip() if molblock.strip() else ""
        mol_id = fields.get(id_field or "", "") or title or f"{path.name}#{index}"
        texts = {k: v for k, v in fields.items() if k.lower() in TEXT_KEYS or k.lower() == "name"}
        yield MoleculeInput(index, mol_id, molblock=molblock + "M  END\n", texts=texts)


def _sd_fields(data: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key: str | None = None
    lines: list[str] = []
    for line in data.splitlines():
        if line.startswith(">"):
            if key:
                fields[key] = "\n".join(lines).strip()
            key, lines = line.split("<", 1)[1].split(">", 1)[0] if "<" in line else None, []
        elif key is not None:
            lines.append(line)
    if key:
        fields[key] = "\n".join(lines).strip()
    return fields


def _pick(row: dict, keys: tuple[str, ...]) -> str | None:
    return next((str(row[k]) for k in keys if row.get(k) not in (None, "")), None)


def _from_row(index: int, row: dict, where: str) -> MoleculeInput:
    smiles = _pick(row, SMILES_KEYS)
    if smiles is None and not any(k in row for k in SMILES_KEYS):
        raise InputFormatError(
            f"{where}: no SMILES column (expected one of {', '.join(SMILES_KEYS)}); columns: {', '.join(map(str, row))}"
        )
    texts = {"description": text} if (text := _pick(row, TEXT_KEYS)) is not None else {}
    split = normalize_label(_pick(row, SPLIT_KEYS))
    return MoleculeInput(index, _pick(row, ID_KEYS) or str(index), smiles=smiles or "", texts=texts, split=split)


def read_table(path: Path) -> Iterator[MoleculeInput]:
    """CSV/TSV with a header; TSV (ChEBI-20) when the extension says so or the header has tabs."""
    with _open_text(path) as handle:
        first = handle.readline()
        handle.seek(0)
        delimiter = "\t" if _kind(path) == ".tsv" or "\t" in first else ","
        for index, row in enumerate(csv.DictReader(handle, delimiter=delimiter)):
            yield _from_row(index, row, f"{path} row {index + 2}")


def read_jsonl(path: Path) -> Iterator[MoleculeInput]:
    with _open_text(path) as handle:
        index = 0
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputFormatError(f"{path} line {line_no}: not JSON ({exc})") from None
            yield _from_row(index, row, f"{path} line {line_no}")
            index += 1


def read_moit(path: Path) -> Iterator[MoleculeInput]:
    """3D-MoIT instruction JSON grouped into one input per molecule, records kept in file order."""
    with _open_text(path) as handle:
        data = json.load(handle)
    items = [(str(k), r) for k, rs in data.items() for r in rs] if isinstance(data, dict) else [(None, r) for r in data]
    groups: dict[str, list[dict]] = {}
    for position, (cid, record) in enumerate(items):
        missing = [k for k in MOIT_KEYS if k not in record]
        if missing:
            raise InputFormatError(f"{path} record {position}: missing key(s) {', '.join(missing)}")
        key = cid or str(record.get("cid") or record["input"])
        groups.setdefault(key, []).append({k: str(record[k]) for k in MOIT_KEYS})
    for index, (key, records) in enumerate(groups.items()):
        captions = [r["output"] for r in records if r["task"] in ("Description", "Caption")]
        texts = {"description": captions[0]} if captions else {}
        given = records[0]["input"].strip()
        if _KEY.fullmatch(given):
            detail = (
                f"input '{given}' is a PubChem CID or PubChemQC index, not a SMILES; its conformer is in the "
                "3D-MoLM release's LMDBs: prepare the release folder (bench data prepare DATA_ROOT --trust-pickle)"
            )
            yield MoleculeInput(
                index, key, texts=texts, instructions=records, failure=("join", "missing_conformer", detail)
            )
            continue
        yield MoleculeInput(index, key, smiles=given, texts=texts, instructions=records)


def read_molm_lmdb(path: Path, trust_pickle: bool = False) -> Iterator[MoleculeInput]:
    """The 3D-MoLM PubChem LMDB: given coordinates are kept (no re-embedding). Needs ``trust_pickle``."""
    if not trust_pickle:
        raise InputFormatError(
            f"{path}: the 3D-MoLM LMDB stores pickled Python objects, and unpickling can run arbitrary code. "
            "Pass --trust-pickle (trust_pickle=True) only for a file from a source you trust; the Parquet "
            "dataset it is converted to is pickle-free."
        )
    import pickle

    import lmdb

    env = lmdb.open(str(path), subdir=path.is_dir(), readonly=True, lock=False, readahead=False)
    try:
        with env.begin() as txn:
            for index, (key, value) in enumerate(txn.cursor()):
                entry = pickle.loads(value)  # noqa: S301 - the caller opted in with trust_pickle
                coords = entry.get("coordinates")
                coords = coords if isinstance(coords, list) else [coords]
                coords = [np.asarray(c, dtype=np.float32) for c in coords]
                texts = {k: str(entry[k]) for k in ("description", "enriched_description") if entry.get(k)}
                yield MoleculeInput(
                    index,
                    str(entry.get("cid", key.decode())),
                    smiles=entry.get("smiles"),
                    atoms=list(entry["atoms"]),
                    coordinates=coords,
                    texts=texts,
                )
    finally:
        env.close()


def _read_file(path: Path, trust_pickle: bool) -> list[MoleculeInput]:
    kind = _kind(path)
    readers = {
        ".smi": read_smi,
        ".sdf": read_sdf,
        ".mol": read_sdf,
        ".csv": read_table,
        ".tsv": read_table,
        ".txt": read_table,
        ".jsonl": read_jsonl,
        ".json": read_moit,
    }
    if kind == ".lmdb" or kind == ".mdb":
        return list(read_molm_lmdb(path, trust_pickle))
    if kind not in readers:
        known = ", ".join(sorted(readers) + [".lmdb"])
        raise InputFormatError(f"{path}: unknown input format '{kind}'; known: {known}")
    try:
        return list(readers[kind](path))
    except (UnicodeDecodeError, csv.Error, json.JSONDecodeError, io.UnsupportedOperation) as exc:
        raise InputFormatError(f"{path}: cannot read as {kind}: {exc}") from None


def split_of_file(path: Path) -> str | None:
    """The split a file's name says it holds (``validation.txt`` -> ``valid``), or None."""
    label = normalize_label(path.name.split(".")[0])
    return label if label in SPLIT_FILES else None


def read_split_files(paths: list[Path], trust_pickle: bool = False) -> list[MoleculeInput]:
    """One file per split read as one input: each molecule's ``split`` is its file's (pretrain/train/valid/test)."""
    labelled = [(split_of_file(p), p) for p in paths]
    unnamed = [str(p) for label, p in labelled if label is None]
    if unnamed:
        raise InputFormatError(
            f"several input files are read as one file per split, named after it ({', '.join(SPLIT_FILES)}, "
            f"or validation/val/dev); cannot tell the split of: {', '.join(unnamed)}"
        )
    labels = [label for label, _ in labelled]
    if len(set(labels)) < len(labels):
        raise InputFormatError(f"two input files for the same split: {', '.join(map(str, paths))}")
    items: list[MoleculeInput] = []
    for label, path in sorted(labelled, key=lambda lp: SPLIT_FILES.index(lp[0])):
        for item in _read_file(path, trust_pickle):
            items.append(dataclasses.replace(item, index=len(items), split=label))
    return items


def read_inputs(path: str | Path | list, *, trust_pickle: bool = False) -> Sequence[MoleculeInput]:
    """Every molecule of an input (file, directory or several files; see the module docstring for the formats).

    A list for files; a lazy :class:`~molbridge.core.data.release.ReleaseInputs` for the 3D-MoLM release.
    """
    if isinstance(path, list | tuple):
        paths = [Path(p) for p in path]
        if len(paths) == 1:
            return read_inputs(paths[0], trust_pickle=trust_pickle)
        for p in paths:
            if not p.exists():
                raise InputFormatError(f"{p}: no such file or directory")
        return read_split_files(paths, trust_pickle)
    path = Path(path)
    if not path.exists():
        raise InputFormatError(f"{path}: no such file or directory")
    if path.is_dir() and _kind(path) != ".lmdb":
        from molbridge.core.data.release import find_release, read_release

        if find_release(path) is not None:
            return read_release(path, trust_pickle)
        files = [p for p in sorted(path.iterdir()) if p.is_file() and split_of_file(p) and not p.name.startswith(".")]
        if not files:
            raise InputFormatError(
                f"{path}: a directory, but neither the 3D-MoLM release (pubchem/, pubchemqc/) nor one file per "
                f"split ({', '.join(SPLIT_FILES)} or validation, e.g. ChEBI-20's train.txt validation.txt test.txt)"
            )
        return read_split_files(files, trust_pickle)
    items = _read_file(path, trust_pickle)
    return items


class Subset(Sequence):
    """Some positions of an input, renumbered 0..n-1 (``--limit``/``--sample``); lazy inputs stay lazy."""

    def __init__(self, inputs: Sequence[MoleculeInput], positions: list[int]):
        self.inputs, self.positions = inputs, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        k = range(len(self))[i]
        return dataclasses.replace(self.inputs[self.positions[k]], index=k)


def select(
    inputs: Sequence[MoleculeInput], *, limit: int | None = None, sample: int | None = None, seed: int = 0
) -> Sequence[MoleculeInput]:
    """The first ``limit`` inputs, or ``sample`` of them drawn with ``seed`` (kept in input order)."""
    if limit is not None and sample is not None:
        raise MolbridgeError("--limit and --sample: choose one")
    if limit is not None:
        positions = list(range(min(limit, len(inputs))))
    elif sample is not None:
        count = min(sample, len(inputs))
        positions = sorted(np.random.default_rng(seed).choice(len(inputs), size=count, replace=False).tolist())
    else:
        return inputs
    return Subset(inputs, positions)
