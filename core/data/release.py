"""The 3D-MoLM release (3D-MoIT on Hugging Face, ``Sihangli/3D-MoIT``) read as one input, its parts joined.

Layout (as the reference's data loaders read it; ``DATA_ROOT`` is the ``3d-mol-dataset`` folder, or a folder
holding it)::

    pubchem/3d-pubchem-all.lmdb                     conformers by PubChem CID
    pubchem/{split}/3d-pubchem.lmdb                 the split's captioned molecules, by CID
    pubchem/{split}/2d_computed_properties.json     3D-MoIT records whose ``input`` is a CID
    pubchem/{split}/2d_descriptive_properties.json  3D-MoIT records whose ``input`` is a CID
    pubchemqc/pubchemqc_database.lmdb               PubChemQC DFT geometries by row index
    pubchemqc/{split}/3d_computed_properties_unit.json   records whose ``input`` is that index

``split`` is ``pretrain``, ``train``, ``valid`` or ``test``. LMDBs are single files (``subdir=False``); a value is
a pickled dict: PubChem ``{atoms, coordinates: [ndarray (N, 3)], smiles, description, enriched_description,
cid}``, PubChemQC ``{atoms, coordinates_list: [ndarray (N, 3)], smi}``. Unpickling can run code, so reading
needs ``trust_pickle`` (``--trust-pickle``).

The join makes one molecule per (split, key), so the release's partition is kept exactly as its loaders use
it (a key listed under two splits becomes two molecules):

- every molecule of ``pubchem/{split}/3d-pubchem.lmdb``, with its given coordinates, ``description`` and
  ``enriched_description``, and the caption record the reference's stage 3 builds from it (instruction
  ``Describe the input molecule.``, task ``Caption``, output the description) for train/valid/test (the
  reference never uses pretraining molecules in stage 3);
- the 3D-MoIT records of each split attached to the molecule of their key: a CID found in the split's LMDB
  joins that molecule, another CID gets its conformer from ``3d-pubchem-all.lmdb``; a PubChemQC index gets
  its DFT geometry from ``pubchemqc_database.lmdb`` (id ``pubchemqc:<index>``);
- every record keeps ``{instruction, input, output, task}`` and gains ``subset``, the sub-dataset it belongs
  to (:data:`SUBSETS`), the unit the reference's stage 3 samples in proportion to size^0.25;
- a key with no conformer is a per-record failure (``missing_conformer``), never a silent drop.

The join reads only the JSON files and the LMDB keys up front (:func:`read_release`); a molecule's pickled
value is read when :class:`ReleaseInputs` is sliced, so preparation holds one shard in memory.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from molbridge.core.data.conformers import MoleculeInput
from molbridge.core.errors import MolbridgeError

RELEASE_SPLITS = ("pretrain", "train", "valid", "test")
CAPTION_INSTRUCTION, CAPTION_TASK = "Describe the input molecule.", "Caption"
#: sub-dataset name -> (source database, file under ``{source}/{split}/``), in the reference's stage-3 order
SUBSETS = {
    "pubchemqc_properties": ("pubchemqc", "3d_computed_properties_unit.json"),
    "pubchem_properties": ("pubchem", "2d_computed_properties.json"),
    "pubchem_descriptive": ("pubchem", "2d_descriptive_properties.json"),
    "pubchem_caption": ("pubchem", "3d-pubchem.lmdb"),
}
CAPTION_SPLITS = ("train", "valid", "test")
MOIT_KEYS = ("instruction", "input", "output", "task")


class ReleaseError(MolbridgeError):
    """A 3D-MoLM release folder is incomplete or a file in it is not in the release's format."""


@dataclass(frozen=True)
class Layout:
    """Where the parts of a release are (any may be missing; :func:`find_release` needs at least one)."""

    root: Path

    @property
    def pubchem(self) -> Path:
        return self.root / "pubchem"

    @property
    def pubchemqc(self) -> Path:
        return self.root / "pubchemqc"

    def all_lmdb(self) -> Path:
        return self.pubchem / "3d-pubchem-all.lmdb"

    def split_lmdb(self, split: str) -> Path:
        return self.pubchem / split / "3d-pubchem.lmdb"

    def qc_lmdb(self) -> Path:
        return self.pubchemqc / "pubchemqc_database.lmdb"

    def moit(self, subset: str, split: str) -> Path:
        source, name = SUBSETS[subset]
        return self.root / source / split / name

    def files(self) -> list[Path]:
        """Every release file present (for messages and provenance)."""
        found = [p for p in (self.all_lmdb(), self.qc_lmdb()) if p.exists()]
        for split in RELEASE_SPLITS:
            found += [p for p in (self.split_lmdb(split), *(self.moit(s, split) for s in SUBSETS)) if p.exists()]
        return sorted(set(found))


