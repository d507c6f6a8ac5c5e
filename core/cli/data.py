"""`bench data`: prepare molecule datasets, build molbridge-mini, and summarise a dataset."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

EPILOG = """\
examples:
  bench data prepare molecules.smi --out data/mine          all cores, resumable (Ctrl-C, then run it again)
  bench data prepare pubchem.csv --out data/pc --shard 3/16  one job of a 16-job array
  bench data prepare ChEBI-20_data/ --out data/chebi20      train/validation/test.txt: the given split
  bench data prepare 3d-mol-dataset/ --trust-pickle --out data/3dmolm
                                                            the whole 3D-MoLM release, joined, splits kept
  bench data prepare molecules.smi --sample 1000 --out /tmp/try   a quick seeded subset
  bench data info molbridge-mini --json
  bench data build-mini --out /tmp/mini                     regenerate the shipped dataset
"""


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "data",
        help="prepare datasets, build molbridge-mini, summarise a dataset",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    prep = commands.add_parser(
        "prepare",
        help="molecules (SMILES/SDF/CSV/TSV/JSONL/3D-MoIT JSON/LMDB, the 3D-MoLM release) to 3D shards",
        epilog="examples:\n  bench data prepare molecules.smi --out data/mine\n"
        "  bench data prepare ChEBI-20_data/ --out data/chebi20 --limit 1000\n"
        "  bench data prepare 3d-mol-dataset/ --trust-pickle --out data/3d-molm --shard 0/4",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prep.add_argument(
        "input",
        nargs="+",
        help="input file (format by extension), a folder (the 3D-MoLM release, or one file per split), or one "
        "file per split (train/valid|validation/test[/pretrain]); see molbridge.core.data.readers",
    )
    prep.add_argument("--out", required=True, help="dataset directory to write (re-run to resume)")
    prep.add_argument("--name", help="dataset name stored in dataset.json (default: the input's stem)")
    subset = prep.add_mutually_exclusive_group()
    subset.add_argument("--limit", type=int, help="only the first N inputs (quick subsets)")
    subset.add_argument("--sample", type=int, help="N inputs drawn at random with --seed, kept in input order")
    prep.add_argument("--shard", default="0/1", help="i/N: process only shards k with k %% N == i (default 0/1)")
    prep.add_argument("--shard-size", type=int, default=10_000, help="molecules per shard file (default 10000)")
    prep.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    prep.add_argument("--conformers", type=int, default=1, help="conformers per molecule (default 1)")
    prep.add_argument("--seed", type=int, default=42, help="embedding and split seed (default 42)")
    prep.add_argument("--max-iters", type=int, default=2000, help="MMFF iterations (default 2000)")
    prep.add_argument("--hydrogens", choices=("all", "heavy"), default="all", help="keep hydrogens (default all)")
    prep.add_argument(
        "--fragments",
        choices=("all", "largest"),
        default="largest",
        help="salts and mixtures: keep the largest organic fragment (default) or all fragments",
    )
    prep.add_argument(
        "--max-atoms",
        type=int,
        default=1000,
        help="sanity limit, hydrogens included (default 1000); encoders crop larger inputs, they are not dropped",
    )
    prep.add_argument(
        "--timeout", type=float, default=10.0, help="embedding seconds per molecule, plus --timeout-per-atom (10)"
    )
    prep.add_argument(
        "--timeout-per-atom", type=float, default=0.1, help="seconds added per atom with hydrogens (default 0.1)"
    )
    prep.add_argument(
        "--forcefields",
        default="mmff,uff",
        help="force fields to try in order (default mmff,uff; mmff alone rejects what MMFF94 cannot type)",
    )
    prep.add_argument(
        "--keep-untyped",
        action="store_true",
        help="keep molecules no force field types, unoptimised (default: reject them as no_forcefield_params)",
    )
    prep.add_argument(
        "--require-text",
        action="append",
        default=[],
        metavar="FIELD",
        help="reject molecules whose text FIELD is empty (repeatable), e.g. description",
    )
    prep.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow reading the 3D-MoLM release's LMDBs, whose pickled values can run code",
    )
    prep.add_argument("--no-progress", action="store_true", help="no progress bar")
    prep.set_defaults(func=_prepare)

    mini = commands.add_parser(
        "build-mini",
        help="rebuild the molbridge-mini dataset deterministically",
        epilog="example:\n  bench data build-mini --out /tmp/mini --limit 200",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mini.add_argument("--out", required=True, help="directory to write")
    mini.add_argument("--limit", type=int, default=None, help="only the first N source molecules (quick check)")
    mini.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    mini.add_argument(
        "--conformers",
        type=int,
        default=3,
        help="ETKDG embeddings per molecule before 0.5 A RMSD pruning (default 3, the shipped copy); e.g. 10 gives "
        "conformer tasks more conformers per flexible molecule, as molbridge-mini-c10",
    )
    mini.set_defaults(func=_build_mini)

    xtb = commands.add_parser(
        "conformer-properties",
        help="GFN2-xTB energy, dipole and gap of every stored conformer (for conformer-level tasks)",
        description="Compute a GFN2-xTB single point (tblite) on every stored conformer of DATASET and write "
        "conformer_properties.parquet beside its shards (recorded in dataset.json): total energy (eV), dipole "
        "(debye) and HOMO-LUMO gap (eV), NaN where the SCF fails. About 0.06 s per conformer and core on "
        "molbridge-mini's molecules. conformer_qa asks them as task.properties xtb_dipole, xtb_gap and "
        "xtb_relative_energy.",
        epilog="example:\n  bench data conformer-properties data/chebi20 --workers 8",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    xtb.add_argument("dataset", help="a packaged dataset name (molbridge-mini) or a dataset directory")
    xtb.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    xtb.add_argument("--no-progress", action="store_true", help="no progress bar")
    xtb.set_defaults(func=_conformer_properties)

    info = commands.add_parser(
        "info",
        help="counts, splits, failure reasons, fields, property statistics",
        epilog="examples:\n  bench data info molbridge-mini\n  bench data info data/chebi20 --failures\n"
        "  bench data info molbridge-mini --json | jq .molecules",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    info.add_argument("dataset", help="a packaged dataset name (molbridge-mini) or a dataset directory")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument("--failures", action="store_true", help="also list every failed input with its reason")
    info.set_defaults(func=_info)


def _prepare(args) -> int:
    from pathlib import Path

    from molbridge.core.data.conformers import ConformerConfig
    from molbridge.core.data.prepare import parse_shard, prepare
    from molbridge.core.data.readers import read_inputs, select

    logging.getLogger("molbridge").setLevel(logging.INFO)
    shard = parse_shard(args.shard)
    sources = [Path(p) for p in args.input]
    inputs = read_inputs(sources, trust_pickle=args.trust_pickle)
    total = len(inputs)
    inputs = select(inputs, limit=args.limit, sample=args.sample, seed=args.seed)
    config = ConformerConfig(
        num_conformers=args.conformers,
        seed=args.seed,
        max_iters=args.max_iters,
        hydrogens=args.hydrogens,
        fragments=args.fragments,
        max_atoms=args.max_atoms,
        timeout_s=args.timeout,
        timeout_per_atom_s=args.timeout_per_atom,
        forcefields=tuple(f.strip() for f in args.forcefields.split(",") if f.strip()),
        keep_untyped=args.keep_untyped,
        require_text=tuple(args.require_text),
    )
    first = sources[0].resolve()
    name = args.name or (first.name.split(".")[0] if len(sources) == 1 else first.parent.name)
    extra: dict[str, Any] = {"source": ", ".join(p.name for p in sources)}
    if len(inputs) < total:
        extra["subset"] = {"of": total, "limit": args.limit, "sample": args.sample, "seed": args.seed}
    if release := getattr(inputs, "summary", None) or getattr(getattr(inputs, "inputs", None), "summary", None):
        extra["release"] = release
    try:
        meta = prepare(
            inputs,
            args.out,
            name=name,
            config=config,
            shard=shard,
            shard_size=args.shard_size,
            workers=args.workers,
            split_seed=args.seed,
            progress=not args.no_progress,
            extra_meta=extra,
        )
    except KeyboardInterrupt:
        print(f"interrupted: finished shards stay in {args.out}; run the same command again to resume", file=sys.stderr)
        raise
    if meta is None:
        print(f"shards {args.shard} done in {args.out}; other shards pending")
        return 0
    print(f"{args.out}: {meta['molecules']} molecules, {meta['failed']} failed of {meta['inputs']} inputs")
    for reason, count in meta["failure_reasons"].items():
        print(f"  {reason}: {count}")
    for kind in meta["splits"]["kinds"]:
        counts = meta["splits"]["counts"][kind]
        print(f"  split {kind}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if meta["failed"]:
        print(f"  each failed input with its reason: bench data info {args.out} --failures")
    return 0


def _build_mini(args) -> int:
    from molbridge.core.data.mini import build_mini

    if args.conformers < 1:
        print(f"error: --conformers must be at least 1, got {args.conformers}", file=sys.stderr)
        return 2
    meta = build_mini(args.out, limit=args.limit, workers=args.workers, conformers=args.conformers)
    if meta is None:  # a shard went missing while building (build_mini builds every shard itself)
        print(f"{args.out}: shards are missing; run the same command again to finish", file=sys.stderr)
        return 1
    print(f"{args.out}: {meta['molecules']} molecules, {meta['failed']} failed of {meta['inputs']} inputs")
    return 0


def _conformer_properties(args) -> int:
    from molbridge.core.data.conformer_properties import compute

    path = compute(args.dataset, workers=args.workers, progress=not args.no_progress)
    print(f"{path}: GFN2-xTB values of every stored conformer")
    return 0


def _info(args) -> int:
    from molbridge.core.data.info import dataset_info, format_info
    from molbridge.core.data.store import open_dataset

    store = open_dataset(args.dataset)
    info = dataset_info(store)
    if args.failures:
        info["failure_list"] = store.failures()
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    print(format_info(info))
    for failure in info.get("failure_list", []):
        print(
            f"  #{failure['index']} {failure['id']}: {failure['reason']} at {failure['stage']} "
            f"({failure['detail']}) input={failure['input'][:60]!r}"
        )
    return 0
