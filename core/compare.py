"""Runs side by side from MLflow: gathering (``gather_runs``) is kept apart from rendering.

Runs of one configuration with different seeds share the configuration hash (tag ``molbridge.config``, see
:mod:`molbridge.core.identity`); :func:`group_runs` groups by it, never by run name (runs logged before the
tag existed are grouped by their name without ``-s{seed}``), and :func:`render_aggregate` shows mean ± sample
std over seeds. Every param whose value differs between the rows shown gets a row (side by side) or a column
(aggregated), so two configurations never look alike. Figures and the report folder:
:mod:`molbridge.core.compare_report`.

Where the runs' artifacts hold a metric's per-item values (:class:`Items`, read by
:func:`molbridge.core.compare_report.item_values`), :func:`intervals` adds a bootstrap interval over test items and
seeds per configuration and a paired comparison with a reference configuration (:mod:`molbridge.core.stats`), and
:func:`render_aggregate` shows them.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import math
import re
import statistics
from dataclasses import dataclass, field

import numpy as np

from molbridge.core import stats
from molbridge.core.errors import MolbridgeError
from molbridge.core.identity import NOT_CONFIGURATION, matches
from molbridge.core.tracking import client_for, tracking_uri

#: Tags shown for every run: what distinguishes one configuration from another.
IDENTITY = ("task", "dataset", "encoder", "projector", "llm", "seed", "recipe")
DEFAULT_METRICS = ("test/*", "valid/*", "best/*")
SEED_PART = re.compile(r"-s\d+(?=-[0-9a-f]{6}$|$)")
PARENT_TAG = "mlflow.parentRunId"
CONFIG_TAG = "molbridge.config"
PAGE = 1000  # MLflow's largest page of search_runs


@dataclass
class RunRow:
    name: str
    run_id: str
    experiment: str
    status: str
    start_time: int
    identity: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    parent_run_id: str | None = None
    """The sweep's parent run, for a sweep's child."""
    config_hash: str | None = None
    """The configuration hash (tag ``molbridge.config``); None for runs logged before it existed."""
    params: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> str:
        """The configuration's label: the run name without its ``-s{seed}`` part."""
        return configuration(self.name)

    @property
    def config_key(self) -> str:
        """What groups runs into one configuration: the hash, else (older runs) the label."""
        return self.config_hash or self.config


def configuration(run_name: str) -> str:
    """``unimol-qformer-none-s1-3f9c2a`` -> ``unimol-qformer-none-3f9c2a``; ``unimol-qformer-none-s1`` ->
    ``unimol-qformer-none``."""
    return SEED_PART.sub("", run_name)


def _matches(run, filters: dict[str, str]) -> bool:
    for key, wanted in filters.items():
        value = run.data.tags.get(key, run.data.params.get(key))
        if value is None or str(value) != wanted:
            return False
    return True


def gather_runs(
    *,
    experiments: list[str] | None = None,
    task: str | None = None,
    dataset: str | None = None,
    filters: dict[str, str] | None = None,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    latest: bool = True,
    uri: str | None = None,
) -> list[RunRow]:
    """Runs matching the selection, newest first; with ``latest`` one per run name."""
    client = client_for(uri)
    known = {e.name: e.experiment_id for e in client.search_experiments()}
    names = experiments or [
        n
        for n in known
        if (task is None or n.startswith(f"{task}-")) and (dataset is None or n.endswith(f"-{dataset}"))
    ]
    missing = [n for n in names if n not in known]
    if missing or not names:
        listed = ", ".join(sorted(known)) or "none (no run has been logged to this store yet)"
        raise MolbridgeError(
            f"no MLflow experiment {', '.join(missing) or 'matches'} at {tracking_uri(uri)}; "
            f"experiments there: {listed}"
        )
    found = search_all(client, [known[n] for n in names])
    by_id = {v: k for k, v in known.items()}
    rows, seen = [], set()
    for run in found:
        if "sweep.children" in run.data.tags:  # a sweep's parent run: its children carry the results
            continue
        if not _matches(run, filters or {}) or (latest and run.info.run_name in seen):
            continue
        seen.add(run.info.run_name)
        kept = {k: v for k, v in run.data.metrics.items() if any(fnmatch.fnmatch(k, p) for p in metrics)}
        rows.append(
            RunRow(
                run.info.run_name,
                run.info.run_id,
                by_id[run.info.experiment_id],
                run.info.status,
                run.info.start_time,
                {k: run.data.tags.get(k, "") for k in IDENTITY},
                kept,
                run.data.tags.get(PARENT_TAG),
                run.data.tags.get(CONFIG_TAG),
                dict(run.data.params),
            )
        )
    if not rows:
        raise MolbridgeError(f"no run in {', '.join(names)} matches the filters {filters or {}}")
    return rows


