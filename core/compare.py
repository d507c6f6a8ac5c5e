"""Runs side by side from MLflow: gathering (``gather_runs``) is kept apart from rendering.

Runs of one configuration with different seeds share the configuration hash (tag ``molbridge.config``, see
:mod:`molbridge.core.identity`); :func:`group_runs` groups by it, never by run name (runs logged before the
tag existed are grouped by their name without ``-s{seed}``), and :func:`render_aggregate` shows mean ± sample
std over seeds. Every param whose value differs between the rows shown gets a row (side by side) or a column
(aggregated), so two configurations never look alike. Figures and the report folder:
:mod:`molbridge.core.compare_report`.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import re
import statistics
from dataclasses import dataclass, field

from molbridge.core.errors import MolbridgeError
from molbridge.core.tracking import client_for, tracking_uri

#: Tags shown for every run: what distinguishes one configuration from another.
IDENTITY = ("task", "dataset", "encoder", "projector", "llm", "seed", "recipe")
DEFAULT_METRICS = ("test/*", "valid/*", "best/*")
SEED_PART = re.compile(r"-s\d+(?=-[0-9a-f]{6}$|$)")
PARENT_TAG = "mlflow.parentRunId"
CONFIG_TAG = "molbridge.config"
#: Params that differ between runs without making them different configurations.
NOT_CONFIGURATION = ("seed", "output_dir", "tracking.", "train.resume", "recipe", "description")
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
    """Params whose value differs between ``rows`` (seeds and where runs were written excluded)."""
    keys = sorted({k for r in rows for k in r.params})
    return [
        k
        for k in keys
        if not any(k == p or (p.endswith(".") and k.startswith(p)) for p in NOT_CONFIGURATION)
        and len({r.params.get(k) for r in rows}) > 1
    ]


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


def _aggregate_table(groups: list[Group]) -> tuple[list[str], list[str], list[list[Stat | None]]]:
    metrics = sorted({m for g in groups for r in g.runs for m in r.metrics})
    return [g.label for g in groups], metrics, [[g.stat(m) for m in metrics] for g in groups]


def _cell(stat: Stat | None, runs: int) -> str:
    if stat is None:
        return ""
    text = f"{stat.mean:.4g}" if stat.std is None else f"{stat.mean:.4g} ± {stat.std:.2g}"
    return text if stat.n == runs else f"{text} (n={stat.n})"


def render_aggregate(groups: list[Group], fmt: str = "markdown") -> str:
    """One row per configuration: its seeds, the params that differ between configurations, and per metric
    mean ± sample std over seeds.

    Markdown shows ``mean ± std`` with n in the ``n`` column (and in a cell whose metric fewer runs have);
    CSV has ``METRIC mean``, ``METRIC std`` and ``METRIC n`` columns; JSON a record per configuration.
    """
    labels, metrics, stats = _aggregate_table(groups)
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
                    "metrics": {m: s.__dict__ for m, s in zip(metrics, row, strict=True) if s},
                }
                for g, row, values in zip(groups, stats, settings, strict=True)
            ],
            indent=2,
        )
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(
            [
                "configuration",
                "experiment",
                "seeds",
                "n",
                *params,
                *(f"{m} {part}" for m in metrics for part in ("mean", "std", "n")),
            ]
        )
        for group, row, values in zip(groups, stats, settings, strict=True):
            cells = [_csv_number(part) for s in row for part in ((s.mean, s.std, s.n) if s else (None,) * 3)]
            writer.writerow([group.config, group.experiment, " ".join(group.seeds), len(group.runs), *values, *cells])
        return buffer.getvalue()
    header = ["configuration", "seeds", "n", *params, *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group, label, row, values in zip(groups, labels, stats, settings, strict=True):
        cells = [label, ", ".join(group.seeds), str(len(group.runs)), *values]
        cells += [_cell(s, len(group.runs)) for s in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _setting(group: Group, key: str) -> str:
    """A param's value in a configuration (``varies`` if its runs disagree, which a hash-grouped one cannot)."""
    values = {r.params.get(key, "") for r in group.runs}
    return values.pop() if len(values) == 1 else "varies"


def _csv_number(value: float | int | None) -> str:
    return "" if value is None else repr(value)  # repr: every digit of a float, read back exactly
