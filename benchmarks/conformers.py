"""Preparation throughput on real molecules, and the 3D-MoLM release join at PubChem size, each against a plain
RDKit / plain Python baseline measured in the same run.

    .venv/bin/python benchmarks/conformers.py [--molecules 1000] [--workers 0] [--release-molecules 300000]
                                              [--json out.json]

Molecules: :func:`molbridge.core.data.samples.real_sample`, 1,000 drug-like and natural-product molecules of
20-200 atoms with hydrogens from the files RDKit's wheel ships (NCI, WEHI, EGFR, ChEMBL), biased to the large
ones (mean about 53 atoms; ChEBI-20 averages 58), salts and metal complexes included, one conformer each.

Conformer preparation, four measurements, each in a fresh subprocess (so its peak memory is its own):

1. ``plain``: a plain RDKit loop doing the same work as molbridge's default, one process: parse, keep the
   largest organic fragment, AddHs, ETKDGv3 (seeded, the same time limit), random coordinates when it
   fails, MMFF94 (maxIters 2000) or UFF when MMFF94 cannot type the molecule;
2. ``plain_pool``: the same function over ``--workers`` processes (``multiprocessing.Pool.map``, spawn);
3. ``molbridge``: ``make_record`` in one process (the same work plus checks, every embedder failure code,
   clash checks, failure records);
4. ``molbridge_pool``: ``prepare`` with ``--workers`` processes as ``bench data prepare`` runs it (crash-proof
   pool, ordered merge, Parquet shard written), process start-up included.

Release join: a synthetic 3D-MoLM release of ``--release-molecules`` molecules in the release's layout
(pickled LMDB values with its keys, 3D-MoIT JSON of four computed properties per PubChem molecule, one
descriptive record per captioned molecule, PubChemQC records by index; sizes split as the release:
95% pretrain, 12k/1k/2k per 316k train/valid/test) is written once (not timed), then:

5. ``join_plain``: the join as a plain Python script would do it: every JSON loaded, records grouped by key,
   each key's LMDB value read and unpickled;
6. ``join_molbridge``: ``read_release`` (JSON + LMDB keys) and every ``MoleculeInput`` materialised (values
   read and unpickled), i.e. the input side of ``bench data prepare DATA_ROOT``, without conversion or writing.

Reported: molecules/s (or seconds), each ratio against its baseline, peak RSS of each process (and of the
largest worker), the failure reasons, and the hours 300k PubChem molecules would take on this machine at
the measured all-core rate (a projection from the sample, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve()
MEASUREMENTS = ("plain", "plain_pool", "molbridge", "molbridge_pool", "join_plain", "join_molbridge")


# -- the plain baselines ------------------------------------------------------------------------------------
def plain_one(smiles: str) -> bool:
    """What molbridge's default does for one molecule, written as a plain RDKit script would."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import AllChem, rdDistGeom
    from rdkit.Chem.MolStandardize import rdMolStandardize

    from molbridge.core.data.conformers import ConformerConfig, time_limit

    RDLogger.DisableLog("rdApp.*")
    config = ConformerConfig()
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return False
    if len(Chem.GetMolFrags(mol)) > 1:
        mol = rdMolStandardize.LargestFragmentChooser(preferOrganic=True).choose(mol)
    mol = Chem.AddHs(mol)
    limit = time_limit(mol.GetNumAtoms(), config)
    for random_coords in (False, True):
        params = rdDistGeom.ETKDGv3()
        params.randomSeed, params.numThreads, params.useRandomCoords = config.seed, 1, random_coords
        params.timeout = max(1, round(limit))
        if rdDistGeom.EmbedMolecule(mol, params) == 0:
            break
    else:
        return False
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMolecule(mol, maxIters=config.max_iters)
    elif AllChem.UFFHasAllMoleculeParams(mol):
        AllChem.UFFOptimizeMolecule(mol, maxIters=config.max_iters)
    else:
        return False
    return True


def plain_join(root: Path) -> int:
    """The release join as a plain script: JSON loaded, grouped by key, each value read and unpickled."""
    import lmdb

    from molbridge.core.data.release import RELEASE_SPLITS, SUBSETS

    def env(path):
        return lmdb.open(str(path), subdir=False, readonly=True, lock=False, readahead=False)

    envs = {}
    count = 0
    for split in RELEASE_SPLITS:
        groups: dict[tuple[str, str], list] = {}
        cap = root / "pubchem" / split / "3d-pubchem.lmdb"
        if cap.exists():
            envs[cap] = env(cap)
            with envs[cap].begin() as txn:
                for key in txn.cursor().iternext(values=False):
                    groups[("pubchem", key.decode())] = []
        for subset, (source, name) in SUBSETS.items():
            path = root / source / split / name
            if subset == "pubchem_caption" or not path.exists():
                continue
            for record in json.loads(path.read_text()):
                groups.setdefault((source, str(record["input"])), []).append(record)
        for (source, key), _records in groups.items():
            path = cap if source == "pubchem" else root / "pubchemqc" / "pubchemqc_database.lmdb"
            if path not in envs:
                envs[path] = env(path)
            with envs[path].begin() as txn:
                raw = txn.get(key.encode())
            if raw is None and source == "pubchem":
                path = root / "pubchem" / "3d-pubchem-all.lmdb"
                envs.setdefault(path, env(path))
                with envs[path].begin() as txn:
                    raw = txn.get(key.encode())
            if raw is not None:
                pickle.loads(raw)  # noqa: S301 - our own synthetic file
                count += 1
    return count


