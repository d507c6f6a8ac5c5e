"""The molbridge-mini results tables: every encoder x projector through the three stages, and the conformer
tasks from scratch and pre-trained; 3 seeds each.

    .venv/bin/python benchmarks/mini_table.py                      # run (or resume) the sweeps, then render
    .venv/bin/python benchmarks/mini_table.py --render             # only render, from what MLflow has
    .venv/bin/python benchmarks/mini_table.py --render --stages qa # redraw one table, keep the others

A table's rows are the children of its sweeps, ``benchmarks/mini/*.yaml`` run with ``bench sweep`` from the
repository root: ``retrieval``, ``captioning`` and ``qa`` are one chain (each stage's children start from the
previous stage's child of the same configuration and seed); ``conformer_retrieval`` has a row per encoder from
scratch (``conformer_retrieval.yaml``) and from its own seed's ``pretrain`` run (``pretrain.yaml``, run first,
then ``conformer_retrieval_pretrained.yaml``); ``conformer_qa`` continues both chains (``conformer_qa.yaml``,
``conformer_qa_pretrained.yaml``) and sets each row's within-molecule errors beside the molecule-mean ceiling.
Rendering reads the sweeps' children back from MLflow, groups them by configuration, and writes mean +- sample
std over seeds to ``benchmarks/results/mini/STAGE/table.{md,csv}`` and to the README between that table's
``mini-table:STAGE`` markers. A cell from fewer seeds than the sweep asked for says so. Where the runs'
artifacts hold the metric per test item (retrieval's ranks, QA's answers, conformer retrieval's credit per
caption), the cell is the mean with its 95% bootstrap interval over test items and seeds instead, and the
configurations that a paired bootstrap cannot tell from the best one are bold with it (``bench compare
--aggregate``'s statistics, :mod:`molbridge.core.stats`); a table with a control row adds each row's paired
difference against it, and one with pre-trained rows adds, under it, each of them minus the same components'
row from scratch (also ``effects.csv``). Each table is its own block, so redrawing one from a new MLflow store
leaves the others as they were.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import re
import sys
from dataclasses import dataclass, field
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
from molbridge.core.plugins import get_registry
from molbridge.core.recipe import load_recipe
from molbridge.core.sweep import load_sweep

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "benchmarks" / "mini"
OUT = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
SEEDS = 3
ROW_KEYS = ("encoder", "projector")  # a row's components; a table of several sweeps adds each sweep's note

Column = tuple[str, str, str | None, bool]  # (title, metric, baseline metric or None, lower is better)


@dataclass(frozen=True)
class Table:
    """One results table: its columns, the baseline row's name and the sweeps behind it."""

    columns: list[Column]
    baseline: str
    sweeps: dict[str, str] = field(default_factory=dict)
    """Sweep files (``benchmarks/mini/NAME.yaml``) whose children are rows -> what their rows add to the encoder's
    name (e.g. "from `pretrain`"); empty: the table's own file, nothing added."""
    before: tuple[str, ...] = ()
    """Sweep files run first: the runs the rows' sweeps start from (they have no rows)."""
    versus: str | None = None
    """An encoder whose from-scratch row is the control: each row gets its paired difference against it on the
    first column's metric."""
    versus_baseline: tuple[str, ...] = ()
    """Titles of columns whose per-item baseline is the comparison that matters (e.g. the molecule-mean ceiling of
    a within-molecule error): each row gets, in one last column, its paired difference against its own runs'
    baseline values on the same items, seeds paired."""
    plain: str = "from scratch"
    """What the rows of a sweep without a note are: a row with a note is also compared with the row of the same
    components without one (e.g. from `pretrain` minus from scratch), under the table."""

    def row_sweeps(self, stage: str) -> dict[str, str]:
        return self.sweeps or {stage: ""}


