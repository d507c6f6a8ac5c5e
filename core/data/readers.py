"""Readers for the formats molecules arrive in; each yields :class:`MoleculeInput` in file order.

- ``.smi``: ``SMILES [id]`` per line (RDKit's NCI set, PubChem CID-SMILES dumps).
- ``.sdf`` / ``.mol`` (optionally ``.gz``): MOL blocks; SD data fields become text fields.
- ``.csv`` / ``.tsv`` / ``.txt``: a header with a SMILES column (``smiles``/``SMILES``) and optional
  id (``cid``/``CID``/``id``) and text (``description``/``text``) columns. ChEBI-20's TSV
  (``CID  SMILES  description``) is this format.
- ``.jsonl``: one object per line with the same keys.
- ``.json``: 3D-MoIT instruction records ``{instruction, input, output, task}`` (a list, or a dict
  ``cid -> list``); records are grouped per molecule (``cid`` when present, else the SMILES in ``input``).
- ``.lmdb`` (directory or file): the 3D-MoLM PubChem release, key = CID, value = a **pickled** dict
  ``{atoms, coordinates, smiles, description, enriched_description, cid}``. Unpickling runs arbitrary
  code from the file, so it is refused unless ``trust_pickle=True``; convert it once with
  ``bench data prepare data.lmdb --trust-pickle --out DIR`` and use the pickle-free Parquet afterwards.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from molbridge.core.data.conformers import MoleculeInput
from molbridge.core.errors import MolbridgeError

SMILES_KEYS = ("smiles", "SMILES", "canonical_smiles", "Smiles")
ID_KEYS = ("cid", "CID", "id", "ID", "name")
TEXT_KEYS = ("description", "text", "caption", "Description")
MOIT_KEYS = ("instruction", "input", "output", "task")


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
    fields, key, lines = {}, None, []
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
    return MoleculeInput(index, _pick(row, ID_KEYS) or str(index), smiles=smiles or "", texts=texts)


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
        yield MoleculeInput(index, key, smiles=records[0]["input"], texts=texts, instructions=records)


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


def read_inputs(path: str | Path, *, trust_pickle: bool = False) -> list[MoleculeInput]:
    """Every molecule of an input file, by extension (see the module docstring for the formats)."""
    path = Path(path)
    if not path.exists():
        raise InputFormatError(f"{path}: no such file or directory")
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
