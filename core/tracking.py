"""MLflow tracking: one experiment per task and dataset, one deterministic run name per configuration.

Conventions (also what ``bench compare`` reads back):
- experiment ``{task}-{dataset}``, run name ``{encoder}-{projector}-{llm}-s{seed}`` (see core/recipe.py);
- params: the resolved recipe flattened with ``.``, so each key is a valid command-line override;
- tags: task, encoder, projector, llm, recipe, dataset, seed, each component's distribution and version,
  molbridge version, git commit (and whether the tree was dirty), host;
- metrics named ``split/name``; final and ``best/...`` metrics logged once, without a step;
- the resolved recipe as the artifact ``recipe.yaml``.

MLflow is imported lazily (about a second) and used through ``MlflowClient`` with explicit run ids, so
several runs in one process never share a global "active run".
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from molbridge.core.plugins import molbridge_version
from molbridge.core.recipe import experiment_name, flatten, run_name, to_yaml
from molbridge.core.registry import Registry

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id"
MAX_PARAMS_PER_CALL = 100  # MLflow's log_batch limit
MAX_PARAM_LENGTH = 6000  # MLflow 3's limit on a param value
COMPONENT_KINDS = ("encoder", "projector", "llm")


class NullTracker:
    """Tracking switched off, or a process other than rank 0: every call does nothing."""

    run_id: str | None = None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_summary(self, metrics: Mapping[str, float]) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def finish(self, status: str = "FINISHED") -> None: ...


class Tracker(NullTracker):
    """An open MLflow run."""

    def __init__(self, client: Any, run_id: str):
        self.client, self.run_id = client, run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(metric_name(k), v, now, step or 0) for k, v in _finite(metrics).items()]
        for start in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[start : start + 1000])

    def log_summary(self, metrics: Mapping[str, float]) -> None:
        self.log_metrics(metrics, step=None)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def metric_name(name: str) -> str:
    """MLflow accepts letters, digits, ``_ - . space / :``; anything else becomes ``_``."""
    return re.sub(r"[^\w\-. /:]", "_", name)


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    kept = {}
    for key, value in metrics.items():
        value = float(value)
        if math.isfinite(value):
            kept[key] = value
        else:
            log.warning("metric %s is %s; not logged to MLflow", key, value)
    return kept


def default_uri() -> str:
    """MLflow 3's default store: ``mlflow.db`` (sqlite) in the working directory."""
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=Path.cwd())
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def run_tags(recipe: DictConfig, registry: Registry) -> dict[str, str]:
    """What people filter runs on, plus what is needed to reproduce them."""
    tags = {
        "task": recipe.task.name,
        "recipe": recipe.recipe,
        "dataset": recipe.data.name,
        "split": recipe.data.split,
        "seed": str(recipe.seed),
        "host": socket.gethostname(),
    }
    for kind in (*COMPONENT_KINDS, "task"):
        section = recipe.get(kind)
        tags[kind] = section.name if section is not None else "none"
        if section is not None:
            component = registry.get(kind, section.name)
            tags[f"plugin.{kind}"] = f"{component.distribution or component.plugin} {component.version or ''}".strip()
    version = molbridge_version()
    if version:
        tags["molbridge_version"] = version
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git_dirty"] = str(bool(_git("status", "--porcelain", "--untracked-files=no")))
    return tags


def _params(recipe: DictConfig) -> dict[str, str]:
    params = {}
    for key, value in flatten(recipe).items():
        text = str(value)
        params[key] = text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 14] + "...[truncated]"
    return params


def _client(recipe: DictConfig):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(recipe.tracking.uri))


def _experiment_id(client: Any, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)


def start_run(
    recipe: DictConfig, registry: Registry, output_dir: Path, *, resume: bool, tags: Mapping[str, str] | None = None
) -> NullTracker:
    """Open the run for ``recipe`` (rank 0 only); on resume, reopen the run recorded in ``output_dir``.

    ``tags`` are added to the run's own (a sweep passes ``mlflow.parentRunId`` this way)."""
    if not recipe.tracking.enabled:
        return NullTracker()
    client = _client(recipe)
    id_file = Path(output_dir) / RUN_ID_FILE
    if resume and id_file.is_file():
        run_id = id_file.read_text().strip()
        client.update_run(run_id, status="RUNNING")
        for key, value in (tags or {}).items():
            client.set_tag(run_id, key, value)
        log.info("resuming MLflow run %s", run_id)
        return Tracker(client, run_id)
    from mlflow.entities import Param

    run = client.create_run(
        _experiment_id(client, experiment_name(recipe)),
        run_name=run_name(recipe),
        tags=run_tags(recipe, registry) | dict(tags or {}),
    )
    run_id = run.info.run_id
    params = [Param(k, v) for k, v in _params(recipe).items()]
    for start in range(0, len(params), MAX_PARAMS_PER_CALL):
        client.log_batch(run_id, params=params[start : start + MAX_PARAMS_PER_CALL])
    with tempfile.TemporaryDirectory() as tmp:
        resolved = Path(tmp) / "recipe.yaml"
        resolved.write_text(to_yaml(recipe))
        client.log_artifact(run_id, str(resolved))
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    id_file.write_text(run_id + "\n")
    client.set_tag(run_id, "output_dir", str(Path(output_dir).resolve()))
    log.info(
        "MLflow run %s (%s) in experiment %s at %s",
        run_name(recipe),
        run_id,
        experiment_name(recipe),
        tracking_uri(recipe.tracking.uri),
    )
    return Tracker(client, run_id)


def tracking_uri(uri: str | None = None) -> str:
    """The URI ``bench compare`` reads: the argument, ``MLFLOW_TRACKING_URI``, or the default store."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri()
