"""The molbridge-mini results table: every encoder x projector through the three stages, 3 seeds each.

    .venv/bin/python benchmarks/mini_table.py                      # run (or resume) the three sweeps, then render
    .venv/bin/python benchmarks/mini_table.py --render             # only render, from what MLflow has
    .venv/bin/python benchmarks/mini_table.py --render --stages qa # redraw one stage, keep the others

The sweeps are ``benchmarks/mini/{retrieval,captioning,qa}.yaml`` run with ``bench sweep`` from the
repository root (each stage's children start from the previous stage's child of the same configuration
and seed). Rendering reads the sweeps' children back from MLflow, groups them by encoder and projector,
and writes mean +- sample std over seeds to ``benchmarks/results/mini/STAGE/table.{md,csv}`` and to the
README between that stage's ``mini-table:STAGE`` markers. A cell from fewer seeds than the sweep asked
for says so. Where the runs' artifacts hold the metric per test item (retrieval's ranks, QA's answers), the
cell is the mean with its 95% bootstrap interval over test items and seeds instead, and the configurations
that a paired bootstrap cannot tell from the best one are bold with it (``bench compare --aggregate``'s
statistics, :mod:`molbridge.core.stats`). Each stage is its own block, so redrawing one stage from a new
MLflow store leaves the tables of the others as they were.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import re
import sys
from pathlib import Path

from molbridge.core import stats
from molbridge.core.cli import main as bench
from molbridge.core.compare import (
    Group,
    ItemData,
    Stat,
    compare_groups,
    estimate_of,
    gather_runs,
    group_runs,
    pooled,
)
from molbridge.core.compare_report import collect_items, write_report
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


def cell(stat: Stat | None, best: bool = False, estimate: stats.Estimate | None = None) -> str:
    if stat is None:
        return "not run"
    if estimate is not None:
        text = f"{stat.mean:.3f} [{estimate.interval.lo:.3f}, {estimate.interval.hi:.3f}]"
    else:
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


def stage_table(
    stage: str, groups: list[Group], items: ItemData | None = None, notes: list[str] | None = None
) -> tuple[list[str], list[list[str]]]:
    """Markdown lines and CSV rows of one stage: a row per configuration, then the baseline's row.

    With ``items`` (per-item values, :func:`molbridge.core.compare_report.collect_items`), a metric that has
    them shows its bootstrap interval, and every configuration not distinguishable from the best mean by a
    paired bootstrap is bold with it; otherwise only the best mean is bold. Why a metric got no interval goes to
    ``notes``."""
    columns = COLUMNS[stage][1]
    items, notes = items or {}, notes if notes is not None else []
    header = ["encoder", "projector", *(title for title, *_ in columns)]
    estimates = {
        (title, group.config): estimate_of(group, metric, items, notes=notes)
        for title, metric, *_ in columns
        for group in groups
    }
    bold = {title: _bold(groups, metric, lower, items) for title, metric, _, lower in columns}
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    parts = ("mean", "std", "n", "lo", "hi")
    rows = [["encoder", "projector", *(f"{title} {part}" for title, *_ in columns for part in parts)]]
    for group in groups:
        who = [NAMES.get(group.runs[0].identity[k], group.runs[0].identity[k]) for k in ("encoder", "projector")]
        stats_ = [group.stat(metric) for _, metric, _, _ in columns]
        found = [estimates[title, group.config] for title, *_ in columns]
        cells = [
            cell(s, group.config in bold[title], e) for (title, *_), s, e in zip(columns, stats_, found, strict=True)
        ]
        lines.append("| " + " | ".join(who + cells) + " |")
        rows.append(who + _csv(stats_, found))
    done = {tuple(g.runs[0].identity[k] for k in ("encoder", "projector")) for g in groups}
    for missing in [c for c in planned(stage) if c not in done]:
        who = [NAMES.get(name, name) for name in missing]
        lines.append("| " + " | ".join(who + ["not run yet"] * len(columns)) + " |")
        rows.append(who + [""] * len(parts) * len(columns))
    base = [pooled(groups, b) if b else None for _, _, b, _ in columns]
    lines.append("| " + " | ".join([f"{BASELINES[stage]} (baseline)", ""] + [_baseline_cell(s) for s in base]) + " |")
    rows.append([f"{BASELINES[stage]} (baseline)", "", *_csv(base, [None] * len(base))])
    return lines, rows


def _bold(groups: list[Group], metric: str, lower: bool, items: ItemData) -> set[str]:
    """The configuration with the best mean and, where per-item values allow a paired bootstrap, every one not
    distinguishable from it."""
    means = [(g.stat(metric).mean, g.config) for g in groups if g.stat(metric)]
    if not means:
        return set()
    best = (min(means) if lower else max(means))[1]
    reference = next(g for g in groups if g.config == best)
    tied = set()
    for group in groups:
        if group is not reference and group.stat(metric):
            comparison = compare_groups(group, reference, metric, items)
            if comparison is not None and comparison.verdict == stats.TIED:
                tied.add(group.config)
    return {best} | tied


def legend(stage: str, groups: list[Group], items: ItemData) -> str:
    """What the cells of a stage's table are, for the line under it."""
    metrics = [metric for _, metric, _, _ in COLUMNS[stage][1]]
    with_items = [m for m in metrics if any(items.get(r.run_id, {}).get(m) for g in groups for r in g.runs)]
    spread = "mean ± sample std over seeds"
    if not with_items:
        return f"Cells: {spread}; bold: the best mean."
    titles = ", ".join(title for title, metric, *_ in COLUMNS[stage][1] if metric in with_items)
    return (
        f"Cells: {spread}, except {titles}: mean [95% percentile bootstrap interval over test items and seeds, "
        f"{stats.RESAMPLES} resamples]; bold: the best mean and, for those, every configuration a paired "
        "bootstrap on the same test items cannot tell from it (its 95% interval of the difference contains 0)."
    )


