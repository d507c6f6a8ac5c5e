"""The whole ``bench run`` pipeline: Fabric, seed, task and model, fit, final evaluation, metrics.json.

Final metrics are computed with the **last** weights (those at the end of training), on the ``test``
split if the task has one, else on ``valid``; ``metrics.json`` says which in its provenance block.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning_fabric import Fabric
from omegaconf import DictConfig

from molbridge.core import loop as training
from molbridge.core.checkpoint import resolve_resume
from molbridge.core.errors import MolbridgeError
from molbridge.core.plugins import molbridge_version
from molbridge.core.recipe import output_dir as default_output_dir
from molbridge.core.registry import Registry

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


def make_fabric(recipe: DictConfig) -> Fabric:
    """A launched Fabric from ``recipe.train`` (accelerator, strategy, devices, num_nodes, precision)."""
    train = recipe.train
    try:
        fabric = Fabric(
            accelerator=train.accelerator,
            strategy=train.strategy,
            devices=train.devices,
            num_nodes=train.num_nodes,
            precision=train.precision,
        )
    except (ValueError, TypeError, RuntimeError) as exc:
        raise MolbridgeError(
            f"cannot set up Lightning Fabric from the recipe's train section "
            f"(accelerator={train.accelerator}, strategy={train.strategy}, devices={train.devices}, "
            f"num_nodes={train.num_nodes}, precision={train.precision}): {exc}"
        ) from exc
    fabric.launch()
    return fabric


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def _device(fabric: Fabric) -> str:
    if fabric.device.type == "cuda":
        return torch.cuda.get_device_name(fabric.device)
    return f"{fabric.device.type} ({platform.processor() or platform.machine()})"


def _start_tracker(
    recipe: DictConfig,
    registry: Registry,
    out: Path,
    resume: bool,
    fabric: Fabric,
    tags: Mapping[str, str] | None = None,
):
    """The MLflow tracker on rank 0 (a no-op elsewhere or when tracking is disabled)."""
    from molbridge.core import tracking  # lazy: MLflow takes a second to import

    if not fabric.is_global_zero:
        return tracking.NullTracker()
    return tracking.start_run(recipe, registry, out, resume=resume, tags=tags)


def run(
    recipe: DictConfig,
    registry: Registry,
    *,
    output: Path | None = None,
    callbacks: Sequence[training.Callback] = (),
    tracking_tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Train and evaluate as ``recipe`` says; write and return ``OUT/metrics.json``'s content.

    ``tracking_tags`` are extra MLflow tags for the run (``bench sweep`` links children to its parent).

    The result has ``metrics`` (final, ``split/name``), ``best`` (validation), ``status``
    (``completed`` or ``interrupted``), ``checkpoint``, ``tracking_run_id`` and ``provenance``.
    """
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        return _run(recipe, registry, output, callbacks, tracking_tags)
    finally:  # a process-wide switch: leave it as we found it (matters when run() is called in-process)
        torch.use_deterministic_algorithms(deterministic_before)


def _run(
    recipe: DictConfig,
    registry: Registry,
    output: Path | None,
    callbacks: Sequence[training.Callback],
    tracking_tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    started = time.time()
    out = Path(output) if output is not None else default_output_dir(recipe)
    fabric = make_fabric(recipe)
    training.configure_determinism(recipe.train.deterministic)
    fabric.seed_everything(recipe.seed)
    resume_from = resolve_resume(recipe.train.resume, out)
    if fabric.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
    tracker = _start_tracker(recipe, registry, out, resume_from is not None, fabric, tracking_tags)
    try:
        task = registry.build("task", recipe.task, recipe=recipe, registry=registry)
        with fabric.init_module():
            model = task.build_model()
        result, loop = training.fit(
            fabric,
            task,
            model,
            recipe,
            out,
            resume_from=resume_from,
            callbacks=callbacks,
            log_metrics=tracker.log_metrics,
        )
        summary = _final_evaluation(fabric, task, loop, result)
        summary["provenance"] = _provenance(recipe, fabric, task, result, started, resume_from)
        summary["provenance"]["init_from"] = loop.init_report
        summary["tracking_run_id"] = tracker.run_id
        if fabric.is_global_zero:
            _write(out / METRICS_FILE, summary)
            tracker.log_summary(_summary_metrics(summary))
            tracker.log_artifact(out / METRICS_FILE)
            for path in task.write_outputs(out):
                tracker.log_artifact(path)
    except KeyboardInterrupt:
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("KILLED" if result.status == "interrupted" else "FINISHED")
    summary["path"] = str((out / METRICS_FILE).resolve())
    return summary


def _final_evaluation(fabric: Fabric, task, loop: training.Loop, result: training.FitResult) -> dict[str, Any]:
    splits = task.datasets()
    split = "test" if "test" in splits else "valid" if "valid" in splits else None
    metrics: dict[str, float] = {}
    if split is not None and result.status == "completed":
        with fabric.autocast():
            metrics = {f"{split}/{k}": float(v) for k, v in task.evaluate(loop.model, fabric, split).items()}
    return {
        "status": result.status,
        "metrics": metrics,
        "evaluated_split": split,
        "best": result.best,
        "checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
    }


def _provenance(
    recipe: DictConfig,
    fabric: Fabric,
    task,
    result: training.FitResult,
    started: float,
    resume_from: Path | None,
) -> dict[str, Any]:
    return {
        "recipe": recipe.recipe,
        "task": recipe.task.name,
        "seed": recipe.seed,
        "git_commit": _git_commit(),
        "molbridge_version": molbridge_version(),
        "torch_version": torch.__version__,
        "device": _device(fabric),
        "precision": recipe.train.precision,
        "strategy": recipe.train.strategy,
        "world_size": fabric.world_size,
        "wall_time_s": round(time.time() - started, 3),
        "steps": result.step,
        "weights": "last",
        "resumed_from": str(resume_from) if resume_from else None,
        "task_description": task.describe(),
    }


def _summary_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    metrics = dict(summary["metrics"])
    if summary["best"]:
        metrics[f"best/{summary['best']['metric']}"] = summary["best"]["value"]
    return metrics


def _write(path: Path, content: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=2, default=str) + "\n")
    tmp.replace(path)
