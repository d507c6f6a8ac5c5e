"""``bench compare --plots DIR``: tables, figures and an index written to a folder, optionally logged to MLflow.

What is read from MLflow, per run: final metrics (bars per configuration; by default the patterns of the
task's ``report_metrics``), the metric history of ``train/loss`` and of each monitored validation metric
(the ``X`` of ``best/X``; training curves), and two artifact formats whatever the task that wrote them
(see :meth:`molbridge.core.contracts.Task.write_outputs`): ``ranks-<split>.json`` (Recall@k curves) and
``answers-<split>.jsonl`` records with numeric ``value`` and ``target`` (parity plots). The figures
themselves are drawn by :mod:`molbridge.core.plots` from plain data.

The same two artifacts hold the per-item values behind some test metrics (:func:`item_values`), from which
:func:`interval_table` gives ``bench compare --aggregate`` its bootstrap intervals and paired verdicts.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from molbridge.core import plots, stats
from molbridge.core.compare import (
    Group,
    Intervals,
    ItemData,
    Items,
    RunRow,
    check_patterns,
    group_runs,
    intervals,
    pooled,
    render,
    render_aggregate,
    select_metrics,
)
from molbridge.core.errors import MolbridgeError
from molbridge.core.tracking import client_for, store_lock, tracking_uri

#: Metrics drawn as bars for a task that declares no ``report_metrics`` (and is not installed here).
FALLBACK_PLOT_METRICS = ("best/*",)
TRAIN_CURVES = ("train/loss",)
RANKS = re.compile(r"ranks-(?P<split>[\w.-]+)\.json")
ANSWERS = re.compile(r"answers-(?P<split>[\w.-]+)\.jsonl")
#: Any task's per-item values: ``{"ids": [...], "values": {metric name: [one value per item]}}``.
ITEMS = re.compile(r"items-(?P<split>[\w.-]+)\.json")
#: Metrics whose per-item values a ranks artifact holds: rank == 0 (acc) or rank < K (rK), model or baseline.
RANK_METRIC = re.compile(r"(?P<split>[^/]+)/(?P<baseline>baseline_)?full_(?P<direction>m2t|t2m)_(?:acc|r(?P<k>\d+))")
#: ... and an answers artifact (numeric records): |value - target| (its mean and median), whether there is a value.
ANSWER_METRIC = re.compile(r"(?P<split>[^/]+)/(?P<task>.+)/(?P<stat>mae|medae|valid_rate)")


@dataclass
class Report:
    """What was written to ``folder``: tables, figures with their captions, and notes on what was left out."""

    folder: Path
    tables: list[Path] = field(default_factory=list)
    figures: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, fig, name: str) -> None:
        path = plots.save(fig, self.folder / f"{slug(name)}.png")
        self.figures.append((path, plots.caption_of(fig)))

    @property
    def files(self) -> list[Path]:
        return [*self.tables, *(p for p, _ in self.figures), self.folder / "README.md"]


def slug(text: str) -> str:
    """A file-name-safe version of a metric or configuration name."""
    return re.sub(r"[^A-Za-z0-9.+=-]+", "_", text).strip("_")


def write_report(
    rows: list[RunRow],
    folder: str | Path,
    *,
    table_metrics: tuple[str, ...],
    plot_metrics: tuple[str, ...] | None = None,
    uri: str | None = None,
    command: str = "bench compare",
    table: Intervals | None = None,
    versus: str | None = None,
    resamples: int = stats.RESAMPLES,
) -> Report:
    """Tables (per run and per configuration, markdown and CSV), figures and ``README.md`` into ``folder``.

    ``rows`` carry every metric of their runs (gather with ``metrics=("*",)``); ``table_metrics`` picks the
    tables' metrics, ``plot_metrics`` the bar charts' (default: :data:`DEFAULT_PLOT_METRICS` by task; a
    pattern given here that matches nothing is an error naming it). ``table``: the intervals of these rows'
    configurations, if already computed (:func:`interval_table`); else they are, with ``versus`` and ``resamples``.
    """
    client = client_for(uri)
    report = Report(Path(folder))
    report.folder.mkdir(parents=True, exist_ok=True)
    groups = group_runs(rows)
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        artifacts = Artifacts(client, Path(tmp))
        if table is None:
            table = intervals(groups, item_values(groups, artifacts), versus=versus, resamples=resamples)
        _tables(rows, table_metrics, report, table)
        _bars(groups, plot_metrics, report, table)
        _recall(groups, artifacts, report)
        _parities(groups, artifacts, report)
    report.notes += table.notes
    _curves(client, groups, report)
    _index(report, groups, command)
    return report


def interval_table(
    groups: list[Group], *, uri: str | None = None, versus: str | None = None, resamples: int = stats.RESAMPLES
) -> Intervals:
    """Bootstrap intervals and paired verdicts for ``groups`` from their runs' artifacts."""
    return intervals(groups, collect_items(groups, uri), versus=versus, resamples=resamples)