def search_all(client, experiment_ids: list[str]) -> list:
    """Every run of the experiments, newest first, page by page (MLflow returns at most 1,000 per call)."""
    found, token = [], None
    while True:
        page = client.search_runs(
            experiment_ids, order_by=["attributes.start_time DESC"], max_results=PAGE, page_token=token
        )
        found += list(page)
        token = page.token
        if not token:
            return found


def differing_params(rows: list[RunRow]) -> list[str]:
    """Params whose value differs between ``rows`` (:data:`~molbridge.core.identity.NOT_CONFIGURATION` excluded)."""
    keys = sorted({k for r in rows for k in r.params})
    return [k for k in keys if not matches(k, NOT_CONFIGURATION) and len({r.params.get(k) for r in rows}) > 1]


def _table(rows: list[RunRow]) -> tuple[list[str], list[list[str]]]:
    """One column per run, one row per field: 2-12 runs with 10-30 metrics read down, not across."""
    header = ["", *(r.name for r in rows)]
    body = [[key, *(r.identity.get(key, "") for r in rows)] for key in IDENTITY]
    body += [[key, *(r.params.get(key, "") for r in rows)] for key in differing_params(rows)]
    body.append(["status", *(r.status for r in rows)])
    for metric in sorted({m for r in rows for m in r.metrics}):
        body.append([metric, *(_fmt(r.metrics.get(metric)) for r in rows)])
    return header, body


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def render(rows: list[RunRow], fmt: str = "markdown") -> str:
    if fmt == "json":
        return json.dumps([r.__dict__ for r in rows], indent=2)
    header, body = _table(rows)
    if fmt == "csv":
        buffer = io.StringIO()
        csv.writer(buffer).writerows([header, *body])
        return buffer.getvalue()
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def select_metrics(rows: list[RunRow], patterns: tuple[str, ...], *, strict: bool = False) -> list[RunRow]:
    """Copies of ``rows`` keeping the metrics matching any pattern; ``strict``: a pattern matching no
    metric of any run is an error naming it."""
    names = {m for r in rows for m in r.metrics}
    if strict:
        check_patterns(patterns, names, "--metrics")
    return [
        RunRow(
            **(
                r.__dict__
                | {"metrics": {k: v for k, v in r.metrics.items() if any(fnmatch.fnmatch(k, p) for p in patterns)}}
            )
        )
        for r in rows
    ]


def check_patterns(patterns: tuple[str, ...], names: set[str], option: str) -> None:
    """Raise naming each pattern that matches none of ``names`` (and list what there is)."""
    unmatched = [p for p in patterns if not fnmatch.filter(names, p)]
    if unmatched:
        listed = ", ".join(sorted(names)[:40]) + (" ..." if len(names) > 40 else "")
        raise MolbridgeError(
            f"{option} {' '.join(unmatched)}: no metric of the selected runs matches; "
            f"they have: {listed or 'no metrics'}"
        )


# --- aggregation over seeds -----------------------------------------------------------------------------