def find_release(path: str | Path) -> Layout | None:
    """The release layout at ``path`` (the ``3d-mol-dataset`` folder, a folder holding it, or its ``pubchem``)."""
    path = Path(path)
    if not path.is_dir():
        return None
    if path.name in ("pubchem", "pubchemqc") and any((path / s).is_dir() for s in RELEASE_SPLITS):
        path = path.parent
    for root in (path, path / "3d-mol-dataset", path / "data" / "3d-mol-dataset"):
        if (root / "pubchem").is_dir() or (root / "pubchemqc").is_dir():
            layout = Layout(root)
            if layout.files():
                return layout
    return None


def _open(path: Path):
    import lmdb

    return lmdb.open(str(path), subdir=path.is_dir(), readonly=True, lock=False, readahead=False, meminit=False)


def _keys(path: Path) -> list[str]:
    env = _open(path)
    try:
        with env.begin() as txn:
            return [key.decode() for key in txn.cursor().iternext(keys=True, values=False)]
    finally:
        env.close()


def _read_moit(path: Path) -> list[dict]:
    """A 3D-MoIT file: a JSON list of records (as the release writes them), or JSON lines."""
    text = path.read_text(encoding="utf-8")
    try:
        records = json.loads(text)
    except json.JSONDecodeError:
        try:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise ReleaseError(f"{path}: neither a JSON list nor JSON lines ({exc})") from None
    if not isinstance(records, list):
        raise ReleaseError(f"{path}: expected a JSON list of {{{', '.join(MOIT_KEYS)}}} records")
    for position, record in enumerate(records):
        missing = [k for k in MOIT_KEYS if not isinstance(record, dict) or k not in record]
        if missing:
            raise ReleaseError(f"{path} record {position}: missing key(s) {', '.join(missing)}")
    return records


@dataclass
class Entry:
    """One molecule of the joined release before its conformer is read."""

    split: str
    source: str  # pubchem | pubchemqc
    key: str  # CID or PubChemQC row index
    lmdb: Path | None  # where its conformer is (None: nowhere, a missing_conformer failure)
    caption: bool = False  # add the stage-3 caption record from its description
    records: list[tuple[str, str, str, str, str]] = field(default_factory=list)  # instruction, input, output, ...


def _interned(value: Any, table: dict[str, str]) -> str:
    text = str(value)
    return table.setdefault(text, text)


def join(layout: Layout) -> tuple[list[Entry], dict[str, Any]]:
    """Every molecule of the release with its records attached, in a fixed order, and a summary of the join.

    Order: for each split, the molecules of its caption LMDB (LMDB key order), then CIDs only its records name
    (first appearance), then PubChemQC indices (first appearance).
    """
    strings: dict[str, str] = {}  # instructions, tasks and subsets repeat: one string object each
    all_keys = set(_keys(layout.all_lmdb())) if layout.all_lmdb().exists() else set()
    qc_keys = set(_keys(layout.qc_lmdb())) if layout.qc_lmdb().exists() else set()
    entries: list[Entry] = []
    counts: dict[str, dict[str, int]] = {}
    for split in RELEASE_SPLITS:
        by_key: dict[tuple[str, str], Entry] = {}
        cap = layout.split_lmdb(split)
        if cap.exists():
            for key in _keys(cap):
                by_key[("pubchem", key)] = Entry(split, "pubchem", key, cap, caption=split in CAPTION_SPLITS)
        for subset, (source, _) in SUBSETS.items():
            path = layout.moit(subset, split)
            if subset == "pubchem_caption" or not path.exists():
                continue
            records = _read_moit(path)
            counts.setdefault(split, {})[subset] = len(records)
            for record in records:
                key = str(record["input"]).strip()
                entry = by_key.get((source, key))
                if entry is None:
                    known = all_keys if source == "pubchem" else qc_keys
                    home = layout.all_lmdb() if source == "pubchem" else layout.qc_lmdb()
                    entry = by_key[(source, key)] = Entry(split, source, key, home if key in known else None)
                entry.records.append(
                    (
                        _interned(record["instruction"], strings),
                        key,
                        str(record["output"]),
                        _interned(record["task"], strings),
                        _interned(subset, strings),
                    )
                )
        captioned = sum(e.caption for e in by_key.values())
        if captioned:
            counts.setdefault(split, {})["pubchem_caption"] = captioned
        entries += sorted(by_key.values(), key=lambda e: e.source != "pubchem")  # stable: PubChem first
    if not entries:
        raise ReleaseError(f"{layout.root}: a release layout, but no molecule in it (files: {layout.files()})")
    missing = sum(e.lmdb is None for e in entries)
    summary = {
        "root": layout.root.name,
        "files": [p.relative_to(layout.root).as_posix() for p in layout.files()],
        "molecules": len(entries),
        "records": counts,
        "missing_conformers": missing,
        "subsets": {name: f"{source}/{{split}}/{file}" for name, (source, file) in SUBSETS.items()},
    }
    return entries, summary