TABLES = {
    "retrieval": Table(
        [
            ("M2T acc", "test/full_m2t_acc", "test/baseline_full_m2t_acc", False),
            ("T2M acc", "test/full_t2m_acc", "test/baseline_full_t2m_acc", False),
            ("M2T R@20", "test/full_m2t_r20", "test/baseline_full_m2t_r20", False),
            ("T2M R@20", "test/full_t2m_r20", "test/baseline_full_t2m_r20", False),
        ],
        "fingerprint ridge",
    ),
    "captioning": Table(
        [
            ("BLEU-4", "test/bleu4", "test/baseline_bleu4", False),
            ("ROUGE-L", "test/rougeL", "test/baseline_rougeL", False),
            ("METEOR", "test/meteor", "test/baseline_meteor", False),
            ("shape acc", "test/shape_acc", "test/baseline_shape_acc", False),
            ("Rg MAE (Å)", "test/rg_mae", "test/baseline_rg_mae", True),
        ],
        "nearest-neighbour caption",
    ),
    "qa": Table(
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
        "training mean",
    ),
    "conformer_retrieval": Table(
        [("conformer acc", "test/conformer_acc", "test/conformer_chance", False)],
        "chance (any 1D model)",
        sweeps={"conformer_retrieval": "", "conformer_retrieval_pretrained": "from `pretrain`"},
        before=("pretrain",),
        versus="smiles",
    ),
    "conformer_qa": Table(
        [
            *(
                (f"{title} within", f"test/{prop}/within_mae", f"test/{prop}/molecule_mean_mae", True)
                for title, prop in (
                    ("Rg (Å)", "radius_of_gyration"),
                    ("distance (Å)", "max_distance"),
                    ("energy (kcal/mol)", "relative_energy"),
                )
            ),
            ("choice acc", "test/conformer_choice_acc", "test/conformer_choice_chance", False),
            ("conformer skill", "test/conformer_skill", None, False),
        ],
        "molecule mean (any 1D model)",
        sweeps={"conformer_qa": "", "conformer_qa_pretrained": "from `pretrain`"},
        before=("pretrain", "conformer_retrieval", "conformer_retrieval_pretrained"),
        # the SMILES control's within errors are the ceiling item by item: against the ceiling is against it
        versus_baseline=("Rg (Å) within", "distance (Å) within", "energy (kcal/mol) within"),
    ),
}
NAMES = {
    "unimol": "Uni-Mol",
    "schnet": "SchNet",
    "smiles": "SMILES (1D control)",
    "qformer": "Q-Former",
    "linear": "linear",
}


def markers(stage: str) -> tuple[str, str]:
    return f"<!-- mini-table:{stage}:start -->", f"<!-- mini-table:{stage}:end -->"


def sweep_files(stage: str) -> list[str]:
    """The sweep files behind a table, in the order they run."""
    return [*TABLES[stage].before, *TABLES[stage].row_sweeps(stage)]


def run_sweeps(stages: list[str]) -> list[str]:
    """Run or resume each table's sweeps in order; the sweep files that had a failed child."""
    failed = []
    for name in dict.fromkeys(name for stage in stages for name in sweep_files(stage)):
        print(f"== bench sweep benchmarks/mini/{name}.yaml", flush=True)
        status = bench(["sweep", str(SWEEPS / f"{name}.yaml")])
        if status not in (0, 1):  # 1: some children failed, the others are worth rendering
            raise SystemExit(status)  # interrupted (130) or an invalid sweep (2): stop here
        if status:
            failed.append(name)
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
    """The table's configurations (each group's ``label``: what its sweep adds to the row's name) and their runs."""
    groups, finished = [], []
    order = list(NAMES)  # the sweeps' grid order: Uni-Mol first, the control last
    for name, note in TABLES[stage].row_sweeps(stage).items():
        sweep = load_sweep(SWEEPS / f"{name}.yaml").name
        try:
            runs = gather_runs(task=stage, filters={"sweep.name": sweep}, metrics=("*",), uri=uri)
        except MolbridgeError:  # nothing logged for this sweep yet
            continue
        done = [r for r in runs if r.status == "FINISHED"]  # an interrupted child is half-trained: leave it out
        found = sorted(group_runs(done), key=lambda g: [order.index(g.runs[0].identity[k]) for k in ROW_KEYS])
        for group in found:
            group.label = note
        groups, finished = groups + found, finished + done
    return groups, finished


