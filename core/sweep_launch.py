"""Where a sweep's children run when not one after another here: worker processes, or a cluster via submitit.

``bench sweep --jobs N``: N children at once in worker processes, the cores divided between them (the default of
every worker using every core makes them spin against each other); on a machine with several GPUs each worker
gets one (``CUDA_VISIBLE_DEVICES``). The workers fork from a server process (``forkserver``) that imports torch,
Lightning, MLflow and the sweep's plugins once, started before the sweep is planned: the imports, seconds that
each ``spawn``-ed worker paid again after planning, overlap the planning and the MLflow parent run instead.
``--launcher submitit``: every child is a submitit job (SLURM on a cluster, local processes elsewhere), with the
``--launcher-arg`` key=value pairs as submitit parameters; molbridge schedules nothing itself.

A worker receives its child's resolved recipe as YAML and validates it again against the plugins installed
where it runs, then calls the same :func:`molbridge.core.sweep.run_child` as the sequential path. The parent
keeps the MLflow parent run, the records and ``sweep.json``, updated as each child finishes. The first Ctrl-C
reaches the workers too: running children save a checkpoint at their next step and stop, children not started
are cancelled; a second Ctrl-C stops waiting.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from molbridge.core.errors import MolbridgeError

if TYPE_CHECKING:
    from molbridge.core.sweep import ChildOutcome

log = logging.getLogger(__name__)

Record = Callable[[int, dict[str, Any]], None]


def cores() -> int:
    """CPU cores this process may use (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


#: What the worker server imports before the sweep needs a worker (the plugins' modules are added); MLflow's
#: SQL store is what a child's default ``sqlite:`` tracking URI loads on its first call.
PRELOAD = (
    "molbridge.core.runner",
    "molbridge.core.sweep",
    "molbridge.core.plugins",
    "yaml",
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",
)


def threads_per_job(jobs: int) -> int:
    """Each of ``jobs`` workers' share of the cores."""
    return max(1, cores() // jobs)


def _context():
    """``forkserver`` where the platform has it (not Windows), else ``spawn``: never a plain fork of this process,
    whose torch may already hold threads."""
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method)


def preload(jobs: int, registry) -> None:
    """Start the worker server now, importing what a child needs (the run machinery and every registered plugin's
    module), with each worker's OpenMP settings in its environment (read once, when torch loads OpenMP)."""
    context = _context()
    if context.get_start_method() != "forkserver":
        return
    modules = {component.factory.__module__ for kind in registry.components.values() for component in kind.values()}
    context.set_forkserver_preload([*PRELOAD, *sorted(modules)])
    threads = str(threads_per_job(jobs))
    saved = {key: os.environ.get(key) for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}
    os.environ.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        from multiprocessing import forkserver

        forkserver.ensure_running()  # returns at once; the server imports in the background
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _init_worker(threads: int, gpus: list[int], slot) -> None:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "torch" in sys.modules:  # forked from the server, torch is loaded: the variables above came too late
        sys.modules["torch"].set_num_threads(threads)
    if gpus:
        with slot.get_lock():
            index, slot.value = slot.value, slot.value + 1
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus[index % len(gpus)])


def run_in_worker(recipe_yaml: str, output_dir: str, tags: Mapping[str, str]) -> ChildOutcome:
    """One child in a worker process: (result, error, traceback) as :func:`molbridge.core.sweep.run_child` gives."""
    import yaml

    from molbridge.core.plugins import get_registry
    from molbridge.core.recipe import validate
    from molbridge.core.sweep import run_child

    registry = get_registry()
    try:
        recipe = validate(yaml.safe_load(recipe_yaml), registry, source=f"sweep child {output_dir}")
    except MolbridgeError as exc:  # e.g. a plugin the submitting machine has and this one lacks
        return None, f"{type(exc).__name__}: {exc}", None
    return run_child(recipe, registry, Path(output_dir), tags)


