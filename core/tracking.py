"""MLflow tracking: one experiment per task and dataset, one deterministic run name per configuration.

Conventions (also what ``bench compare`` reads back):
- experiment ``{task}-{dataset}``, run name ``{encoder}-{projector}-{llm}-s{seed}-{hash}`` and the tag
  ``molbridge.config`` = the configuration hash (see core/identity.py): runs of one configuration share it
  across seeds, and ``bench compare`` groups by it, never by name;
- params: the resolved recipe flattened with ``.``, so each key is a valid command-line override;
- tags: task, encoder, projector, llm, recipe, dataset, seed, each component's distribution and version,
  molbridge version, git commit (and whether the tree was dirty), host;
- metrics named ``split/name``; final and ``best/...`` metrics logged once, without a step;
- the resolved recipe as the artifact ``recipe.yaml``.

MLflow is imported lazily (about a second) and used through ``MlflowClient`` with explicit run ids, so
several runs in one process never share a global "active run".

Several runs may share one store from the very first run on: with the default sqlite store, creating and
migrating the database and every write of ours happen under an exclusive lock on ``mlflow.db.lock``
(MLflow creates its tables without one, and two first runs in a fresh directory corrupt the store). The
status of a finished run is never rewritten: continuing it (more steps) opens a new run that points back
at it (tag ``molbridge.continues``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from molbridge.core.identity import Identity, experiment_name
from molbridge.core.plugins import molbridge_version
from molbridge.core.recipe import flatten, to_yaml
from molbridge.core.registry import Registry

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id"
MAX_PARAMS_PER_CALL = 100  # MLflow's log_batch limit
MAX_PARAM_LENGTH = 6000  # MLflow 3's limit on a param value
COMPONENT_KINDS = ("encoder", "projector", "llm")
CONFIG_TAG = "molbridge.config"  # the configuration hash: one value per configuration, shared by its seeds
CONTINUES_TAG = "molbridge.continues"
MAX_TAG_LENGTH = 5000  # MLflow accepts 8000 characters in a tag value


class NullTracker:
    """Tracking switched off, or a process other than rank 0: every call does nothing."""

    run_id: str | None = None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_summary(self, metrics: Mapping[str, float]) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def finish(self, status: str = "FINISHED") -> None: ...


class Tracker(NullTracker):
    """An open MLflow run; every write holds the store's lock (see the module docstring)."""

    def __init__(self, client: Any, run_id: str, uri: str):
        self.client, self.run_id, self.uri = client, run_id, uri

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(metric_name(k), v, now, step or 0) for k, v in _finite(metrics).items()]
        with store_lock(self.uri):
            for start in range(0, len(batch), 1000):
                self.client.log_batch(self.run_id, metrics=batch[start : start + 1000])

    def log_summary(self, metrics: Mapping[str, float]) -> None:
        self.log_metrics(metrics, step=None)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        with store_lock(self.uri):
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        with store_lock(self.uri):
            self.client.set_terminated(self.run_id, status=status)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores)."""
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock beside a sqlite store (``mlflow.db.lock``), held by one process at a time; a no-op
    for other stores (a tracking server serialises its own writes)."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def client_for(uri: str | None = None) -> Any:
    """An ``MlflowClient`` on ``uri`` whose store exists and is migrated (created under the lock)."""
    from mlflow import MlflowClient

    resolved = tracking_uri(uri)
    with store_lock(resolved):  # the client's constructor creates and migrates the tables: once, under the lock
        client = MlflowClient(tracking_uri=resolved)
        client.search_experiments(max_results=1)
    return client


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


def run_tags(recipe: DictConfig, registry: Registry, identity: Identity | None = None) -> dict[str, str]:
    """What people filter runs on, plus what is needed to reproduce them."""
    tags = {
        "task": recipe.task.name,
        "recipe": recipe.recipe,
        "dataset": recipe.data.name,
        "split": recipe.data.split,
        "seed": str(recipe.seed),
        "host": socket.gethostname(),
    }
    if identity is not None:
        tags[CONFIG_TAG] = identity.hash
        tags["molbridge.differences"] = json.dumps(identity.diff, default=str)[:MAX_TAG_LENGTH]
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


def experiment_id(client: Any, name: str, uri: str) -> str:
    """The id of experiment ``name``, created if missing (another process may create it at the same time)."""
    from mlflow.exceptions import MlflowException

    with store_lock(uri):
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return client.create_experiment(name)
        except MlflowException:  # created meanwhile by a process outside our lock (e.g. a tracking server)
            return client.get_experiment_by_name(name).experiment_id


def start_run(
    recipe: DictConfig,
    registry: Registry,
    output_dir: Path,
    identity: Identity,
    *,
    resume: bool,
    tags: Mapping[str, str] | None = None,
    continued: Mapping[str, Any] | None = None,
) -> NullTracker:
    """Open the run for ``recipe`` (rank 0 only); on resume, reopen the run recorded in ``output_dir``.

    A recorded run that FINISHED is not reopened (its status and numbers stay as they were): a new run
    continues it, tagged ``molbridge.continues`` with its id and ``molbridge.resume_changes`` with
    ``continued`` (the allowed settings that changed, e.g. more steps). ``tags`` are added to the run's own
    (a sweep passes ``mlflow.parentRunId`` this way)."""
    if not recipe.tracking.enabled:
        return NullTracker()
    uri = tracking_uri(recipe.tracking.uri)
    client = client_for(uri)
    id_file = Path(output_dir) / RUN_ID_FILE
    extra = dict(tags or {})
    if resume and id_file.is_file():
        previous = id_file.read_text().strip()
        status = _status(client, previous)
        if status is not None and status != "FINISHED":
            with store_lock(uri):
                client.update_run(previous, status="RUNNING")
                for key, value in extra.items():
                    client.set_tag(previous, key, value)
            log.info("resuming MLflow run %s", previous)
            return Tracker(client, previous, uri)
        if status == "FINISHED":
            extra[CONTINUES_TAG] = previous
    extra["output_dir"] = str(Path(output_dir).resolve())
    if continued:
        extra["molbridge.resume_changes"] = json.dumps(continued, default=str)[:MAX_TAG_LENGTH]
    run_id = _create_run(client, uri, recipe, registry, identity, extra)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    id_file.write_text(run_id + "\n")
    log.info("MLflow run %s (%s) in experiment %s at %s", identity.name, run_id, experiment_name(recipe), uri)
    return Tracker(client, run_id, uri)


def _status(client: Any, run_id: str) -> str | None:
    """The run's status, or None when it is not in this store (e.g. the store was deleted)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.status
    except MlflowException:
        log.warning("MLflow run %s recorded in the run folder is not in this store; opening a new one", run_id)
        return None


def _create_run(client: Any, uri: str, recipe: DictConfig, registry: Registry, identity: Identity, tags) -> str:
    from mlflow.entities import Param

    experiment = experiment_id(client, experiment_name(recipe), uri)
    all_tags = run_tags(recipe, registry, identity) | dict(tags)
    params = [Param(k, v) for k, v in _params(recipe).items()]
    with store_lock(uri), tempfile.TemporaryDirectory() as tmp:
        run_id = client.create_run(experiment, run_name=identity.name, tags=all_tags).info.run_id
        for start in range(0, len(params), MAX_PARAMS_PER_CALL):
            client.log_batch(run_id, params=params[start : start + MAX_PARAMS_PER_CALL])
        resolved = Path(tmp) / "recipe.yaml"
        resolved.write_text(to_yaml(recipe))
        client.log_artifact(run_id, str(resolved))
    return run_id


def tracking_uri(uri: str | None = None) -> str:
    """The URI ``bench compare`` reads: the argument, ``MLFLOW_TRACKING_URI``, or the default store."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri()