def row_key(group: Group) -> tuple[str, str, str]:
    return (*(group.runs[0].identity[k] for k in ROW_KEYS), group.label)


def planned(stage: str) -> list[tuple[str, str, str]]:
    """(encoder, projector, note) of every configuration the table's sweep files list, in their order."""
    rows = []
    for name, note in TABLES[stage].row_sweeps(stage).items():
        sweep = load_sweep(SWEEPS / f"{name}.yaml")
        base = load_recipe(sweep.base, sweep.overrides, get_registry())  # what a key outside the grid is
        choices = [sweep.grid.get(kind, [base[kind].name]) for kind in ROW_KEYS]
        rows += [(*names, note) for names in itertools.product(*choices)]
    return rows


def row_names(encoder: str, projector: str, note: str) -> list[str]:
    return [NAMES.get(encoder, encoder) + (f", {note}" if note else ""), NAMES.get(projector, projector)]


def stage_table(
    stage: str, groups: list[Group], items: ItemData | None = None, notes: list[str] | None = None
) -> tuple[list[str], list[list[str]]]:
    """Markdown lines and CSV rows of one stage: a row per configuration, then the baseline's row.

    With ``items`` (per-item values, :func:`molbridge.core.compare_report.collect_items`), a metric that has
    them shows its bootstrap interval, and every configuration not distinguishable from the best mean by a
    paired bootstrap is bold with it; otherwise only the best mean is bold. Why a metric got no interval goes to
    ``notes``."""
    table = TABLES[stage]
    columns = table.columns
    items, notes = items or {}, notes if notes is not None else []
    control = _control(table, groups)
    versus = [f"vs {NAMES.get(control.runs[0].identity['encoder'])}"] if control else []
    versus += [f"vs {table.baseline} (paired)"] if table.versus_baseline else []
    header = ["encoder", "projector", *(title for title, *_ in columns), *versus]
    estimates = {
        (title, group.config): estimate_of(group, metric, items, notes=notes)
        for title, metric, *_ in columns
        for group in groups
    }
    bold = {title: _bold(groups, metric, lower, items) for title, metric, _, lower in columns}
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    parts = ("mean", "std", "n", "lo", "hi")
    rows = [["encoder", "projector", *(f"{title} {part}" for title, *_ in columns for part in parts)]]
    verdicts = ("difference", "lo", "hi", "verdict")
    if control:
        rows[0] += [f"{versus[0]} ({columns[0][0]}) {part}" for part in verdicts]
    rows[0] += [f"vs {table.baseline} ({title}) {part}" for title in table.versus_baseline for part in verdicts]
    extra = 4 * ((control is not None) + len(table.versus_baseline))
    by_key = {row_key(g): g for g in groups}
    order = planned(stage)
    for key in order + [k for k in by_key if k not in order]:  # the sweeps' order; a configuration since dropped last
        who, group = row_names(*key), by_key.get(key)
        if group is None:
            lines.append("| " + " | ".join(who + ["not run yet"] * (len(columns) + len(versus))) + " |")
            rows.append(who + [""] * (len(parts) * len(columns) + extra))
            continue
        stats_ = [group.stat(metric) for _, metric, _, _ in columns]
        found = [estimates[title, group.config] for title, *_ in columns]
        cells = [
            cell(s, group.config in bold[title], e) for (title, *_), s, e in zip(columns, stats_, found, strict=True)
        ]
        against = _versus(group, control, columns[0][1], items) if control else []
        ceiling = _versus_baseline(group, table, items) if table.versus_baseline else []
        lines.append("| " + " | ".join(who + cells + against[:1] + ceiling[:1]) + " |")
        rows.append(who + _csv(stats_, found) + against[1:] + ceiling[1:])
    base = [pooled(groups, b) if b else None for _, _, b, _ in columns]
    baseline = [_baseline_cell(s) for s in base] + [""] * len(versus)
    lines.append("| " + " | ".join([f"{table.baseline} (baseline)", "", *baseline]) + " |")
    rows.append([f"{table.baseline} (baseline)", "", *_csv(base, [None] * len(base))])
    return lines, rows


