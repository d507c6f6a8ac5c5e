"""Runs side by side from MLflow: gathering (``gather_runs``) is kept apart from rendering."""

from __future__ import annotations

import csv
import fnmatch
import io
import json
from dataclasses import dataclass, field

from molbridge.core.errors import MolbridgeError
from molbridge.core.tracking import tracking_uri

#: Tags shown for every run: what distinguishes one configuration from another.
IDENTITY = ("task", "dataset", "encoder", "projector", "llm", "seed", "recipe")
DEFAULT_METRICS = ("test/*", "valid/*", "best/*")


@dataclass
class RunRow:
    name: str
    run_id: str
    experiment: str
    status: str
    start_time: int
    identity: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)


def _matches(run, filters: dict[str, str]) -> bool:
    for key, wanted in filters.items():
        value = run.data.tags.get(key, run.data.params.get(key))
        if value is None or str(value) != wanted:
            return False
    return True


def gather_runs(*, experiments: list[str] | None = None, task: str | None = None, dataset: str | None = None,
                filters: dict[str, str] | None = None, metrics: tuple[str, ...] = DEFAULT_METRICS,
                latest: bool = True, uri: str | None = None) -> list[RunRow]:
    """Runs matching the selection, newest first; with ``latest`` one per run name."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(uri))
    known = {e.name: e.experiment_id for e in client.search_experiments()}
    names = experiments or [n for n in known if (task is None or n.startswith(f"{task}-"))
                            and (dataset is None or n.endswith(f"-{dataset}"))]
    missing = [n for n in names if n not in known]
    if missing or not names:
        listed = ", ".join(sorted(known)) or "none (no run has been logged to this store yet)"
        raise MolbridgeError(f"no MLflow experiment {', '.join(missing) or 'matches'} at {tracking_uri(uri)}; "
                             f"experiments there: {listed}")
    found = client.search_runs([known[n] for n in names], order_by=["attributes.start_time DESC"])
    by_id = {v: k for k, v in known.items()}
    rows, seen = [], set()
    for run in found:
        if "sweep.children" in run.data.tags:  # a sweep's parent run: its children carry the results
            continue
        if not _matches(run, filters or {}) or (latest and run.info.run_name in seen):
            continue
        seen.add(run.info.run_name)
        kept = {k: v for k, v in run.data.metrics.items() if any(fnmatch.fnmatch(k, p) for p in metrics)}
        rows.append(RunRow(run.info.run_name, run.info.run_id, by_id[run.info.experiment_id], run.info.status,
                           run.info.start_time, {k: run.data.tags.get(k, "") for k in IDENTITY}, kept))
    if not rows:
        raise MolbridgeError(f"no run in {', '.join(names)} matches the filters {filters or {}}")
    return rows


def _table(rows: list[RunRow]) -> tuple[list[str], list[list[str]]]:
    """One column per run, one row per field: 2-12 runs with 10-30 metrics read down, not across."""
    header = ["", *(r.name for r in rows)]
    body = [[key, *(r.identity.get(key, "") for r in rows)] for key in IDENTITY]
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