def collect_items(groups: list[Group], uri: str | None = None) -> ItemData:
    """:func:`item_values` of ``groups``' runs, their artifacts downloaded to a scratch folder deleted after."""
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        return item_values(groups, Artifacts(client_for(uri), Path(tmp)))


def log_report(report: Report, run_id: str, uri: str | None = None, artifact_path: str = "compare") -> None:
    """Log every file of the report to run ``run_id`` under ``artifact_path``."""
    from mlflow.exceptions import MlflowException

    client = client_for(uri)
    try:
        client.get_run(run_id)
    except MlflowException as exc:
        raise MolbridgeError(f"cannot log the comparison to run {run_id}: no such run at {tracking_uri(uri)}") from exc
    with store_lock(tracking_uri(uri)):
        for path in report.files:
            client.log_artifact(run_id, str(path), artifact_path)


def sweep_parent(rows: list[RunRow]) -> str | None:
    """The parent run when every compared run is a child of the same sweep, else None."""
    parents = {r.parent_run_id for r in rows}
    return parents.pop() if len(parents) == 1 else None


# --- tables ----------------------------------------------------------------------------------------------


def _tables(rows: list[RunRow], patterns: tuple[str, ...], report: Report, table: Intervals) -> None:
    shown = select_metrics(rows, patterns)
    groups = group_runs(shown)
    for name, text in (
        ("runs.md", render(shown)),
        ("runs.csv", render(shown, "csv")),
        ("aggregate.md", render_aggregate(groups, table=table)),
        ("aggregate.csv", render_aggregate(groups, "csv", table)),
    ):
        path = report.folder / name
        path.write_text(text)
        report.tables.append(path)


# --- bars: a metric per configuration ------------------------------------------------------------------------


def plot_metric_names(groups: list[Group], patterns: tuple[str, ...] | None) -> list[str]:
    """Metrics to draw as bars: those matching ``patterns`` (each must match one), else the tasks' defaults."""
    names = {m for g in groups for r in g.runs for m in r.metrics}
    if patterns:
        check_patterns(patterns, names, "--plot-metrics")
    else:
        tasks = {r.identity.get("task", "") for g in groups for r in g.runs}
        patterns = tuple(p for t in sorted(tasks) for p in task_report_metrics(t))
    return sorted(n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns))


def task_report_metrics(task: str) -> tuple[str, ...]:
    """The task's ``report_metrics`` (its class attribute), or :data:`FALLBACK_PLOT_METRICS`."""
    from molbridge.core.plugins import get_registry

    try:
        factory = get_registry().get("task", task).factory
    except KeyError:
        return FALLBACK_PLOT_METRICS
    return tuple(getattr(factory, "report_metrics", ()) or ()) or FALLBACK_PLOT_METRICS


def _bars(groups: list[Group], patterns: tuple[str, ...] | None, report: Report, table: Intervals) -> None:
    metrics = plot_metric_names(groups, patterns)
    if not metrics:
        report.notes.append(
            "no bar chart: none of the selected runs has a default metric of its task (choose some with --plot-metrics)"
        )
    for metric in metrics:
        values = {g.label: g.values(metric) for g in groups}
        bounds = {g.label: b for g in groups if (b := table.bounds(g.label, metric)) is not None}
        baseline = pooled(groups, baseline_metric(metric))
        dashed = f"; dashed: the baseline's {baseline_metric(metric)}, mean over {baseline.n} runs" if baseline else ""
        caption = (
            f"{metric}; bar = mean over seeds, {whiskers_caption(groups, metric, bounds, table)}, "
            f"dots = single seeds{dashed}. Runs: {runs_caption(groups, metric)}."
        )
        fig = plots.metric_bars(values, metric, caption, baseline.mean if baseline else None, intervals=bounds)
        report.add(fig, f"bars-{metric}")


