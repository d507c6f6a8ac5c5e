"""The on-disk dataset format: a directory of Parquet shards, read lazily and memory-mapped.

Why Parquet: columnar zstd compression keeps the shipped set small (coordinates are the bulk), shards
stream row group by row group for PubChem-size data, files are memory-mapped on read, any tool reads
them (pyarrow, pandas, DuckDB, Spark), and a shard is one file written atomically, which makes
preparation resumable. No pickle anywhere: reading a dataset never runs code.

Layout of a dataset directory::

    dataset.json              name, format version, counts, shard list and row counts, how it was built
    shards/part-00000.parquet molecules (schema :data:`SCHEMA`), in input order
    failures/part-00000.jsonl one line per unusable input: index, id, input, stage, reason, detail
    splits.parquet            one row per molecule: its split under each split kind (random, scaffold, and
                              given / given-described / given-pretrain when the input had its own partition)
    features/<key>/...        encoder featurization cache (see :mod:`molbridge.core.data.features`)

Coordinates are stored as int32 milli-angstrom (a 0.0005 A rounding error, far below MMFF's own
accuracy) because integers compress about twice as well as float32 under zstd.

Format versions: 2 adds ``forcefield`` (per conformer: mmff, uff or none), ``given_split`` (the input's own
split label) and an instruction's ``subset`` (the 3D-MoIT sub-dataset it came from); ``mmff_energy`` holds
NaN for a conformer that MMFF94 did not optimise. Version 1 datasets (molbridge-mini) read unchanged: their
conformers are all MMFF94-optimised, they have no given split, their instructions no subset.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from molbridge.core.data.conformers import Failure, MoleculeRecord
from molbridge.core.errors import MolbridgeError

if TYPE_CHECKING:
    from molbridge.core.data.conformer_properties import ConformerProperties

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
COORD_SCALE = 1000  # stored integer units per angstrom

INSTRUCTION_TYPE = pa.struct(
    [
        ("instruction", pa.string()),
        ("input", pa.string()),
        ("output", pa.string()),
        ("task", pa.string()),
        ("subset", pa.string()),  # v2: the 3D-MoIT sub-dataset (null when the input named none)
    ]
)
SCHEMA = pa.schema(
    [
        ("index", pa.int64()),  # position in the input (merge order, failure cross-reference)
        ("id", pa.string()),
        ("smiles", pa.string()),
        ("atomic_numbers", pa.list_(pa.int8())),
        ("num_conformers", pa.int16()),
        ("coords", pa.list_(pa.int32())),  # (C, N, 3) flattened, milli-angstrom
        ("mmff_energy", pa.list_(pa.float32())),  # kcal/mol per conformer
        ("converged", pa.list_(pa.bool_())),
        ("embedding", pa.string()),
        ("texts", pa.map_(pa.string(), pa.string())),
        ("properties", pa.map_(pa.string(), pa.float64())),
        ("instructions", pa.list_(INSTRUCTION_TYPE)),
        ("forcefield", pa.list_(pa.string())),  # v2: per conformer, mmff | uff | none
        ("given_split", pa.string()),  # v2: the input's own split label (null: it had none)
    ]
)


class DatasetError(MolbridgeError):
    """A dataset directory is missing, incomplete or not in molbridge's format."""


@dataclass
class Molecule:
    """One stored molecule as tasks read it."""

    index: int
    id: str
    smiles: str
    atomic_numbers: np.ndarray  # int64 (N,), hydrogens included unless prepared with hydrogens=heavy
    conformers: np.ndarray  # float32 (C, N, 3) angstrom; conformer 0 is the lowest force-field energy
    mmff_energy: np.ndarray  # kcal/mol; NaN where the conformer's force field is not MMFF94
    converged: np.ndarray
    embedding: str  # etkdg | random_coords | given
    texts: dict[str, str] = field(default_factory=dict)
    properties: dict[str, float] = field(default_factory=dict)
    instructions: list[dict[str, str]] = field(default_factory=list)  # {instruction, input, output, task[, subset]}
    forcefield: list[str] = field(default_factory=list)  # per conformer: mmff | uff | none
    given_split: str | None = None  # the input's own split label, if it had one

    @property
    def description(self) -> str:
        return self.texts.get("description", "")


