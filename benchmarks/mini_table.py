"""The molbridge-mini results table: every encoder x projector through the three stages, 3 seeds each.

    .venv/bin/python benchmarks/mini_table.py                      # run (or resume) the three sweeps, then render
    .venv/bin/python benchmarks/mini_table.py --render             # only render, from what MLflow has
    .venv/bin/python benchmarks/mini_table.py --render --stages qa # redraw one stage, keep the others

The sweeps are ``benchmarks/mini/{retrieval,captioning,qa}.yaml`` run with ``bench sweep`` from the
repository root (each stage's children start from the previous stage's child of the same configuration
and seed). Rendering reads the sweeps' children back from MLflow, groups them by encoder and projector,
and writes mean +- sample std over seeds to ``benchmarks/results/mini/STAGE/table.{md,csv}`` and to the
README between that stage's ``mini-table:STAGE`` markers. A cell from fewer seeds than the sweep asked
for says so. Each stage is its own block, so redrawing one stage from a new MLflow store leaves the
tables of the others as they were.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import re
import sys
from pathlib import Path

from molbridge.core.cli import main as bench
from molbridge.core.compare import Group, Stat, gather_runs, group_runs, pooled
from molbridge.core.compare_report import write_report
from molbridge.core.errors import MolbridgeError
from molbridge.core.sweep import load_sweep

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "benchmarks" / "mini"
OUT = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
SEEDS = 3

#: stage -> (sweep name, [(column title, metric, baseline metric or None, lower is better)])
COLUMNS = {
    "retrieval": (
        "mini-retrieval",
        [
            ("M2T acc", "test/full_m2t_acc", "test/baseline_full_m2t_acc", False),
            ("T2M acc", "test/full_t2m_acc", "test/baseline_full_t2m_acc", False),
            ("M2T R@20", "test/full_m2t_r20", "test/baseline_full_m2t_r20", False),
            ("T2M R@20", "test/full_t2m_r20", "test/baseline_full_t2m_r20", False),
        ],
    ),
    "captioning": (
        "mini-captioning",
        [
            ("BLEU-4", "test/bleu4", "test/baseline_bleu4", False),
            ("ROUGE-L", "test/rougeL", "test/baseline_rougeL", False),
            ("METEOR", "test/meteor", "test/baseline_meteor", False),
            ("shape acc", "test/shape_acc", "test/baseline_shape_acc", False),
            ("Rg MAE (Å)", "test/rg_mae", "test/baseline_rg_mae", True),
        ],
    ),
    "qa": (
        "mini-qa",
        [
            ("skill", "test/skill", None, False),
            *(
                (title, f"test/{prop}/medae", f"test/{prop}/baseline_medae", True)
                for title, prop in (
                    ("HOMO MedAE (eV)", "HOMO _GFN2-xTB_"),
                    ("LUMO MedAE (eV)", "LUMO _GFN2-xTB_"),
                    ("gap MedAE (eV)", "HOMO-LUMO Gap _GFN2-xTB_"),
                    ("energy MedAE (eV)", "Total Energy _GFN2-xTB_"),
                    ("MW MedAE", "Molecular Weight"),
                    ("LogP MedAE", "LogP"),
                )
            ),
        ],
    ),
}
BASELINES = {"retrieval": "fingerprint ridge", "captioning": "nearest-neighbour caption", "qa": "training mean"}
NAMES = {
    "unimol": "Uni-Mol",
    "schnet": "SchNet",
    "smiles": "SMILES (1D control)",
    "qformer": "Q-Former",
    "linear": "linear",
}


def markers(stage: str) -> tuple[str, str]:
    return f"<!-- mini-table:{stage}:start -->", f"<!-- mini-table:{stage}:end -->"


def run_sweeps(stages: list[str]) -> list[str]:
    """Run or resume each stage's sweep in order; the stages whose sweep had a failed child."""
    failed = []
    for stage in stages:
        print(f"== bench sweep benchmarks/mini/{stage}.yaml", flush=True)
        status = bench(["sweep", str(SWEEPS / f"{stage}.yaml")])
        if status not in (0, 1):  # 1: some children failed, the others are worth rendering
            raise SystemExit(status)  # interrupted (130) or an invalid sweep (2): stop here
        if status:
            failed.append(stage)
    return failed


def cell(stat: Stat | None, best: bool = False) -> str:
    if stat is None:
        return "not run"
    text = f"{stat.mean:.3f}" if stat.std is None else f"{stat.mean:.3f} ± {stat.std:.3f}"
    text = f"**{text}**" if best else text
    return text if stat.n == SEEDS else f"{text} (n={stat.n})"


def stage_rows(stage: str, uri: str | None) -> tuple[list[Group], list]:
    sweep, _ = COLUMNS[stage]
    try:
        runs = gather_runs(task=stage, filters={"sweep.name": sweep}, metrics=("*",), uri=uri)
    except MolbridgeError:  # nothing logged for this stage yet
        return [], []
    order = list(NAMES)  # the sweeps' grid order: Uni-Mol first, the control last
    finished = [r for r in runs if r.status == "FINISHED"]  # an interrupted child is half-trained: leave it out
    groups = sorted(
        group_runs(finished), key=lambda g: [order.index(g.runs[0].identity[k]) for k in ("encoder", "projector")]
    )
    return groups, finished