def _baseline_cell(stat: Stat | None) -> str:
    """The baselines are deterministic, so most have no spread over seeds: show one it has."""
    if stat is None:
        return ""
    return f"{stat.mean:.3f}" if not stat.std else f"{stat.mean:.3f} ± {stat.std:.3f}"


def _csv(stats_: list[Stat | None], estimates: list[stats.Estimate | None]) -> list[str]:
    out = []
    for s, e in zip(stats_, estimates, strict=True):
        numbers = (s.mean, s.std, s.n) if s else (None,) * 3
        numbers += (e.interval.lo, e.interval.hi) if e else (None, None)
        out += ["" if v is None else f"{v:.6g}" for v in numbers]
    return out


def render(stage: str, uri: str | None, plots: bool) -> str:
    """One stage's section: its table (also written to its results folder) and, with plots, its figures."""
    groups, runs = stage_rows(stage, uri)
    if not groups:
        return f"**{stage}**: no finished run of sweep {COLUMNS[stage][0]} yet\n"
    items, notes = collect_items(groups, uri), []
    lines, rows = stage_table(stage, groups, items, notes)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    seeds = sorted({r.identity["seed"] for g in groups for r in g.runs})
    out = OUT / "mini" / stage
    figures = f"; [figures]({(out / 'README.md').relative_to(ROOT)})" if plots else ""
    text = "\n".join(
        [
            f"**{stage}** (`benchmarks/mini/{stage}.yaml`; seeds {', '.join(seeds)}{figures})",
            "",
            *lines,
            "",
            legend(stage, groups, items),
            "",
        ]
    )
    if plots:
        write_report(
            runs,
            out,
            table_metrics=("test/*",),
            uri=uri,
            command=f"benchmarks/mini_table.py --render --stages {stage} (sweep {COLUMNS[stage][0]})",
            versus=groups[0].config,  # the table's first row: Uni-Mol with the Q-Former, 3D-MoLM's own
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