def whiskers_caption(groups: list[Group], metric: str, bounds: dict[str, tuple[float, float]], table: Intervals) -> str:
    """What a bar chart's error bars are: the bootstrap interval where there is one, else the sample std."""
    ci = f"{table.level:.0%} percentile bootstrap interval over test items and seeds ({table.resamples} resamples)"
    drawn = [g.label for g in groups if g.values(metric)]
    if not bounds:
        return "error bar = sample std over seeds (no per-item values for an interval)"
    if all(label in bounds for label in drawn):
        return f"error bar = {ci}"
    others = ", ".join(label for label in drawn if label not in bounds)
    return f"error bar = {ci}, but sample std over seeds for {others} (no per-item values)"


def baseline_metric(metric: str) -> str:
    """Where a task logs its baseline's value of ``metric``: ``test/bleu4`` -> ``test/baseline_bleu4``."""
    head, _, name = metric.rpartition("/")
    return f"{head}/baseline_{name}" if head else f"baseline_{name}"


def runs_caption(groups: list[Group], metric: str | None = None) -> str:
    """``unimol-qformer-none (seeds 0, 1); schnet-qformer-none (seed 0)``: the runs (with ``metric``)."""
    parts = []
    for group in groups:
        seeds = [s for s, _ in group.values(metric)] if metric else group.seeds
        if seeds:
            parts.append(f"{group.label} (seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)})")
    return "; ".join(parts)


# --- artifacts ---------------------------------------------------------------------------------------------


class Artifacts:
    """A run's artifacts by file name pattern, downloaded into a scratch folder."""

    def __init__(self, client: Any, scratch: Path):
        self.client, self.scratch = client, scratch
        self._listed: dict[str, list[Any]] = {}
        self._found: dict[tuple[str, str], dict[str, Path]] = {}
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per file is noise here

    def find(self, run: RunRow, pattern: re.Pattern) -> dict[str, Path]:
        """``{split: local path}`` of the run's top-level artifacts whose name matches ``pattern`` (each run listed
        once, each file downloaded once: intervals, curves and parity plots read the same files)."""
        key = (run.run_id, pattern.pattern)
        if key in self._found:
            return self._found[key]
        if run.run_id not in self._listed:
            self._listed[run.run_id] = [info for info in self.client.list_artifacts(run.run_id) if not info.is_dir]
        found = {}
        for info in self._listed[run.run_id]:
            if match := pattern.fullmatch(info.path):
                target = self.scratch / run.run_id
                target.mkdir(exist_ok=True)
                found[match["split"]] = Path(self.client.download_artifacts(run.run_id, info.path, str(target)))
        self._found[key] = found
        return found


def _load_json(path: Path, run: RunRow) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MolbridgeError(
            f"artifact {path.name} of run {run.name} ({run.run_id}) is not readable JSON: {exc}"
        ) from exc


# --- per-item values: what intervals and paired tests resample ---------------------------------------------


def item_values(groups: list[Group], artifacts: Artifacts) -> ItemData:
    """Per run, the per-item values behind those of its metrics that its artifacts can give (only runs that
    logged such a metric are looked at):

    - ``ranks-SPLIT.json`` -> ``SPLIT/full_{m2t,t2m}_acc`` (1 where rank == 0, else 0) and
      ``SPLIT/full_{m2t,t2m}_rK`` (rank < K), and the same with ``baseline_`` from its ``baseline`` ranks;
      items are the molecules of its ``ids`` (positions in an artifact without them).
    - ``answers-SPLIT.jsonl`` -> ``SPLIT/PROP/mae`` (mean of |value - target| over the property's numeric records,
      a record without a value left out), ``SPLIT/PROP/medae`` (their median) and ``SPLIT/PROP/valid_rate``
      (1 where there is a value); items are the records, by ``id`` (and occurrence, for a molecule asked twice).
    - ``items-SPLIT.json`` (any task: ``ids`` and ``values``, metric name -> one value per item, the metric
      being their mean) -> ``SPLIT/NAME`` for each of its names.
    """
    values: ItemData = {}
    for group in groups:
        for run in group.runs:
            ranked = [(m, match) for m in run.metrics if (match := RANK_METRIC.fullmatch(m))]
            answered = [(m, match) for m in run.metrics if (match := ANSWER_METRIC.fullmatch(m))]
            found = values.setdefault(run.run_id, {})
            if ranked:
                files = artifacts.find(run, RANKS)
                for metric, match in ranked:
                    if match["split"] in files:
                        found[metric] = _rank_items(files[match["split"]], run, match)
            if answered:
                files = artifacts.find(run, ANSWERS)
                records = {split: _numeric_records(path, run) for split, path in files.items()}
                for metric, match in answered:
                    numeric = records.get(match["split"], {}).get(match["task"])
                    if numeric:
                        found[metric] = _answer_items(numeric, files[match["split"]], match)
            found |= _listed_items(run, artifacts)
    return values