def _gpus() -> list[int]:
    import torch

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def run_parallel(children, parent, invocation: str, jobs: int, registry, record: Record) -> None:
    """Run the children not yet completed ``jobs`` at a time in worker processes."""
    from molbridge.core.recipe import to_yaml
    from molbridge.core.sweep import _record, completed_metrics, finish_child, prepare_child

    todo = []
    for index, child in enumerate(children):
        done = completed_metrics(child.output_dir)
        if done is not None:
            record(index, _record(child, "skipped", done))
        else:
            todo.append((index, child))
    if not todo:
        return
    jobs = min(jobs, len(todo))
    threads = threads_per_job(jobs)
    gpus = _gpus()
    context = _context()
    log.info(
        "sweep: %d children, %d at a time, %d thread(s) each%s",
        len(todo),
        jobs,
        threads,
        f", one of GPUs {gpus} each" if gpus else "",
    )
    with ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_init_worker, initargs=(threads, gpus, context.Value("i", 0))
    ) as pool:
        running: dict[Future, tuple[int, Any, float]] = {}
        for index, child in todo:
            prepare_child(child)
            tags = parent.child_tags(child, invocation)
            future = pool.submit(run_in_worker, to_yaml(child.recipe), str(child.output_dir), tags)
            running[future] = (index, child, time.time())
        _collect(
            running,
            lambda index, child, outcome, seconds: record(
                index, finish_child(child, registry, parent, invocation, *outcome, seconds)
            ),
        )


def _collect(
    running: dict[Future, tuple[int, Any, float]], done: Callable[[int, Any, ChildOutcome, float], None]
) -> None:
    """Record futures as they finish; on Ctrl-C cancel those not started and keep waiting for the others (which
    save and stop); a second Ctrl-C raises."""
    interrupted = False
    while running:
        try:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
        except KeyboardInterrupt:
            if interrupted:
                raise
            interrupted = True
            log.warning("Ctrl-C: running children save a checkpoint and stop; the others are not started")
            for future in list(running):
                if future.cancel():
                    running.pop(future)
            continue
        for future in finished:
            index, child, started = running.pop(future)
            outcome: ChildOutcome
            try:
                outcome = future.result()
            except Exception as exc:  # noqa: BLE001 - a worker that died (killed, out of memory) fails its child
                outcome = (None, f"{type(exc).__name__}: the worker running this child died: {exc}", None)
            done(index, child, outcome, time.time() - started)


def run_submitit(
    children, parent, invocation: str, folder: Path, registry, record: Record, options: Mapping[str, Any]
) -> None:
    """Every child not yet completed as a submitit job (``options``: submitit parameters, e.g. slurm_partition,
    timeout_min, gpus_per_node; ``cluster`` picks slurm/local/debug, default: slurm where available)."""
    try:
        import submitit
    except ImportError as exc:
        raise MolbridgeError("--launcher submitit needs submitit: pip install submitit") from exc
    from molbridge.core.recipe import to_yaml
    from molbridge.core.sweep import _record, completed_metrics, finish_child, prepare_child

    options = dict(options)
    executor = submitit.AutoExecutor(folder=folder / "submitit", cluster=options.pop("cluster", None))
    executor.update_parameters(**options)
    jobs = []
    for index, child in enumerate(children):
        done = completed_metrics(child.output_dir)
        if done is not None:
            record(index, _record(child, "skipped", done))
            continue
        prepare_child(child)
        tags = parent.child_tags(child, invocation)
        job = executor.submit(run_in_worker, to_yaml(child.recipe), str(child.output_dir), tags)
        log.info("sweep child %s: submitit job %s", child.key, job.job_id)
        jobs.append((index, child, job, time.time()))
    for index, child, job, started in jobs:
        outcome: ChildOutcome
        try:
            outcome = job.result()
        except Exception as exc:  # noqa: BLE001 - a job the cluster lost or killed fails its child
            outcome = (None, f"{type(exc).__name__}: submitit job {job.job_id} failed: {exc}", None)
        record(index, finish_child(child, registry, parent, invocation, *outcome, time.time() - started))