# -- the synthetic release ----------------------------------------------------------------------------------
def write_release(root: Path, n: int, seed: int = 0) -> dict[str, int]:
    """A synthetic release of ``n`` PubChem molecules (+ n/10 PubChemQC ones) in the release's layout."""
    import lmdb
    import numpy as np

    rng = np.random.default_rng(seed)
    scale = n / 316_000
    counts = {"test": round(2000 * scale), "valid": round(1000 * scale), "train": round(12_000 * scale)}
    counts["pretrain"] = n - sum(counts.values())
    atoms = ["C"] * 14 + ["N", "N", "O", "O", "O"] + ["H"] * 19  # 38 atoms: a PubChem-sized molecule
    cid = 1000

    def lmdb_writer(path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        return lmdb.open(str(path), subdir=False, map_size=1 << 36)

    all_env = lmdb_writer(root / "pubchem" / "3d-pubchem-all.lmdb")
    qc_env = lmdb_writer(root / "pubchemqc" / "pubchemqc_database.lmdb")
    qc_index = 0
    for split, size in counts.items():
        env = lmdb_writer(root / "pubchem" / split / "3d-pubchem.lmdb")
        computed, descriptive, qc_records = [], [], []
        with env.begin(write=True) as txn, all_env.begin(write=True) as all_txn:
            for _ in range(size):
                value = pickle.dumps(
                    {
                        "atoms": atoms,
                        "coordinates": [rng.normal(size=(len(atoms), 3))],
                        "smiles": "CC(=O)Nc1ccc(O)cc1" + "C" * int(rng.integers(0, 6)),
                        "description": f"The molecule {cid} is a synthetic compound used to time the join.\n",
                        "enriched_description": f"Compound {cid} is a synthetic compound; this is its longer text.\n",
                        "cid": str(cid),
                    },
                    protocol=-1,
                )
                txn.put(str(cid).encode(), value)
                all_txn.put(str(cid).encode(), value)
                for task in ("Molecular Weight", "LogP", "Topological Polar Surface Area", "Complexity"):
                    computed.append(
                        {
                            "instruction": f"What is the {task} of this molecule? If uncertain, provide an estimate.",
                            "input": str(cid),
                            "output": f"The {task} for the input molecule is {rng.uniform(0, 500):.2f}.",
                            "task": task,
                        }
                    )
                descriptive.append(
                    {
                        "instruction": "What is it used for?",
                        "input": str(cid),
                        "output": "A test.",
                        "task": "Description",
                    }
                )
                cid += 1
        env.close()
        with qc_env.begin(write=True) as txn:
            for _ in range(max(1, size // 10)):
                value = {"atoms": atoms, "coordinates_list": [rng.normal(size=(len(atoms), 3))], "smi": "CCO"}
                txn.put(str(qc_index).encode(), pickle.dumps(value, protocol=-1))
                for task in ("HOMO", "LUMO", "HOMO-LUMO Gap", "SCF Energy"):
                    qc_records.append(
                        {
                            "instruction": f"What is the {task}?",
                            "input": str(qc_index),
                            "output": "-1.00 eV",
                            "task": task,
                        }
                    )
                qc_index += 1
        for folder, name, records in (
            ("pubchem", "2d_computed_properties.json", computed),
            ("pubchem", "2d_descriptive_properties.json", descriptive),
            ("pubchemqc", "3d_computed_properties_unit.json", qc_records),
        ):
            path = root / folder / split / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(records, indent=4))
    all_env.close()
    qc_env.close()
    return counts


# -- one measurement, in its own process ------------------------------------------------------------------------
def measure(name: str, molecules: int, workers: int, release: str | None) -> dict:
    from molbridge.core.data.conformers import Failure, MoleculeInput, make_record
    from molbridge.core.data.samples import real_sample

    sample = real_sample(molecules)
    smiles = [m.smiles for m in sample]
    result: dict = {}
    start = time.perf_counter()
    if name == "plain":
        result["ok"] = sum(plain_one(s) for s in smiles)
    elif name == "plain_pool":
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            result["ok"] = sum(pool.map(plain_one, smiles, chunksize=4))
    elif name == "molbridge":
        records = [make_record(MoleculeInput(i, m.id, smiles=m.smiles)) for i, m in enumerate(sample)]
        result["failures"] = dict(Counter(r.reason for r in records if isinstance(r, Failure)))
    elif name == "molbridge_pool":
        from molbridge.core.data.prepare import prepare

        inputs = [MoleculeInput(i, m.id, smiles=m.smiles) for i, m in enumerate(sample)]
        with tempfile.TemporaryDirectory() as out:
            meta = prepare(inputs, out, name="bench", workers=workers, progress=False)
        result["failures"] = meta["failure_reasons"]
    elif name == "join_plain":
        result["ok"] = plain_join(Path(release))
    elif name == "join_molbridge":
        from molbridge.core.data.release import read_release

        inputs = read_release(release, trust_pickle=True)
        result["ok"] = sum(item.failure is None for item in inputs)
    result["seconds"] = time.perf_counter() - start
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["child_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return result


def run_measurement(name: str, args, release: str | None) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as handle:
        command = [sys.executable, str(HERE), "--measure", name, "--molecules", str(args.molecules)]
        command += ["--workers", str(args.workers), "--json", handle.name] + (["--release", release] if release else [])
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        subprocess.run(command, check=True, env=env)
        return json.loads(Path(handle.name).read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--molecules", type=int, default=1000, help="real-sample size (default 1000)")
    parser.add_argument("--workers", type=int, default=0, help="processes for the all-core runs (0: all cores)")
    parser.add_argument("--release-molecules", type=int, default=300_000, help="synthetic release size (0: skip)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--measure", choices=MEASUREMENTS, help=argparse.SUPPRESS)
    parser.add_argument("--release", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.workers = args.workers or os.cpu_count() or 1
    if args.measure:
        result = measure(args.measure, args.molecules, args.workers, args.release)
        Path(args.json).write_text(json.dumps(result))
        return
    from molbridge.core.data.samples import real_sample

    sample = real_sample(args.molecules)
    runs = {name: run_measurement(name, args, None) for name in MEASUREMENTS[:4]}
    n, w = len(sample), args.workers
    rate = {name: n / runs[name]["seconds"] for name in runs}
    results = {
        "molecules": n,
        "mean_atoms_with_h": round(sum(m.atoms for m in sample) / n, 1),
        "workers": w,
        "plain_rdkit_mol_per_s": round(rate["plain"], 2),
        "plain_rdkit_pool_mol_per_s": round(rate["plain_pool"], 2),
        "molbridge_1proc_mol_per_s": round(rate["molbridge"], 2),
        "molbridge_pool_mol_per_s": round(rate["molbridge_pool"], 2),
        "molbridge_pool_mol_per_s_per_core": round(rate["molbridge_pool"] / w, 2),
        "1proc_vs_plain": round(rate["molbridge"] / rate["plain"], 3),
        "pool_vs_plain": round(rate["molbridge_pool"] / rate["plain"], 3),
        "pool_vs_plain_pool": round(rate["molbridge_pool"] / rate["plain_pool"], 3),
        "speedup_pool_vs_1proc": round(rate["molbridge_pool"] / rate["molbridge"], 3),
        "plain_ok": runs["plain"]["ok"],
        "molbridge_failures": runs["molbridge"]["failures"],
        "molbridge_pool_failures": runs["molbridge_pool"]["failures"],
        "peak_rss_mb": round(runs["molbridge"]["peak_rss_mb"], 1),
        "plain_peak_rss_mb": round(runs["plain"]["peak_rss_mb"], 1),
        "pool_parent_peak_rss_mb": round(runs["molbridge_pool"]["peak_rss_mb"], 1),
        "pool_worker_peak_rss_mb": round(runs["molbridge_pool"]["child_peak_rss_mb"], 1),
        "plain_pool_worker_peak_rss_mb": round(runs["plain_pool"]["child_peak_rss_mb"], 1),
        "projected_hours_300k_all_cores": round(300_000 / rate["molbridge_pool"] / 3600, 2),
    }
    if args.release_molecules:
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            counts = write_release(Path(folder), args.release_molecules)
            results["release_write_s"] = round(time.perf_counter() - start, 1)  # set-up, not a result
            join = {name: run_measurement(name, args, folder) for name in MEASUREMENTS[4:]}
        if join["join_plain"]["ok"] != join["join_molbridge"]["ok"]:
            raise SystemExit(f"the two joins disagree: {join}")
        results |= {
            "release_molecules": sum(counts.values()),
            "release_splits": counts,
            "release_joined_inputs": join["join_molbridge"]["ok"],
            "join_plain_s": round(join["join_plain"]["seconds"], 2),
            "join_molbridge_s": round(join["join_molbridge"]["seconds"], 2),
            "join_vs_plain": round(join["join_plain"]["seconds"] / join["join_molbridge"]["seconds"], 3),
            "join_peak_rss_mb": round(join["join_molbridge"]["peak_rss_mb"], 1),
            "join_plain_peak_rss_mb": round(join["join_plain"]["peak_rss_mb"], 1),
        }
    for key, value in results.items():
        print(f"{key:36} {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