def _listed_items(run: RunRow, artifacts: Artifacts) -> dict[str, Items]:
    """The per-item values of an ``items-SPLIT.json`` artifact, for the metrics of it the run logged."""
    found = {}
    for split, path in artifacts.find(run, ITEMS).items():
        content = _load_json(path, run)
        ids, listed = content.get("ids"), content.get("values")
        if not isinstance(ids, list) or not isinstance(listed, dict):
            raise MolbridgeError(f"artifact {path.name} of run {run.name} ({run.run_id}) lacks 'ids' or 'values'")
        for name, values in listed.items():
            if f"{split}/{name}" not in run.metrics:
                continue
            if len(values) != len(ids):
                raise MolbridgeError(
                    f"artifact {path.name} of run {run.name} ({run.run_id}): {len(ids)} ids but {len(values)} "
                    f"values of {name}"
                )
            found[f"{split}/{name}"] = Items(_unique(map(str, ids)), np.asarray(values, dtype=float), "mean", path.name)
    return found


def _rank_items(path: Path, run: RunRow, match: re.Match) -> Items:
    content = _ranks(_load_json(path, run), path, run)
    who = "baseline" if match["baseline"] else "model"
    if who not in content:
        raise MolbridgeError(f"artifact {path.name} of run {run.name} ({run.run_id}) has no '{who}' ranks")
    ranks = np.asarray(content[who][match["direction"]])
    ids = content.get("ids") or [f"#{i}" for i in range(len(ranks))]
    if len(ids) != len(ranks):
        raise MolbridgeError(
            f"artifact {path.name} of run {run.name} ({run.run_id}): {len(ids)} ids but {len(ranks)} "
            f"{who} {match['direction']} ranks"
        )
    hits = ranks == 0 if match["k"] is None else ranks < int(match["k"])
    return Items(_unique(str(i) for i in ids), hits.astype(float), "mean", path.name)


def _numeric_records(path: Path, run: RunRow) -> dict[str, list[tuple[str, float, float | None]]]:
    """task -> (item id, target, value or None) of the numeric records (those with a target), in file order."""
    out: dict[str, list[tuple[str, float, float | None]]] = {}
    for number, record in _jsonl(path, run):
        if "target" not in record:
            continue
        target, value = record["target"], record.get("value")
        if not isinstance(target, int | float):
            raise MolbridgeError(
                f"{path.name} of run {run.name} ({run.run_id}), line {number}: the reference "
                f"{record.get('reference')!r} holds no number"
            )
        item = str(record.get("id", f"line {number}"))
        parsed = float(value) if isinstance(value, int | float) else None
        out.setdefault(record["task"], []).append((item, float(target), parsed))
    return out


def _answer_items(records: list[tuple[str, float, float | None]], path: Path, match: re.Match) -> Items:
    ids = _unique(item for item, _, _ in records)
    if match["stat"] == "valid_rate":
        return Items(ids, np.array([float(v is not None) for _, _, v in records]), "mean", path.name)
    errors = np.array([np.nan if v is None else abs(v - t) for _, t, v in records])
    return Items(ids, errors, "median" if match["stat"] == "medae" else "mean", path.name)


def _unique(ids: Iterable[str]) -> tuple[str, ...]:
    """Ids made unique by occurrence (``m1``, ``m1#2``): one molecule may be asked about twice."""
    seen: dict[str, int] = {}
    out = []
    for item in ids:
        seen[item] = seen.get(item, 0) + 1
        out.append(item if seen[item] == 1 else f"{item}#{seen[item]}")
    return tuple(out)