def _control(table: Table, groups: list[Group]) -> Group | None:
    """The control row (the ``versus`` encoder's first configuration), when the table has one and it ran."""
    if table.versus is None:
        return None
    return next((g for g in groups if g.runs[0].identity["encoder"] == table.versus), None)


def _versus(group: Group, control: Group, metric: str, items: ItemData) -> list[str]:
    """The cell, then its CSV fields, of ``group`` minus the control on the same test items."""
    if group is control:
        return ["control", "", "", "", ""]
    comparison = compare_groups(group, control, metric, items)
    if comparison is None:
        return ["no per-item values", "", "", "", ""]
    return _verdict_fields(comparison)


def _verdict_fields(comparison: stats.Comparison, name: str = "") -> list[str]:
    """The cell (bold where better), then the CSV fields: difference, its interval, the verdict."""
    d, text = comparison.difference, f"{name}{comparison.text('.3f')}"
    return [
        f"**{text}**" if comparison.verdict == stats.BETTER else text,
        *(f"{v:.6g}" for v in (d.estimate, d.lo, d.hi)),
        comparison.verdict,
    ]


def _short(title: str) -> str:
    """A column's title without its unit and qualifier: ``Rg (Å) within`` -> ``Rg``."""
    return title.split(" (")[0]


def _versus_baseline(group: Group, table: Table, items: ItemData) -> list[str]:
    """One cell naming each ``versus_baseline`` column's paired difference against the row's own baseline values
    on the same items, then its CSV fields (four per column)."""
    cells, fields = [], []
    for title, metric, baseline, _ in table.columns:
        if title not in table.versus_baseline:
            continue
        comparison = compare_groups(group, group, metric, items, reference_metric=baseline) if baseline else None
        if comparison is None:
            cells.append(f"{_short(title)}: no per-item values")
            fields += ["", "", "", ""]
            continue
        cell, *numbers = _verdict_fields(comparison, f"{_short(title)}: ")
        cells.append(cell)
        fields += numbers
    return ["; ".join(cells), *fields]