def planned(stage: str) -> list[tuple[str, str]]:
    """(encoder, projector) of every configuration the stage's sweep file lists, in its order."""
    grid = load_sweep(SWEEPS / f"{stage}.yaml").grid
    return list(itertools.product(grid["encoder"], grid["projector"]))


def stage_table(stage: str, groups: list[Group]) -> tuple[list[str], list[list[str]]]:
    """Markdown lines and CSV rows of one stage: a row per configuration, then the baseline's row."""
    columns = COLUMNS[stage][1]
    header = ["encoder", "projector", *(title for title, *_ in columns)]
    best = {}
    for title, metric, _, lower in columns:
        means = [(g.stat(metric).mean, g.config) for g in groups if g.stat(metric)]
        best[title] = (min(means) if lower else max(means))[1] if means else None
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = [["encoder", "projector", *(f"{title} {part}" for title, *_ in columns for part in ("mean", "std", "n"))]]
    for group in groups:
        who = [NAMES.get(group.runs[0].identity[k], group.runs[0].identity[k]) for k in ("encoder", "projector")]
        stats = [group.stat(metric) for _, metric, _, _ in columns]
        lines.append(
            "| "
            + " | ".join(who + [cell(s, best[t] == group.config) for (t, *_), s in zip(columns, stats, strict=True)])
            + " |"
        )
        rows.append(who + _csv(stats))
    done = {tuple(g.runs[0].identity[k] for k in ("encoder", "projector")) for g in groups}
    for missing in [c for c in planned(stage) if c not in done]:
        who = [NAMES.get(name, name) for name in missing]
        lines.append("| " + " | ".join(who + ["not run yet"] * len(columns)) + " |")
        rows.append(who + [""] * 3 * len(columns))
    stats = [pooled(groups, base) if base else None for _, _, base, _ in columns]
    lines.append("| " + " | ".join([f"{BASELINES[stage]} (baseline)", ""] + [_baseline_cell(s) for s in stats]) + " |")
    rows.append([f"{BASELINES[stage]} (baseline)", "", *_csv(stats)])
    return lines, rows


def _baseline_cell(stat: Stat | None) -> str:
    """The baselines are deterministic, so most have no spread over seeds: show one it has."""
    if stat is None:
        return ""
    return f"{stat.mean:.3f}" if not stat.std else f"{stat.mean:.3f} ± {stat.std:.3f}"


def _csv(stats: list[Stat | None]) -> list[str]:
    return ["" if v is None else f"{v:.6g}" for s in stats for v in ((s.mean, s.std, s.n) if s else (None,) * 3)]


def render(stage: str, uri: str | None, plots: bool) -> str:
    """One stage's section: its table (also written to its results folder) and, with plots, its figures."""
    groups, runs = stage_rows(stage, uri)
    if not groups:
        return f"**{stage}**: no finished run of sweep {COLUMNS[stage][0]} yet\n"
    lines, rows = stage_table(stage, groups)
    seeds = sorted({r.identity["seed"] for g in groups for r in g.runs})
    out = OUT / "mini" / stage
    figures = f"; [figures]({(out / 'README.md').relative_to(ROOT)})" if plots else ""
    text = "\n".join(
        [f"**{stage}** (`benchmarks/mini/{stage}.yaml`; seeds {', '.join(seeds)}{figures})", "", *lines, ""]
    )
    if plots:
        write_report(
            runs,
            out,
            table_metrics=("test/*",),
            uri=uri,
            command=f"benchmarks/mini_table.py --render --stages {stage} (sweep {COLUMNS[stage][0]})",
        )
    out.mkdir(parents=True, exist_ok=True)
    with (out / "table.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    (out / "table.md").write_text(text)
    return text


def update_readme(stage: str, text: str) -> None:
    readme = README.read_text()
    start, end = markers(stage)
    block = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
    if not block.search(readme):
        raise SystemExit(f"{README} has no {start} ... {end} block to fill")
    README.write_text(block.sub(lambda _: f"{start}\n{text}{end}", readme))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--render", action="store_true", help="only render the tables and figures from MLflow")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument("--uri", help="MLflow tracking URI (default: ./mlflow.db in the repository root)")
    parser.add_argument(
        "--stages",
        type=_stages,
        default=list(COLUMNS),
        metavar="A,B",
        help=f"only these stages (default: {','.join(COLUMNS)}); a stage's sweep needs the "
        "previous stage's runs on disk",
    )
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # the sweep files name the previous stage's children relative to the repository root
    failed = [] if args.render else run_sweeps(args.stages)
    for stage in args.stages:
        text = render(stage, args.uri, plots=not args.no_plots)
        update_readme(stage, text)
        print(text)
    if failed:
        print(f"sweeps with failed children: {', '.join(failed)} (rerun this command to retry them)", file=sys.stderr)
    return 1 if failed else 0


def _stages(value: str) -> list[str]:
    stages = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in stages if s not in COLUMNS]
    if unknown or not stages:
        raise argparse.ArgumentTypeError(
            f"unknown stage {', '.join(unknown) or value!r}; choose from {', '.join(COLUMNS)}"
        )
    return [s for s in COLUMNS if s in stages]  # always in chain order


if __name__ == "__main__":
    sys.exit(main())