# --- retrieval: Recall@k curves ----------------------------------------------------------------------------


def _recall(groups: list[Group], artifacts: Artifacts, report: Report) -> None:
    """Recall@k curves from every run's ``ranks-<split>.json``; a run of a task whose other runs have one
    but which has none itself (an older or failed run) is named in the notes."""
    found = {run.run_id: artifacts.find(run, RANKS) for group in groups for run in group.runs}
    ranking = {run.identity.get("task") for group in groups for run in group.runs if found[run.run_id]}
    by_split: dict[str, dict[str, list[dict]]] = {}
    baselines: dict[str, list[dict]] = {}
    missing = []
    for group in groups:
        for run in group.runs:
            files = found[run.run_id]
            if run.identity.get("task") not in ranking:
                continue
            if not files:
                missing.append(run.name if run.status == "FINISHED" else f"{run.name} ({run.status})")
            for split, path in files.items():
                content = _ranks(_load_json(path, run), path, run)
                by_split.setdefault(split, {}).setdefault(group.label, []).append(content["model"])
                if "baseline" in content:
                    baselines.setdefault(split, []).append(content["baseline"])
    if missing:
        report.notes.append(
            f"no Recall@k curve for {', '.join(missing)}: no ranks-<split>.json artifact "
            f"(other runs of the task log one; older or failed runs have none)"
        )
    for split, ranks in sorted(by_split.items()):
        runs = "; ".join(f"{config} ({len(r)} run{'s' if len(r) > 1 else ''})" for config, r in ranks.items())
        dashed = "; dashed: the fingerprint baseline, mean over all runs" if baselines.get(split) else ""
        caption = (
            f"Full-set Recall@k on {split} from ranks-{split}.json, k = 1..N (log scale); line = mean over "
            f"seeds, band = min..max over seeds{dashed}. Runs: {runs}."
        )
        report.add(
            plots.recall_curves(ranks, caption, baseline=baselines.get(split, []), split=split), f"recall-{split}"
        )


def _ranks(content: Any, path: Path, run: RunRow) -> dict:
    """Check a ranks artifact: ``model`` (and optional ``baseline``) with ``m2t`` and ``t2m`` lists of ints."""
    for who in ("model", "baseline"):
        if who == "baseline" and who not in content:
            continue
        part = content.get(who) if isinstance(content, dict) else None
        ok = isinstance(part, dict) and all(
            isinstance(part.get(d), list) and part[d] and all(isinstance(x, int) for x in part[d])
            for d in plots.DIRECTIONS
        )
        if not ok:
            raise MolbridgeError(
                f"artifact {path.name} of run {run.name} ({run.run_id}): '{who}' needs "
                f"non-empty integer lists {' and '.join(plots.DIRECTIONS)}"
            )
    return content


# --- QA: parity plots --------------------------------------------------------------------------------------


def _parities(groups: list[Group], artifacts: Artifacts, report: Report) -> None:
    """One figure per configuration and split: predicted against true per numeric task of ``answers-<split>.jsonl``
    (records with ``value`` and ``target``, which the task that wrote them parsed)."""
    for group in groups:
        by_split: dict[str, dict[str, plots.Parity]] = {}
        for run in group.runs:
            for split, path in artifacts.find(run, ANSWERS).items():
                parse_answers(path, run, by_split.setdefault(split, {}))
        for split, properties in sorted(by_split.items()):
            if not properties:
                continue
            unparsed = sum(p.unparsed for p in properties.values())
            total = unparsed + sum(len(p.true) for p in properties.values())
            caption = (
                f"{group.label}, {split}: numeric answers of answers-{split}.jsonl as the task parsed them "
                f"(value against target); {unparsed} of {total} answers held no number and are left out. "
                f"Runs: {runs_caption([group])}."
            )
            fig = plots.parity_plot(properties, f"{group.label}: predicted vs true ({split})", caption)
            report.add(
                fig,
                f"parity-{group.config}-{split}"
                if group.label == group.config
                else f"parity-{group.experiment}-{group.config}-{split}",
            )