class ReleaseInputs(Sequence):
    """The joined release as a sequence of :class:`MoleculeInput`; an item's LMDB value is read on access."""

    def __init__(self, layout: Layout, entries: list[Entry], summary: dict[str, Any]):
        self.layout, self.entries, self.summary = layout, entries, summary
        self._envs: dict[Path, Any] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._item(k) for k in range(*i.indices(len(self)))]
        return self._item(range(len(self))[i])

    def __iter__(self) -> Iterator[MoleculeInput]:
        return (self._item(k) for k in range(len(self)))

    def _value(self, path: Path, key: str) -> dict | None:
        if path not in self._envs:
            self._envs[path] = _open(path)
        with self._envs[path].begin() as txn:
            raw = txn.get(key.encode())
        return None if raw is None else pickle.loads(raw)  # noqa: S301 - read_release required trust_pickle

    def _item(self, k: int) -> MoleculeInput:
        entry = self.entries[k]
        mol_id = entry.key if entry.source == "pubchem" else f"pubchemqc:{entry.key}"
        records = [dict(zip((*MOIT_KEYS, "subset"), r, strict=True)) for r in entry.records]
        value = self._value(entry.lmdb, entry.key) if entry.lmdb is not None else None
        if value is None:
            where = "3d-pubchem-all.lmdb" if entry.source == "pubchem" else "pubchemqc_database.lmdb"
            detail = f"{entry.source} key {entry.key} ({entry.split}) has no conformer in {where}"
            return MoleculeInput(
                k, mol_id, instructions=records, split=entry.split, failure=("join", "missing_conformer", detail)
            )
        coords = value.get("coordinates", value.get("coordinates_list"))
        coords = coords if isinstance(coords, list) else [coords]
        texts = {t: str(value[t]).strip() for t in ("description", "enriched_description") if value.get(t)}
        if entry.caption and texts.get("description"):
            records.append(
                {
                    "instruction": CAPTION_INSTRUCTION,
                    "input": entry.key,
                    "output": texts["description"],
                    "task": CAPTION_TASK,
                    "subset": "pubchem_caption",
                }
            )
        return MoleculeInput(
            k,
            mol_id,
            smiles=value.get("smiles", value.get("smi")),
            atoms=[str(a) for a in value["atoms"]],
            coordinates=[np.asarray(c, dtype=np.float32) for c in coords],
            texts=texts,
            instructions=records,
            split=entry.split,
        )

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()


def read_release(path: str | Path, trust_pickle: bool = False) -> ReleaseInputs:
    """The release at ``path`` joined into one input (see the module docstring); needs ``trust_pickle``."""
    layout = find_release(path)
    if layout is None:
        raise ReleaseError(f"{path}: not a 3D-MoLM release folder (no pubchem/ or pubchemqc/ with release files)")
    if not trust_pickle:
        raise ReleaseError(
            f"{path}: the 3D-MoLM release stores pickled Python objects in its LMDBs, and unpickling can run "
            "arbitrary code. Pass --trust-pickle (trust_pickle=True) only for a copy from a source you trust; the "
            "Parquet dataset it is converted to is pickle-free."
        )
    return ReleaseInputs(layout, *join(layout))
