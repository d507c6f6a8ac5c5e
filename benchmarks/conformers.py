"""Conformer throughput: molbridge's pipeline against a plain RDKit loop measured in the same run.

    .venv/bin/python benchmarks/conformers.py [--molecules 300] [--workers 2] [--json out.json]

Three measurements on the same NCI molecules (RDKit's ``Data/NCI/first_5K.smi``), one conformer each:

1. baseline: a plain single-process loop, AddHs -> EmbedMolecule(ETKDGv3) -> MMFFOptimizeMolecule;
2. molbridge in one process (``make_record``: the same work plus checks, fallback and failure records);
3. ``prepare`` with ``--workers`` processes (spawn start-up included), writing the Parquet shard.

Reported: molecules/s, molecules/s per core, each relative to the baseline, and the speed-up of
``workers`` processes over one.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

from rdkit import Chem
from rdkit.Chem import AllChem, rdDistGeom

from molbridge.core.data.conformers import ConformerConfig, make_record
from molbridge.core.data.mini import sources
from molbridge.core.data.prepare import prepare
from molbridge.core.data.readers import read_smi


def plain_rdkit(smiles: list[str], seed: int) -> int:
    done = 0
    for s in smiles:
        mol = Chem.MolFromSmiles(s)
        if mol is None:
            continue
        mol = Chem.AddHs(mol)
        params = rdDistGeom.ETKDGv3()
        params.randomSeed = seed
        if rdDistGeom.EmbedMolecule(mol, params) == 0 and AllChem.MMFFHasAllMoleculeParams(mol):
            AllChem.MMFFOptimizeMolecule(mol, maxIters=2000)
            done += 1
    return done


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--molecules", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    inputs = list(read_smi(sources()[0][1]))[: args.molecules]
    smiles = [item.smiles for item in inputs]
    config = ConformerConfig(num_conformers=1, seed=1)

    _, t_plain = timed(lambda: plain_rdkit(smiles, seed=1))
    _, t_single = timed(lambda: [make_record(item, config) for item in inputs])
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; absolute: the runs themselves barely grow it
    with tempfile.TemporaryDirectory() as out:
        _, t_pool = timed(
            lambda: prepare(inputs, out, name="bench", config=config, workers=args.workers, progress=False)
        )
    n = len(inputs)
    results = {
        "molecules": n,
        "workers": args.workers,
        "plain_rdkit_mol_per_s": round(n / t_plain, 2),
        "molbridge_1proc_mol_per_s": round(n / t_single, 2),
        "molbridge_pool_mol_per_s": round(n / t_pool, 2),
        "molbridge_pool_mol_per_s_per_core": round(n / t_pool / args.workers, 2),
        "1proc_vs_plain": round(t_plain / t_single, 3),
        "pool_vs_plain": round(t_plain / t_pool, 3),
        "speedup_pool_vs_1proc": round(t_single / t_pool, 3),
        "peak_rss_mb": round(peak_rss / 1024, 1),  # this process's peak RSS over the single-process runs
        "pool_worker_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }
    for key, value in results.items():
        print(f"{key:36} {value}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