@dataclass
class Stat:
    """Mean and sample standard deviation (None with fewer than two values) of a metric over seeds."""

    mean: float
    std: float | None
    n: int


@dataclass
class Group:
    """The runs of one configuration (same experiment, same run name up to the seed)."""

    experiment: str
    config: str
    runs: list[RunRow]
    label: str = ""

    @property
    def seeds(self) -> list[str]:
        return [r.identity.get("seed", "") for r in self.runs]

    def values(self, metric: str) -> list[tuple[str, float]]:
        """(seed, value) of each run that has ``metric``."""
        return [(r.identity.get("seed", ""), r.metrics[metric]) for r in self.runs if metric in r.metrics]

    def stat(self, metric: str) -> Stat | None:
        values = [v for _, v in self.values(metric)]
        if not values:
            return None
        return Stat(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


def pooled(groups: list[Group], metric: str) -> Stat | None:
    """``metric`` over every run of ``groups`` together: for a baseline, which does not depend on the
    configuration."""
    return Group("", "", [run for group in groups for run in group.runs]).stat(metric)


def group_runs(rows: list[RunRow]) -> list[Group]:
    """Runs grouped by configuration, sorted by experiment and configuration; labels carry the experiment
    only when there are several. Two runs of one name in a group (``--no-latest``) are an error: they would
    count one seed twice."""
    groups: dict[tuple[str, str], Group] = {}
    for row in rows:
        group = groups.setdefault((row.experiment, row.config_key), Group(row.experiment, row.config, []))
        if any(r.name == row.name for r in group.runs):
            raise MolbridgeError(
                f"run {row.name} appears twice in {row.experiment} ({row.run_id} and "
                f"{next(r.run_id for r in group.runs if r.name == row.name)}); aggregate over "
                f"seeds with one run per name (drop --no-latest)"
            )
        group.runs.append(row)
    several = len({g.experiment for g in groups.values()}) > 1
    ordered = sorted(groups.values(), key=lambda g: (g.experiment, g.config))
    for group in ordered:
        group.runs.sort(key=lambda r: _seed_order(r.identity.get("seed", "")))
        group.label = f"{group.experiment}: {group.config}" if several else group.config
    return ordered


def _seed_order(seed: str) -> tuple:
    return (0, int(seed), "") if seed.lstrip("-").isdigit() else (1, 0, seed)


# --- intervals over test items and paired comparisons ----------------------------------------------------


@dataclass(eq=False)  # arrays do not compare to one bool
class Items:
    """One run's per-item values of one metric, read from its artifacts: the metric is ``statistic`` (mean or
    median) of ``values`` over the items, NaN being an item without a value (an answer without a number)."""

    ids: tuple[str, ...]
    values: np.ndarray
    statistic: str = "mean"
    source: str = ""
    """The artifact they come from, for messages."""


#: run id -> metric -> that run's per-item values of the metric.
ItemData = dict[str, dict[str, Items]]


@dataclass
class Intervals:
    """Bootstrap intervals per (configuration label, metric), paired comparisons of each configuration with its
    reference, and notes on what got no interval and why."""

    estimates: dict[tuple[str, str], stats.Estimate] = field(default_factory=dict)
    comparisons: dict[tuple[str, str], stats.Comparison] = field(default_factory=dict)
    references: dict[str, str] = field(default_factory=dict)
    """Configuration label -> the label of the configuration it is compared with (itself for a reference)."""
    notes: list[str] = field(default_factory=list)
    resamples: int = stats.RESAMPLES
    seed: int = stats.SEED
    level: float = stats.LEVEL

    def bounds(self, label: str, metric: str) -> tuple[float, float] | None:
        estimate = self.estimates.get((label, metric))
        return None if estimate is None else (estimate.interval.lo, estimate.interval.hi)


def compared(metric: str) -> bool:
    """Whether ``metric`` gets a verdict column: not a baseline's metric, which is the same for every configuration."""
    return not metric.rsplit("/", 1)[-1].startswith("baseline_")


def reference_groups(groups: list[Group], versus: str | None = None) -> dict[str, Group]:
    """Experiment -> the configuration the others of that experiment are compared with: the first of the table,
    or the one called ``versus`` (its configuration or label; else a glob matching one per experiment)."""
    if versus is None:
        return {g.experiment: g for g in reversed(groups)}  # reversed: the first of each experiment wins
    chosen = [g for g in groups if versus in (g.config, g.label)]
    chosen = chosen or [g for g in groups if fnmatch.fnmatch(g.config, versus) or fnmatch.fnmatch(g.label, versus)]
    if not chosen:
        raise MolbridgeError(
            f"--versus {versus}: no configuration of the table is called that; they are: "
            + ", ".join(g.label for g in groups)
        )
    found: dict[str, Group] = {}
    for group in chosen:
        if group.experiment in found:
            raise MolbridgeError(
                f"--versus {versus} matches {found[group.experiment].label} and {group.label}; name one"
            )
        found[group.experiment] = group
    return found


def intervals(
    groups: list[Group],
    items: ItemData,
    *,
    versus: str | None = None,
    resamples: int = stats.RESAMPLES,
    seed: int = stats.SEED,
) -> Intervals:
    """For every configuration and metric with per-item values: its :class:`~molbridge.core.stats.Estimate`, and
    (except for baselines' metrics) a paired comparison with its experiment's reference configuration."""
    result = Intervals(resamples=resamples, seed=seed)
    references = reference_groups(groups, versus)
    missing = sorted({g.experiment for g in groups} - set(references))
    if missing:
        result.notes.append(f"no comparison in {', '.join(missing)}: no configuration there matches --versus {versus}")
    metrics = sorted({m for g in groups for r in g.runs for m in r.metrics})
    for group in groups:
        reference = references.get(group.experiment)
        if reference is not None:
            result.references[group.label] = reference.label
        for metric in metrics:
            estimate = estimate_of(group, metric, items, resamples=resamples, seed=seed, notes=result.notes)
            if estimate is None:
                continue
            result.estimates[group.label, metric] = estimate
            if reference is not None and reference is not group and compared(metric):
                comparison = compare_groups(group, reference, metric, items, resamples=resamples, seed=seed)
                if comparison is not None:
                    result.comparisons[group.label, metric] = comparison
    return result


def estimate_of(
    group: Group,
    metric: str,
    items: ItemData,
    *,
    resamples: int = stats.RESAMPLES,
    seed: int = stats.SEED,
    notes: list[str] | None = None,
) -> stats.Estimate | None:
    """The configuration's interval for ``metric`` over test items and seeds; None without per-item values for
    every run of it that logged the metric (the reason goes to ``notes``)."""
    found = item_matrix(group, metric, items, notes if notes is not None else [])
    if found is None:
        return None
    _, matrix, statistic, _ = found
    return stats.configuration(matrix, statistic=statistic, resamples=resamples, seed=seed)


def compare_groups(
    candidate: Group,
    reference: Group,
    metric: str,
    items: ItemData,
    *,
    reference_metric: str | None = None,
    resamples: int = stats.RESAMPLES,
    seed: int = stats.SEED,
) -> stats.Comparison | None:
    """Candidate minus reference on ``metric`` over the same test items (refused, naming a run of each, when their
    items differ); seeds paired when both configurations have the same ones. None without per-item values.
    ``reference_metric``: the reference's values of another metric, e.g. a group against its own per-item
    baseline (``compare_groups(g, g, "test/x/within_mae", items, reference_metric="test/x/molecule_mean_mae")``)."""
    theirs = item_matrix(reference, reference_metric or metric, items, [])
    ours = item_matrix(candidate, metric, items, [])
    if ours is None or theirs is None:
        return None
    ids, matrix, statistic, runs = ours
    their_ids, their_matrix, _, their_runs = theirs
    order = _alignment(ids, their_ids, runs[0], their_runs[0], metric)
    seeds = [r.identity.get("seed", "") for r in runs]
    pair = seeds == [r.identity.get("seed", "") for r in their_runs] and len(set(seeds)) == len(seeds)
    return stats.paired(
        matrix,
        their_matrix[:, order],
        higher=stats.higher_is_better(metric),
        pair_seeds=pair,
        statistic=statistic,
        resamples=resamples,
        seed=seed,
    )


def item_matrix(
    group: Group, metric: str, items: ItemData, notes: list[str]
) -> tuple[tuple[str, ...], np.ndarray, str, list[RunRow]] | None:
    """(item ids, seeds x items values in that order, statistic, runs) of the configuration's runs that logged
    ``metric``; None (with a note saying why, unless no run has per-item values) when one of them has none or
    its values do not give the logged number."""
    runs = [r for r in group.runs if metric in r.metrics]
    found = [items.get(r.run_id, {}).get(metric) for r in runs]
    if not runs or all(f is None for f in found):
        return None
    lacking = [r.name for r, f in zip(runs, found, strict=True) if f is None]
    if lacking:
        notes.append(f"no interval for {metric} of {group.label}: {', '.join(lacking)} logged no per-item values")
        return None
    parts = [f for f in found if f is not None]  # all of them, after the check above
    for run, part in zip(runs, parts, strict=True):
        value = float(stats.summarize(np.asarray(part.values, dtype=float), part.statistic))
        if not math.isclose(value, run.metrics[metric], rel_tol=1e-5, abs_tol=1e-6):
            notes.append(
                f"no interval for {metric} of {group.label}: {part.source or 'the artifact'} of {run.name} "
                f"gives {value:.6g}, the run logged {run.metrics[metric]:.6g} (written by another evaluation?)"
            )
            return None
    ids = parts[0].ids
    rows = [np.asarray(parts[0].values, dtype=float)]
    for run, part in zip(runs[1:], parts[1:], strict=True):
        order = _alignment(ids, part.ids, runs[0], run, metric)
        rows.append(np.asarray(part.values, dtype=float)[order])
    statistics_used = {f.statistic for f in parts}
    if len(statistics_used) > 1:
        raise MolbridgeError(f"{metric} of {group.label}: per-item values read as {' and '.join(statistics_used)}")
    return ids, np.stack(rows), parts[0].statistic, runs


def _alignment(ids: tuple[str, ...], other: tuple[str, ...], run: RunRow, other_run: RunRow, metric: str) -> list[int]:
    """Positions in ``other`` of each of ``ids``: items are matched by id, never by position alone. Two runs
    scored on different items cannot be compared, nor pooled into one interval: refused, naming both."""
    if ids == other:
        return list(range(len(ids)))
    where = {item: i for i, item in enumerate(other)}
    only_one, only_other = [i for i in ids if i not in where], sorted(set(other) - set(ids))
    if only_one or only_other or len(where) != len(other):
        raise MolbridgeError(
            f"{metric}: runs {run.name} ({run.run_id}) and {other_run.name} ({other_run.run_id}) were scored on "
            f"different items ({len(ids)} and {len(other)}; {_some(only_one)} only in the first, "
            f"{_some(only_other)} only in the second); intervals and paired tests need the same test items"
        )
    return [where[i] for i in ids]


def _some(ids: list[str]) -> str:
    return "none" if not ids else ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")


# --- the aggregate table ---------------------------------------------------------------------------------------


def _aggregate_table(groups: list[Group]) -> tuple[list[str], list[str], list[list[Stat | None]]]:
    metrics = sorted({m for g in groups for r in g.runs for m in r.metrics})
    return [g.label for g in groups], metrics, [[g.stat(m) for m in metrics] for g in groups]


def _cell(stat: Stat | None, runs: int, estimate: stats.Estimate | None = None) -> str:
    if stat is None:
        return ""
    text = f"{stat.mean:.4g}" if stat.std is None else f"{stat.mean:.4g} ± {stat.std:.2g}"
    if estimate is not None:
        text += f" [{estimate.interval.lo:.4g}, {estimate.interval.hi:.4g}]"
    return text if stat.n == runs else f"{text} (n={stat.n})"


def _verdict_cell(label: str, metric: str, table: Intervals | None) -> str:
    if table is None:
        return ""
    comparison = table.comparisons.get((label, metric))
    if comparison is not None:
        return comparison.text()
    if table.references.get(label) == label and (label, metric) in table.estimates:
        return "reference"
    return ""


def _verdict_metrics(metrics: list[str], table: Intervals) -> list[str]:
    return [m for m in metrics if compared(m) and any(metric == m for _, metric in table.comparisons)]


def describe_intervals(table: Intervals, metrics: list[str]) -> list[str]:
    """What the table's intervals and verdicts are, as sentences (the markdown table's legend)."""
    with_ci = {m for _, m in table.estimates}
    refs = sorted(set(table.references.values()))
    lines = [
        f"[lo, hi]: {table.level:.0%} percentile bootstrap interval of the metric over test items and seeds "
        f"(one item resample shared by all seeds; {table.resamples} resamples, seed {table.seed}); "
        "± sample std over seeds.",
    ]
    if any(m in with_ci and compared(m) for m in metrics):
        lines.append(
            f"vs {', '.join(refs) or 'reference'}: paired bootstrap of the difference (this configuration minus the "
            "reference) on the same test items, seeds paired when both have the same ones; better / worse when its "
            f"{table.level:.0%} interval excludes 0 (higher is better for accuracies, recalls, BLEU, ROUGE, METEOR, "
            "skill and rates, lower for MAE, MedAE and losses), else not distinguishable."
        )
    without = [m for m in metrics if m not in with_ci]
    if without:
        lines.append(f"No interval (no per-item values in the runs' artifacts): {', '.join(without)}.")
    return lines


def render_aggregate(groups: list[Group], fmt: str = "markdown", table: Intervals | None = None) -> str:
    """One row per configuration: its seeds, the params that differ between configurations, and per metric
    mean ± sample std over seeds; with ``table`` (:func:`intervals`), also each metric's bootstrap interval where
    per-item values exist, and a verdict column per compared metric against the reference configuration.

    Markdown shows ``mean ± std [lo, hi]`` with n in the ``n`` column (and in a cell whose metric fewer runs
    have), verdict cells ``better (+0.031 [0.012, 0.05])`` and a legend under the table; CSV has ``METRIC mean``,
    ``METRIC std`` and ``METRIC n`` columns, with ``table`` also ``METRIC lo``, ``METRIC hi``, a ``reference``
    column and ``METRIC verdict``, ``METRIC difference``, ``METRIC difference lo``, ``METRIC difference hi``
    for every metric (empty where there is none); JSON a record per configuration.
    """
    labels, metrics, rows_of_stats = _aggregate_table(groups)
    params = differing_params([r for g in groups for r in g.runs])
    settings = [[_setting(g, key) for key in params] for g in groups]
    if fmt == "json":
        return json.dumps(
            [
                {
                    "experiment": g.experiment,
                    "configuration": g.config,
                    "seeds": g.seeds,
                    "run_ids": [r.run_id for r in g.runs],
                    "params": dict(zip(params, values, strict=True)),
                    "metrics": {
                        m: s.__dict__ | _json_intervals(table, g.label, m)
                        for m, s in zip(metrics, row, strict=True)
                        if s
                    },
                }
                | (_json_method(table, g.label) if table else {})
                for g, row, values in zip(groups, rows_of_stats, settings, strict=True)
            ],
            indent=2,
        )
    if fmt == "csv":
        parts = ("mean", "std", "n", "lo", "hi") if table else ("mean", "std", "n")
        verdicts = ("verdict", "difference", "difference lo", "difference hi")
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(
            [
                "configuration",
                "experiment",
                "seeds",
                "n",
                *(["reference"] if table else []),
                *params,
                *(f"{m} {part}" for m in metrics for part in parts),
                *(f"{m} {part}" for m in (metrics if table else []) for part in verdicts),
            ]
        )
        for group, row, values in zip(groups, rows_of_stats, settings, strict=True):
            cells = []
            for metric, s in zip(metrics, row, strict=True):
                bounds = table.bounds(group.label, metric) if table else None
                numbers: tuple[float | int | None, ...] = (s.mean, s.std, s.n) if s else (None,) * 3
                numbers += (bounds or (None, None)) if table else ()
                cells += [_csv_number(v) for v in numbers]
            if table:
                for metric in metrics:
                    comparison = table.comparisons.get((group.label, metric))
                    if comparison is None:
                        cells += [""] * len(verdicts)
                    else:
                        d = comparison.difference
                        cells += [comparison.verdict, *(_csv_number(v) for v in (d.estimate, d.lo, d.hi))]
            reference = [_reference_name(table, group.label)] if table else []
            writer.writerow(
                [group.config, group.experiment, " ".join(group.seeds), len(group.runs), *reference, *values, *cells]
            )
        return buffer.getvalue()
    judged = _verdict_metrics(metrics, table) if table else []
    refs = sorted(set(table.references.values())) if table else []
    against = refs[0] if len(refs) == 1 else "reference"
    header = ["configuration", "seeds", "n", *params, *metrics, *(f"{m} vs {against}" for m in judged)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group, label, row, values in zip(groups, labels, rows_of_stats, settings, strict=True):
        cells = [label, ", ".join(group.seeds), str(len(group.runs)), *values]
        cells += [
            _cell(s, len(group.runs), table.estimates.get((label, m)) if table else None)
            for m, s in zip(metrics, row, strict=True)
        ]
        cells += [_verdict_cell(label, m, table) for m in judged]
        lines.append("| " + " | ".join(cells) + " |")
    if table:
        lines += ["", *describe_intervals(table, metrics)]
    return "\n".join(lines) + "\n"


def _reference_name(table: Intervals, label: str) -> str:
    return table.references.get(label, "")


def _json_intervals(table: Intervals | None, label: str, metric: str) -> dict:
    if table is None:
        return {}
    estimate, comparison = table.estimates.get((label, metric)), table.comparisons.get((label, metric))
    if estimate is None:
        return {"ci": None}
    record = {
        "ci": _pair(estimate.interval),
        "ci_over_items": _pair(estimate.over_items),
        "ci_over_seeds": _pair(estimate.over_seeds),
        "items": estimate.items,
    }
    if comparison is not None:
        d = comparison.difference
        record["versus"] = {
            "reference": table.references[label],
            "difference": d.estimate,
            "ci": _pair(d),
            "verdict": comparison.verdict,
            "seeds": comparison.seeds,
        }
    return record


def _json_method(table: Intervals, label: str) -> dict:
    return {
        "reference": table.references.get(label),
        "bootstrap": {"level": table.level, "resamples": table.resamples, "seed": table.seed, "method": "percentile"},
    }


def _pair(interval: stats.Interval) -> list[float | None]:
    return [None if math.isnan(v) else v for v in (interval.lo, interval.hi)]


def _setting(group: Group, key: str) -> str:
    """A param's value in a configuration (``varies`` if its runs disagree, which a hash-grouped one cannot)."""
    values = {r.params.get(key, "") for r in group.runs}
    return values.pop() if len(values) == 1 else "varies"


def _csv_number(value: float | int | None) -> str:
    return "" if value is None else repr(value)  # repr: every digit of a float, read back exactly