def parse_answers(path: Path, run: RunRow, into: dict[str, plots.Parity]) -> None:
    """Add the numeric answers of one ``answers-<split>.jsonl`` to ``into`` (by ``task``): records with a
    ``target`` are numeric; a null ``value`` counts as unparsed; a null ``target`` is an error naming the line.
    Records without ``target`` (text answers, or artifacts of older runs) are not drawn."""
    seed = run.identity.get("seed", "")
    for number, record in _jsonl(path, run):
        if "target" not in record:
            continue
        truth, answer = record["target"], record.get("value")
        if not isinstance(truth, int | float):
            raise MolbridgeError(
                f"{path.name} of run {run.name} ({run.run_id}), line {number}: the reference "
                f"{record.get('reference')!r} holds no number"
            )
        entry = into.setdefault(record["task"], plots.Parity([], [], []))
        if not isinstance(answer, int | float):
            entry.unparsed += 1
        else:
            entry.true.append(float(truth))
            entry.predicted.append(float(answer))
            entry.seeds.append(seed)


def _jsonl(path: Path, run: RunRow) -> Iterable[tuple[int, dict]]:
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MolbridgeError(
                f"{path.name} of run {run.name} ({run.run_id}), line {number}: not JSON ({exc})"
            ) from exc
        missing = [k for k in ("task", "reference", "answer") if not isinstance(record.get(k), str)]
        if missing:
            raise MolbridgeError(
                f"{path.name} of run {run.name} ({run.run_id}), line {number}: no text {', '.join(missing)}"
            )
        yield number, record


# --- training curves ---------------------------------------------------------------------------------------


def curve_metrics(groups: list[Group]) -> list[str]:
    """``train/loss`` and each monitored validation metric (``best/valid/X`` -> ``valid/X``) the runs have."""
    names = {m for g in groups for r in g.runs for m in r.metrics}
    monitored = {m.removeprefix("best/") for m in names if m.startswith("best/")}
    return [m for m in (*TRAIN_CURVES, *sorted(monitored)) if m in names]


def history(client: Any, run_id: str, metric: str) -> tuple[list[int], list[float]]:
    """(steps, values) of a metric, by step; a repeated step keeps its last value. Final values are logged at
    step 0 after training (a task without a test split): such a step-0 point, newer than the others, is left
    out, so it does not draw a line back to the start."""
    points = sorted(client.get_metric_history(run_id, metric), key=lambda m: m.timestamp)
    if len(points) > 1 and points[-1].step == 0 and any(p.step > 0 for p in points):
        points = points[:-1]
    by_step = {p.step: p.value for p in points}
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def _curves(client: Any, groups: list[Group], report: Report) -> None:
    configs = [g.label for g in groups]
    for metric in curve_metrics(groups):
        curves = []
        for group in groups:
            for run in group.runs:
                if metric in run.metrics:
                    steps, values = history(client, run.run_id, metric)
                    curves.append(
                        plots.Curve(group.label, f"{group.label} s{run.identity.get('seed', '')}", steps, values)
                    )
        caption = (
            f"{metric} against training step, from the MLflow metric history; colour = configuration, "
            f"line style = seed. Runs: {runs_caption(groups, metric)}."
        )
        report.add(plots.training_curves(curves, metric, caption, configs), f"curve-{metric}")


# --- the index -------------------------------------------------------------------------------------------


def _index(report: Report, groups: list[Group], command: str) -> None:
    lines = [
        f"# {command}",
        "",
        f"{sum(len(g.runs) for g in groups)} runs in {len(groups)} configurations: {runs_caption(groups)}.",
        "",
        "## Tables",
        "",
    ]
    lines += [f"- [{p.name}]({p.name})" for p in report.tables]
    lines += ["", "## Figures", ""]
    for path, caption in report.figures:
        lines += [f"### {path.name}", "", f"![{path.stem}]({path.name})", "", caption, ""]
    if report.notes:
        lines += ["## Left out", "", *(f"- {note}" for note in report.notes), ""]
    lines += ["## Runs", "", "| run | run id | experiment | status |", "|---|---|---|---|"]
    lines += [f"| {r.name} | {r.run_id} | {r.experiment} | {r.status} |" for g in groups for r in g.runs]
    (report.folder / "README.md").write_text("\n".join(lines) + "\n")