def note_effects(stage: str, groups: list[Group], items: ItemData) -> tuple[list[str], list[list[str]]]:
    """What a sweep's note changed: each row with a note (e.g. from `pretrain`) minus the row of the same
    components without one, on every column with per-item values (same test items, seeds paired where both have
    the same seeds). Markdown lines (none when no pair has per-item values) and CSV rows."""
    table = TABLES[stage]
    plain = {row_key(g)[:2]: g for g in groups if not g.label}
    pairs = [(g, plain[row_key(g)[:2]]) for g in groups if g.label and row_key(g)[:2] in plain]
    found = {
        (title, g.config): compare_groups(g, base, metric, items)
        for g, base in pairs
        for title, metric, *_ in table.columns
    }
    titles = [title for title, *_ in table.columns if any(found[title, g.config] for g, _ in pairs)]
    rows = [["encoder", "projector", "note", "metric", "difference", "lo", "hi", "verdict"]]
    if not titles:
        return [], rows
    header = [f"{pairs[0][0].label} minus {table.plain}", *titles]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group, _ in pairs:
        key = row_key(group)
        fields = [found[title, group.config] for title in titles]
        cells = [_verdict_fields(c)[0] if c else "no per-item values" for c in fields]
        lines.append("| " + " | ".join([", ".join(row_names(*key[:2], "")), *cells]) + " |")
        rows += [[*key, title, *_verdict_fields(c)[1:]] for title, c in zip(titles, fields, strict=True) if c]
    lines += [
        "",
        f"Each row {pairs[0][0].label} minus the same components' row {table.plain}, on the same test items (seeds "
        "paired): the difference, its 95% interval and verdict; bold where better.",
        "",
    ]
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
    metrics = [metric for _, metric, _, _ in TABLES[stage].columns]
    with_items = [m for m in metrics if any(items.get(r.run_id, {}).get(m) for g in groups for r in g.runs)]
    spread = "mean ± sample std over seeds"
    if not with_items:
        return f"Cells: {spread}; bold: the best mean."
    titles = ", ".join(title for title, metric, *_ in TABLES[stage].columns if metric in with_items)
    table = TABLES[stage]
    versus = (
        f" Last column: the row minus the {NAMES.get(str(table.versus))} row on the same test items "
        "(seeds paired), its 95% interval and verdict; bold where better."
        if _control(table, groups)
        else ""
    )
    if table.versus_baseline:
        versus += (
            f" Last column: each row's {', '.join(map(_short, table.versus_baseline))} minus its {table.baseline} "
            "on the same test items (its own runs, seeds paired), the 95% interval and verdict; bold where better."
        )
    return (
        f"Cells: {spread}, except {titles}: mean [95% percentile bootstrap interval over test items and seeds, "
        f"{stats.RESAMPLES} resamples]; bold: the best mean and, for those, every configuration a paired "
        f"bootstrap on the same test items cannot tell from it (its 95% interval of the difference contains 0).{versus}"
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
    files = _listed(sweep_files(stage))
    if not groups:
        return f"**{stage}**: no finished child of {_listed(TABLES[stage].row_sweeps(stage))} yet\n"
    items, notes = collect_items(groups, uri), []
    lines, rows = stage_table(stage, groups, items, notes)
    effects, effect_rows = note_effects(stage, groups, items)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    seeds = sorted({r.identity["seed"] for g in groups for r in g.runs})
    out = OUT / "mini" / stage
    figures = f"; [figures]({(out / 'README.md').relative_to(ROOT)})" if plots else ""
    text = "\n".join(
        [
            f"**{stage}** ({files}; seeds {', '.join(seeds)}{figures})",
            "",
            *lines,
            "",
            legend(stage, groups, items),
            "",
            *effects,
        ]
    )
    if plots:
        write_report(
            runs,
            out,
            table_metrics=("test/*",),
            uri=uri,
            command=f"benchmarks/mini_table.py --render --stages {stage} ({files})",
            # the control row where the table has one, else the first: Uni-Mol with the Q-Former, 3D-MoLM's own
            versus=(_control(TABLES[stage], groups) or groups[0]).config,
        )
    out.mkdir(parents=True, exist_ok=True)
    with (out / "table.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    if effects:
        with (out / "effects.csv").open("w", newline="") as f:
            csv.writer(f).writerows(effect_rows)
    (out / "table.md").write_text(text)
    return text


def _listed(names) -> str:
    return ", ".join(f"`benchmarks/mini/{name}.yaml`" for name in names)


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
        default=list(TABLES),
        metavar="A,B",
        help=f"only these tables (default: {','.join(TABLES)}); a table's sweeps need the runs they start "
        "from on disk (the previous stage's, or pretrain's)",
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
    unknown = [s for s in stages if s not in TABLES]
    if unknown or not stages:
        raise argparse.ArgumentTypeError(
            f"unknown stage {', '.join(unknown) or value!r}; choose from {', '.join(TABLES)}"
        )
    return [s for s in TABLES if s in stages]  # always in chain order


if __name__ == "__main__":
    sys.exit(main())
