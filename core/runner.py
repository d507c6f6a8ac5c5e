"""The whole ``bench run`` pipeline: identity, Fabric, seed, task and model, fit, final evaluation, metrics.json.

Before anything expensive: the run's identity and folder (:mod:`molbridge.core.identity`), the comparison
of the folder's stored recipe with this one (a conflicting setting refuses the run, naming it), the choice
of an intact checkpoint to resume from, and the previous stage for ``train.init_from``. A run whose folder
already holds its completed result returns that result without training again.

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

from molbridge.core import identity as identities
from molbridge.core import loop as training
from molbridge.core.checkpoint import CHECKPOINTS, RECIPE_FILE, resolve_resume
from molbridge.core.errors import MolbridgeError
from molbridge.core.plugins import molbridge_version
from molbridge.core.recipe import read_yaml
from molbridge.core.registry import Registry, build_components
from molbridge.core.testing import check_run_contracts

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


def _start_tracker(recipe: DictConfig, registry: Registry, out: Path, identity, fabric: Fabric, **options):
    """The MLflow tracker on rank 0 (a no-op elsewhere or when tracking is disabled)."""
    from molbridge.core import tracking  # lazy: MLflow takes a second to import

    if not fabric.is_global_zero:
        return tracking.NullTracker()
    return tracking.start_run(recipe, registry, out, identity, **options)


def run(
    recipe: DictConfig,
    registry: Registry,
    *,
    output: Path | None = None,
    callbacks: Sequence[training.Callback] = (),
    tracking_tags: Mapping[str, str] | None = None,
    force_new: bool = False,
    trust_pickle: bool = False,
) -> dict[str, Any]:
    """Train and evaluate as ``recipe`` says; write and return ``OUT/metrics.json``'s content.

    ``tracking_tags`` are extra MLflow tags for the run (``bench sweep`` links children to its parent).
    ``force_new`` sets an existing folder of this run aside (renamed, nothing deleted) and starts afresh.
    ``trust_pickle`` allows reading the pickled RNG files of checkpoints written by molbridge < 0.2.

    The result has ``metrics`` (final, ``split/name``), ``best`` (validation), ``status``
    (``completed`` or ``interrupted``), ``checkpoint``, ``tracking_run_id`` and ``provenance``.
    """
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        return _run(recipe, registry, output, callbacks, tracking_tags, force_new, trust_pickle)
    finally:  # a process-wide switch: leave it as we found it (matters when run() is called in-process)
        torch.use_deterministic_algorithms(deterministic_before)


def _run(
    recipe: DictConfig,
    registry: Registry,
    output: Path | None,
    callbacks: Sequence[training.Callback],
    tracking_tags: Mapping[str, str] | None,
    force_new: bool,
    trust_pickle: bool,
) -> dict[str, Any]:
    started, commit = time.time(), _git_commit()  # at the start: the tree may change while a long run trains
    identity = identities.identify(recipe, registry)
    out = Path(output) if output is not None else identities.output_dir(recipe, identity)
    fabric = make_fabric(recipe)
    if force_new:
        _set_aside(out, fabric)
    stored = _check_folder(out, recipe, identity)
    resume_from = resolve_resume(recipe.train.resume, out)
    done = _completed(out, recipe, resume_from)
    if done is not None:
        return done
    init_from = _init_source(recipe) if resume_from is None else None
    training.configure_determinism(recipe.train.deterministic)
    fabric.seed_everything(recipe.seed)
    if fabric.is_global_zero:
        identities.write_run_files(out, recipe, identity)
    changed = identities.resumable_changes(stored, recipe) if stored is not None and resume_from else {}
    tracker = _start_tracker(
        recipe, registry, out, identity, fabric, resume=resume_from is not None, tags=tracking_tags, continued=changed
    )
    try:
        task = registry.build("task", recipe.task, recipe=recipe, registry=registry)
        with fabric.init_module():
            components = build_components(recipe, registry)
            model = task.build_model(components)
        check_run_contracts(components, model, task, registry, recipe, fabric)
        result, loop = training.fit(
            fabric,
            task,
            model,
            recipe,
            out,
            resume_from=resume_from,
            init_from=init_from,
            trust_pickle=trust_pickle,
            callbacks=callbacks,
            log_metrics=tracker.log_metrics,
        )
        summary = _final_evaluation(fabric, task, loop, result)
        summary["provenance"] = _provenance(recipe, fabric, task, result, started, resume_from, commit)
        summary["provenance"] |= {"identity": identity.record(recipe), "resume_changes": changed or None}
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


def _set_aside(out: Path, fabric: Fabric) -> None:
    """``--force-new``: rename an existing run folder to ``NAME.set-aside-TIMESTAMP`` (rank 0), so the run starts
    afresh and the old one stays on disk."""
    if fabric.is_global_zero and out.exists():
        target = out.with_name(f"{out.name}.set-aside-{time.strftime('%Y%m%d-%H%M%S')}")
        out.rename(target)
        log.warning("--force-new: %s moved to %s; starting afresh", out, target)
    fabric.barrier()


def _check_folder(out: Path, recipe: DictConfig, identity: identities.Identity) -> DictConfig | None:
    """The recipe ``out`` was started with (None for a new folder); a setting that differs and may not change
    on resume is an error that names every such setting."""
    stored = identities.stored_recipe(out)
    if stored is None:  # a folder written before run.json existed: its newest checkpoint says
        folders = sorted((out / CHECKPOINTS).glob("step-*/" + RECIPE_FILE))
        stored = read_yaml(folders[-1]) if folders else None
    if stored is None:
        return None
    conflicts = identities.resume_conflicts(stored, recipe, identities.same_init(out, identity))
    if conflicts:
        listed = "\n  ".join(conflicts[:20]) + ("\n  ..." if len(conflicts) > 20 else "")
        raise MolbridgeError(
            f"{out} holds a run of another configuration; it would be resumed with these settings changed:\n"
            f"  {listed}\nOnly {', '.join(identities.RESUMABLE)} may change on resume. Use another output "
            f"folder, or --force-new (bench run) to set that run aside and start afresh."
        )
    return stored


def _completed(out: Path, recipe: DictConfig, resume_from: Path | None) -> dict[str, Any] | None:
    """The stored result when ``out`` already holds this run completed to ``train.max_steps`` (nothing to do)."""
    metrics_file = out / METRICS_FILE
    if resume_from is None or not metrics_file.is_file():
        return None
    try:
        summary = json.loads(metrics_file.read_text())
    except (OSError, ValueError):
        return None
    steps = (summary.get("provenance") or {}).get("steps")
    if summary.get("status") != "completed" or steps != recipe.train.max_steps:
        return None
    if resume_from.name != f"step-{steps:06d}":
        return None
    log.info("%s already holds this run, completed at step %d; nothing to train (--force-new reruns it)", out, steps)
    return summary | {"path": str(metrics_file.resolve()), "reused": True}


def _init_source(recipe: DictConfig) -> Path | None:
    """The weights ``train.init_from`` names, resolved now (a missing previous stage fails before any set-up)."""
    from molbridge.core.checkpoint import init_state_file

    spec = recipe.train.init_from
    if not spec:
        return None
    if identities.is_stage_reference(spec):
        return init_state_file(identities.resolve_stage(spec, recipe))
    return init_state_file(spec)


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
    commit: str | None,
) -> dict[str, Any]:
    return {
        "recipe": recipe.recipe,
        "task": recipe.task.name,
        "seed": recipe.seed,
        "git_commit": commit,
        "molbridge_version": molbridge_version(),
        "torch_version": torch.__version__,
        "device": _device(fabric),
        "cpu_threads": torch.get_num_threads(),  # float sums differ with it: a sweep child under --jobs has fewer
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
