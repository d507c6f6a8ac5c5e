"""GFN2-xTB properties of every stored conformer of a prepared dataset, in a file beside its shards.

A molecule's ``properties`` hold xTB values of conformer 0 only: functions of the molecule, which its SMILES
identifies. Conformer-level tasks need values that differ between the conformers of one molecule, and the
electronic ones depend on the geometry as a whole (a dipole changes as polar groups turn). This
file holds, for each stored conformer, a GFN2-xTB single point (tblite) on its stored coordinates:

- ``xtb_energy`` (eV, total energy), ``xtb_dipole`` (debye), ``xtb_gap`` (eV, HOMO-LUMO gap); NaN where the
  SCF fails or the SMILES gives no formal charge.

``conformer_properties.parquet``: one row per conformer (``molecule``: its position ``i`` in the store, as in
``store[i]``; ``conformer``: its position in the molecule's conformers), written by ``bench data
conformer-properties DATASET``, which also records the file in ``dataset.json``. It is computed from the stored
(rounded) coordinates, so a rebuild of the dataset and this command on an existing build give the same values. A
dataset without the file still reads; asking for its values names the command that makes them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rdkit import Chem
from tqdm.auto import tqdm

from molbridge.core.data.pool import WorkerLost, WorkerPool
from molbridge.core.data.properties import xtb_properties
from molbridge.core.data.store import DatasetError, atomic_write, open_dataset, write_json

FILE = "conformer_properties.parquet"
COLUMNS = {"xtb_energy": "eV", "xtb_dipole": "debye", "xtb_gap": "eV"}
LEVEL = "GFN2-xTB single point (tblite) on each stored conformer's coordinates"


def molecule_values(smiles: str, atomic_numbers: np.ndarray, conformers: np.ndarray) -> dict[str, list[float]]:
    """The :data:`COLUMNS` of each conformer of one molecule (NaN where xTB fails or the charge is unknown)."""
    mol = Chem.MolFromSmiles(smiles)
    values: dict[str, list[float]] = {name: [] for name in COLUMNS}
    for positions in conformers:
        found = {}
        if mol is not None:  # the formal charge comes from the SMILES
            try:
                found = xtb_properties(atomic_numbers, positions, Chem.GetFormalCharge(mol))
            except RuntimeError:  # an SCF failure is a missing value, not a failed dataset
                pass
        for name in COLUMNS:
            values[name].append(float(found.get(name, np.nan)))
    return values


def _one_thread() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # before tblite loads: one core per process, and a fixed summation order


def _work(item: tuple[str, np.ndarray, np.ndarray]) -> dict[str, list[float]]:
    return molecule_values(*item)


def compute(dataset: str | Path, workers: int | None = None, progress: bool = True) -> Path:
    """Write :data:`FILE` for every molecule of ``dataset`` (a packaged name or a directory) and record it in
    its ``dataset.json``; returns the file."""
    store = open_dataset(dataset)
    items = [(m.smiles, m.atomic_numbers, m.conformers) for m in (store[i] for i in range(len(store)))]
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(items), desc="xTB per conformer", unit="mol", disable=not progress)
    # Always in worker processes, even one: tblite's OpenMP threads sum in an order that varies with the load, so
    # only a process whose OpenMP starts with one thread gives the same bytes every time.
    with WorkerPool(workers, _work, _one_thread, chunksize=8) as pool:
        results = list(pool.map(items, on_result=bar.update))
    bar.close()
    rows: dict[str, list] = {"molecule": [], "conformer": [], **{name: [] for name in COLUMNS}}
    for index, (item, values) in enumerate(zip(items, results, strict=True)):
        if isinstance(values, WorkerLost):  # a worker died on it: every conformer's values are missing
            values = {name: [np.nan] * len(item[2]) for name in COLUMNS}
        rows["molecule"] += [index] * len(item[2])
        rows["conformer"] += list(range(len(item[2])))
        for name in COLUMNS:
            rows[name] += values[name]
    path = store.root / FILE
    table = pa.table(
        {
            "molecule": pa.array(rows["molecule"], pa.int64()),
            "conformer": pa.array(rows["conformer"], pa.int32()),
            **{name: pa.array(rows[name], pa.float64()) for name in COLUMNS},
        }
    )
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
    missing = {name: int(np.isnan(table[name].to_numpy()).sum()) for name in COLUMNS}
    store.meta["conformer_properties"] = {"file": FILE, "level": LEVEL, "units": COLUMNS, "missing": missing}
    write_json(store.meta, store.root / "dataset.json")
    return path


class ConformerProperties:
    """The :data:`FILE` of one dataset, read once: ``values(index)`` gives each column per conformer."""

    def __init__(self, root: Path):
        path = Path(root) / FILE
        if not path.is_file():
            raise DatasetError(
                f"{root}: no per-conformer xTB values ({FILE}); compute them with "
                f"`bench data conformer-properties {root}` (about 0.06 s per conformer and core)"
            )
        table = pq.read_table(path)
        self.molecule = table["molecule"].to_numpy()
        self.columns = {name: table[name].to_numpy() for name in COLUMNS}
        self.starts = np.searchsorted(self.molecule, np.arange(self.molecule.max() + 2))

    def values(self, index: int) -> dict[str, np.ndarray]:
        """Each column's values for the conformers of molecule ``index`` (in the store's conformer order)."""
        rows = slice(self.starts[index], self.starts[index + 1])
        return {name: column[rows] for name, column in self.columns.items()}