# --- writing ----------------------------------------------------------------------------------------


def records_table(records: Iterable[MoleculeRecord]) -> pa.Table:
    """Molecule records as one Arrow table in :data:`SCHEMA` (maps sorted by key for byte stability)."""
    rows = []
    for r in records:
        forcefield = r.forcefields()
        mmff = np.asarray(forcefield) == "mmff"
        rows.append(
            {
                "index": r.index,
                "id": r.id,
                "smiles": r.smiles,
                "atomic_numbers": r.atomic_numbers.astype(np.int8),
                "num_conformers": len(r.conformers),
                "coords": np.rint(r.conformers.astype(np.float64) * COORD_SCALE).astype(np.int32).ravel(),
                "mmff_energy": np.where(mmff, r.energies, np.nan).astype(np.float32),
                "converged": r.converged,
                "embedding": r.embedding,
                "texts": sorted(r.texts.items()),
                "properties": sorted(r.properties.items()),
                "instructions": r.instructions,
                "forcefield": forcefield,
                "given_split": r.split,
            }
        )
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def atomic_write(path: Path, write) -> None:
    """Write to a temporary name and rename: a killed job never leaves a shard that looks finished."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_parquet(table: pa.Table, path: Path, row_group_size: int = 2048) -> None:
    atomic_write(
        path,
        lambda tmp: pq.write_table(table, tmp, compression="zstd", compression_level=19, row_group_size=row_group_size),
    )


def write_failures(failures: Iterable[Failure], path: Path) -> None:
    lines = [json.dumps(vars(f), sort_keys=True, ensure_ascii=False) + "\n" for f in failures]
    atomic_write(path, lambda tmp: tmp.write_text("".join(lines), encoding="utf-8"))


def write_json(data: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


# --- reading ----------------------------------------------------------------------------------------


def packaged_datasets() -> dict[str, Path]:
    """Datasets shipped inside the package, by name."""
    return {"molbridge-mini": Path(__file__).with_name("molbridge_mini")}


def resolve(name_or_dir: str | Path) -> Path:
    """A packaged dataset name or a dataset directory -> its directory (checked to exist)."""
    packaged = packaged_datasets()
    path = packaged.get(str(name_or_dir), Path(name_or_dir))
    if not (path / "dataset.json").is_file():
        raise DatasetError(
            f"'{name_or_dir}' is neither a packaged dataset ({', '.join(packaged)}) nor a "
            f"directory with dataset.json (write one with `bench data prepare`)"
        )
    return path


class MoleculeStore:
    """Random access to a prepared dataset: ``store[i]``, ``len(store)``, ``store.split(...)``.

    Shards are opened on first use (memory-mapped) and the last few kept decoded, so a PubChem-size
    dataset never has to fit in memory while a small one costs one read per shard.
    """

    def __init__(self, root: str | Path):
        self.root = resolve(root)
        self.meta = json.loads((self.root / "dataset.json").read_text())
        if self.meta.get("format_version") not in READABLE_VERSIONS:
            found = self.meta.get("format_version")
            raise DatasetError(
                f"{self.root / 'dataset.json'}: format_version {found} is not one this molbridge reads "
                f"({', '.join(map(str, READABLE_VERSIONS))}); rebuild the dataset or update molbridge"
            )
        self.shards = [self.root / s["path"] for s in self.meta["shards"]]
        self.offsets = np.cumsum([0] + [s["molecules"] for s in self.meta["shards"]])
        self._load_shard = functools.lru_cache(maxsize=4)(self._read_shard)
        self._conformer_properties: ConformerProperties | None = None

    @property
    def name(self) -> str:
        return self.meta["name"]

    def conformer_properties(self, i: int) -> dict[str, np.ndarray]:
        """GFN2-xTB values of each conformer of molecule ``i`` (:mod:`molbridge.core.data.conformer_properties`;
        a :class:`DatasetError` naming the command that computes them if the dataset has none)."""
        if self._conformer_properties is None:
            from molbridge.core.data.conformer_properties import ConformerProperties

            self._conformer_properties = ConformerProperties(self.root)
        return self._conformer_properties.values(i % len(self))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _read_shard(self, shard: int) -> dict[str, list]:
        path = self.shards[shard]
        if not path.is_file():
            raise DatasetError(f"{path}: shard listed in dataset.json is missing")
        columns = pq.read_table(path, memory_map=True).to_pydict()
        rows = len(columns["index"])
        if "forcefield" not in columns:  # format 1: every conformer MMFF94-optimised, no given split
            columns["forcefield"] = [
                ["none" if e == "given" else "mmff"] * c
                for e, c in zip(columns["embedding"], columns["num_conformers"], strict=True)
            ]
            columns["given_split"] = [None] * rows
        return columns

    def __getitem__(self, i: int) -> Molecule:
        if not -len(self) <= i < len(self):
            raise IndexError(f"molecule {i} out of range for {len(self)} molecules in {self.root}")
        i = i % len(self)
        shard = int(np.searchsorted(self.offsets, i, side="right") - 1)
        columns, row = self._load_shard(shard), i - int(self.offsets[shard])
        numbers = np.asarray(columns["atomic_numbers"][row], dtype=np.int64)
        count = columns["num_conformers"][row]
        coords = np.asarray(columns["coords"][row], dtype=np.float32).reshape(count, len(numbers), 3)
        coords /= COORD_SCALE
        return Molecule(
            index=columns["index"][row],
            id=columns["id"][row],
            smiles=columns["smiles"][row],
            atomic_numbers=numbers,
            conformers=coords,
            mmff_energy=np.asarray(columns["mmff_energy"][row], dtype=np.float32),
            converged=np.asarray(columns["converged"][row], dtype=bool),
            embedding=columns["embedding"][row],
            texts=dict(columns["texts"][row]),
            properties=dict(columns["properties"][row]),
            instructions=[{k: v for k, v in r.items() if v is not None} for r in columns["instructions"][row]],
            forcefield=list(columns["forcefield"][row]),
            given_split=columns["given_split"][row],
        )

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def column(self, name: str) -> list:
        """One column over all shards (e.g. ``smiles`` or ``properties``), streamed shard by shard."""
        return [
            value
            for shard in self.shards
            for value in pq.read_table(shard, columns=[name], memory_map=True)[name].to_pylist()
        ]

    @functools.cached_property
    def _splits(self) -> pa.Table:
        path = self.root / "splits.parquet"
        if not path.is_file():
            raise DatasetError(
                f"{path} is missing: the dataset has no stored splits (run `bench data prepare` again to finish it)"
            )
        return pq.read_table(path)

    def split_kinds(self) -> list[str]:
        return list(self._splits.column_names)

    def check_split_kind(self, kind: str) -> None:
        """Raise an error naming this dataset and its split kinds when it has no split ``kind``."""
        from molbridge.core.errors import UnknownComponentError, suggest

        kinds = self._splits.column_names
        if kind not in kinds:
            hint = ""
            if kind.startswith("given"):
                hint = (
                    "; a given split comes from inputs with a split column, one file per split (ChEBI-20) or the "
                    "3D-MoLM release (given-pretrain only from an input with a pretrain split)"
                )
            raise UnknownComponentError(
                f"dataset '{self.name}' ({self.root}) has no split kind '{kind}'{suggest(kind, kinds)}; "
                f"its split kinds: {', '.join(kinds)}{hint}"
            )

    def split(self, name: str, kind: str = "scaffold") -> np.ndarray:
        """Row indices of split ``name`` (train/valid/test, ...) under split ``kind`` (random/scaffold/given...)."""
        from molbridge.core.errors import unknown_name

        self.check_split_kind(kind)
        labels = np.asarray(self._splits[kind].to_pylist())
        if name not in set(labels.tolist()):
            raise unknown_name(f"split of kind '{kind}' in dataset '{self.name}'", name, sorted(set(labels.tolist())))
        return np.flatnonzero(labels == name)

    def failures(self) -> list[dict[str, Any]]:
        """Every input that could not be used, with its stage and reason, in input order."""
        rows = []
        for shard in self.meta["shards"]:
            path = self.root / shard["failures"]
            rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        return rows


def open_dataset(name_or_dir: str | Path) -> MoleculeStore:
    """Open a packaged dataset (``molbridge-mini``) or a directory written by ``bench data prepare``."""
    return MoleculeStore(name_or_dir)
