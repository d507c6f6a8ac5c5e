"""``bench sweep``: a grid of runs (configurations x seeds), one MLflow parent run with a child per run.

A sweep is a base recipe, fixed overrides, a grid and seeds. Every configuration is validated before
anything runs, and all problems are reported at once. Children then run one after another in this
process through :func:`molbridge.core.runner.run`, each under the identity ``bench run`` would give it
(:mod:`molbridge.core.identity`: components, seed and the hash of every setting that differs from the task's
packaged recipe) in the folder ``ROOT/sweep-NAME/{run name}``, so two grid points never share a folder or
a run, running the same sweep again skips finished children, resumes an interrupted one from its checkpoint
and reuses the parent run (a rerun may add only settings that change no result: how often children save or log).
A child that raises is recorded as failed (in MLflow and ``sweep.json``) and the others go on.

A sweep file::

    name: arch                        # default: the file's stem
    task: retrieval                   # and/or recipe: a packaged recipe or a path (relative to this file)
    overrides: {train.max_steps: 200} # or a list of key=value
    grid:
      encoder: [unimol, schnet]       # encoder / projector / llm swap the component, like --encoder
      projector: [qformer, linear]
      train.lr: [1.0e-4, 5.0e-4]      # any other recipe key, dotted
    seeds: 2                          # a count (seeds 0..N-1) or a list; default: the recipe's seed
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import shlex
import time
import traceback
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from molbridge.core import sweep_launch as launch
from molbridge.core import tracking
from molbridge.core.errors import MolbridgeError, RecipeError, suggest
from molbridge.core.identity import NO_EFFECT, experiment_name, identify, matches
from molbridge.core.recipe import load_recipe

log = logging.getLogger(__name__)

COMPONENTS = ("encoder", "projector", "llm")
FILE_KEYS = ("name", "description", "task", "recipe", "overrides", "grid", "seeds")
#: Keys the sweep sets itself for every child.
RESERVED = {
    "seed": "use seeds",
    "task": "a sweep runs one task",
    "output_dir": "the sweep sets each child's",
    "tracking.run_name": "each child is named by its identity",
}
SWEEP_FILE = "sweep.json"
CHILD_FILE = "sweep_child.json"
FOLDER_NAME = re.compile(r"[A-Za-z0-9_.+=-]+")


class SweepError(MolbridgeError):
    """A sweep definition is invalid; the message lists every problem, naming the key or configuration."""

    def __init__(self, source: str, problems: list[str]):
        self.source, self.problems = source, problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in sweep {source}:\n{lines}")


@dataclass
class Sweep:
    """What to run: ``base`` is a packaged recipe name or a recipe path."""

    name: str
    base: str
    task: str | None = None
    overrides: list[str] = field(default_factory=list)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    seeds: list[int] | None = None
    source: str = "command line"


@dataclass
class Child:
    """One configuration and seed: its validated recipe, folder and the definition it was run with."""

    config: str
    seed: int
    assignment: dict[str, Any]
    recipe: DictConfig
    output_dir: Path
    definition: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.config}-s{self.seed}"


# --- reading a sweep ------------------------------------------------------------------------------------


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file; every problem in it is reported at once."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(str(path), ["no such file"])
    try:
        data = OmegaConf.to_container(OmegaConf.load(path)) or {}
    except (OmegaConfBaseException, yaml.YAMLError) as exc:
        raise SweepError(str(path), [f"not valid YAML: {exc}"]) from exc
    if not isinstance(data, dict):
        raise SweepError(str(path), ["a sweep file is a mapping with task/recipe, overrides, grid and seeds"])
    problems = [
        f"{key!s}: unknown key{suggest(str(key), FILE_KEYS)}; valid keys: {', '.join(FILE_KEYS)}"
        for key in data
        if key not in FILE_KEYS
    ]
    task, base = data.get("task"), data.get("recipe")
    if not task and not base:
        problems.append("task/recipe: name the task (its packaged recipe is the base) or a recipe")
    if base and str(base).endswith((".yaml", ".yml")) and (path.parent / str(base)).is_file():
        base = str((path.parent / str(base)).resolve())  # relative to the sweep file, like extends:
    sweep = Sweep(
        name=str(data.get("name") or path.stem),
        base=str(base or task),
        task=task,
        overrides=_overrides(data.get("overrides"), problems),
        grid=_grid(data.get("grid"), problems),
        seeds=parse_seeds(data.get("seeds"), problems),
        source=str(path),
    )
    problems += _grid_key_problems(sweep)
    if problems:
        raise SweepError(str(path), problems)
    return sweep


def _overrides(value: Any, problems: list[str]) -> list[str]:
    if value is None:
        return []
    if isinstance(value, dict):
        return [f"{key}={value_text(item)}" for key, item in _dotted(value).items()]
    if isinstance(value, list) and all(
        isinstance(item, str) and ("=" in item or item.startswith("~")) for item in value
    ):
        return list(value)
    problems.append(f"overrides: expected a mapping of keys to values or a list of key=value, got {value!r}")
    return []


def _dotted(mapping: dict, prefix: str = "") -> dict[str, Any]:
    """``{train: {lr: 1}}`` and ``{train.lr: 1}`` both give ``{"train.lr": 1}``."""
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _grid(value: Any, problems: list[str]) -> dict[str, list[Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"grid: expected a mapping of keys to lists of values, got {value!r}")
        return {}
    grid = {}
    for key, values in _dotted(value).items():
        if not isinstance(values, list) or not values:
            problems.append(
                f"grid.{key}: expected a non-empty list of values, got {values!r} (a single value belongs in overrides)"
            )
            continue
        grid[key] = values
    return grid


def parse_seeds(value: Any, problems: list[str]) -> list[int] | None:
    """``seeds``: a count N (seeds 0..N-1), a list of ints, or None (the recipe's own seed)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        return list(value)
    problems.append(f"seeds: expected a positive count or a non-empty list of integers, got {value!r}")
    return None


def value_text(value: Any) -> str:
    """A grid or override value as a command line writes it (JSON is valid YAML for lists, null, floats)."""
    return value if isinstance(value, str) else json.dumps(value)


# --- planning: expand and validate everything before anything runs ------------------------------------


def sweep_dir(root: str | Path, name: str) -> Path:
    return Path(root) / f"sweep-{name}"


def plan(sweep: Sweep, registry, root: str | Path = "runs", allow_devices: bool = False) -> list[Child]:
    """Every child of the sweep with its validated recipe; raise one SweepError listing every problem.

    ``allow_devices``: children may use several devices (a cluster launcher gives each its own machine)."""
    problems = _grid_key_problems(sweep)
    by_problem: dict[str, list[str]] = {}
    children: list[Child] = []
    configurations = list(_configurations(sweep.grid))
    _check_labels(configurations, problems)
    seeds: list[int | None] = [*sweep.seeds] if sweep.seeds else [None]  # None: the recipe's own seed
    for label, assignment in configurations:
        for seed in seeds:
            try:
                children.append(_child(sweep, registry, root, label, assignment, seed, allow_devices))
            except MolbridgeError as exc:
                for problem in exc.problems if isinstance(exc, (RecipeError, SweepError)) else [str(exc)]:
                    configs = by_problem.setdefault(_sweep_terms(problem, sweep, assignment), [])
                    if label not in configs:
                        configs.append(label)
    for problem, configs in by_problem.items():
        where = "every configuration" if len(configs) == len(configurations) > 1 else ", ".join(configs)
        problems.append(f"{problem} [in {where}]")
    if children and not problems:
        problems += _definition_problems(sweep, root) + _consistency_problems(children)
    if problems:
        raise SweepError(sweep.source if sweep.source != "command line" else sweep.name, problems)
    return children


def _sweep_terms(problem: str, sweep: Sweep, assignment: Mapping[str, Any]) -> str:
    """Say where a setting came from in the sweep's terms (load_recipe calls it all "command line"),
    so that one bad grid key is one problem, not one per value."""
    for key, value in assignment.items():
        said = f"--{key} {value}" if key in COMPONENTS else f"'{key}={value_text(value)}'"
        problem = problem.replace(f"command line {said}", f"grid {key}")
    if sweep.source != "command line":
        for item in sweep.overrides:
            problem = problem.replace(f"command line '{item}'", f"overrides '{item}'")
    return problem


def _grid_key_problems(sweep: Sweep) -> list[str]:
    problems = (
        []
        if FOLDER_NAME.fullmatch(sweep.name)
        else [f"name: '{sweep.name}' names a folder; use letters, digits and _ . + = - only"]
    )
    keys = [key for key in sweep.grid] + [item.split("=", 1)[0] for item in sweep.overrides]
    problems += [f"{key}: set by the sweep ({RESERVED[key]})" for key in dict.fromkeys(keys) if key in RESERVED]
    for key, values in sweep.grid.items():
        texts = [value_text(v) for v in values]
        problems += [f"grid.{key}: {text!r} is listed twice" for text in dict.fromkeys(texts) if texts.count(text) > 1]
    return problems


def _configurations(grid: Mapping[str, list[Any]]):
    """(label, {key: value}) for each point of the grid, in the order the grid lists keys and values."""
    for values in itertools.product(*grid.values()):
        assignment = dict(zip(grid, values, strict=True))
        yield _label(assignment), assignment


def _label(assignment: Mapping[str, Any]) -> str:
    """``unimol-qformer-lr0.0001``: component names as they are, other keys by their last part."""
    leaves = [key.rpartition(".")[2] for key in assignment]
    parts = []
    for key, value in assignment.items():
        leaf = key.rpartition(".")[2]
        name = key if leaves.count(leaf) > 1 else leaf  # e.g. task.hidden and projector.hidden: keep both
        parts.append(value_text(value) if key in COMPONENTS else f"{name}{value_text(value)}")
    return re.sub(r"[^A-Za-z0-9_.+=-]", "_", "-".join(parts)) or "base"  # a folder name and an MLflow filter value


def _check_labels(configurations: list[tuple[str, dict]], problems: list[str]) -> None:
    seen: dict[str, dict] = {}
    for label, assignment in configurations:
        if label in seen:
            problems.append(
                f"configurations {seen[label]} and {assignment} would share the folder name "
                f"'{label}'; make the values differ in more than punctuation"
            )
        seen.setdefault(label, assignment)


def _child(
    sweep: Sweep, registry, root, label: str, assignment: dict[str, Any], seed: int | None, allow_devices: bool
) -> Child:
    components = {kind: str(assignment[kind]) for kind in COMPONENTS if kind in assignment}
    overrides = sweep.overrides + [
        f"{key}={value_text(value)}" for key, value in assignment.items() if key not in COMPONENTS
    ]
    overrides += [f"seed={seed}"] if seed is not None else []
    recipe = load_recipe(sweep.base, overrides, registry, components)
    if sweep.task and recipe.task.name != sweep.task:
        raise SweepError(sweep.name, [f"the recipe {sweep.base} is for task '{recipe.task.name}', not '{sweep.task}'"])
    train = recipe.train
    if not allow_devices and ((isinstance(train.devices, int) and train.devices > 1) or train.num_nodes > 1):
        raise SweepError(
            sweep.name,
            [
                f"train.devices={train.devices}, train.num_nodes={train.num_nodes}: local children share this "
                f"machine; run multi-device children with --launcher submitit (a machine each) or bench run"
            ],
        )
    output_dir = sweep_dir(root, sweep.name) / identify(recipe, registry).name
    OmegaConf.update(recipe, "output_dir", str(output_dir))
    definition = {"sweep": sweep.name, "recipe": sweep.base, "components": components, "overrides": overrides}
    return Child(label, int(recipe.seed), assignment, recipe, output_dir, definition)


def _consistency_problems(children: list[Child]) -> list[str]:
    problems = _same_run_problems(children)
    stores = {(c.recipe.tracking.enabled, tracking_uri_of(c.recipe)) for c in children}
    if len(stores) > 1:
        problems.append(
            f"tracking.enabled/tracking.uri differ between configurations ({sorted(stores, key=str)}); "
            f"a sweep logs to one MLflow store"
        )
    for child in children:
        recorded = _read_json(child.output_dir / CHILD_FILE)
        if recorded is not None and _defining(recorded) != _defining(child.definition):
            problems.append(
                f"{child.key}: {child.output_dir} was run with other settings "
                f"({_difference(recorded, child.definition)}); give the sweep another name, "
                f"or delete that folder to redo it"
            )
    return problems


def _definition_problems(sweep: Sweep, root: str | Path) -> list[str]:
    """A sweep is one definition: rerunning it may add grid values or seeds, but not change its recipe or
    overrides (its earlier children would then be a different experiment under the same parent run)."""
    recorded = _read_json(sweep_dir(root, sweep.name) / SWEEP_FILE, strict=False)
    if not recorded:
        return []
    now = {"recipe": sweep.base, "overrides": sweep.overrides}
    was = {key: recorded.get(key) for key in now}
    if _defining(was) == _defining(now):
        return []
    return [
        f"sweep {sweep.name} was run with other settings ({_difference(was, now)}); give the sweep another name, "
        f"or delete {sweep_dir(root, sweep.name)} to redo it"
    ]


def _defining(definition: Mapping[str, Any]) -> dict[str, Any]:
    """A definition without the overrides that change no result (how often children log or save, data workers):
    an interrupted sweep may be resumed with ``train.checkpoint_every=200`` and stay one experiment."""
    overrides = definition.get("overrides") or []
    kept = [item for item in overrides if not matches(str(item).split("=", 1)[0].lstrip("~"), NO_EFFECT)]
    return {**definition, "overrides": kept}


def _same_run_problems(children: list[Child]) -> list[str]:
    """Grid points with one identity would share a folder and a run: each pair is a problem naming the keys that
    make them differ (settings that do not change a result, so the grid over them measures nothing)."""
    by_folder: dict[Path, list[Child]] = {}
    for child in children:
        by_folder.setdefault(child.output_dir, []).append(child)
    problems = []
    for folder, same in by_folder.items():
        if len(same) > 1:
            first, *others = same
            for other in others:
                keys = sorted(k for k in first.assignment if first.assignment[k] != other.assignment.get(k))
                problems.append(
                    f"grid points {first.assignment} and {other.assignment} (seed {first.seed}) are the same run "
                    f"({folder.name}): {', '.join(keys)} does not change a run's result (see molbridge.core.identity), "
                    f"so it cannot be a grid key"
                )
    return problems


def _difference(old: dict, new: dict) -> str:
    changed = [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in new if old.get(key) != new.get(key)]
    return "; ".join(changed)


def tracking_uri_of(recipe: DictConfig) -> str:
    return tracking.tracking_uri(recipe.tracking.uri)


# --- MLflow: the parent run and its children -----------------------------------------------------------


class NullParent:
    """Tracking switched off: children carry no parent tags and failures are only in sweep.json."""

    run_id: str | None = None
    experiment: str | None = None

    def child_tags(self, child: Child, invocation: str) -> dict[str, str]:
        return {}

    def record_failure(self, child: Child, invocation: str, error: str, registry) -> str | None:
        return None

    def finish(self, status: str, summary_file: Path) -> None: ...


class ParentRun(NullParent):
    """The sweep's MLflow run; children point at it with MLflow's ``mlflow.parentRunId`` tag."""

    def __init__(self, sweep: Sweep, children: list[Child], folder: Path):
        first = children[0].recipe
        self.uri = tracking_uri_of(first)
        self.client = tracking.client_for(self.uri)
        self.experiment = experiment_name(first)
        tags = _parent_tags(sweep, children)
        id_file = folder / tracking.RUN_ID_FILE  # as in a run's own folder
        self.run_id = self._reopen(id_file.read_text().strip(), tags) if id_file.is_file() else None
        if self.run_id is None:
            experiment_id = tracking.experiment_id(self.client, self.experiment, self.uri)
            with tracking.store_lock(self.uri):
                run = self.client.create_run(experiment_id, run_name=f"sweep-{sweep.name}", tags=tags)
            self.run_id = run.info.run_id
            id_file.write_text(self.run_id + "\n")

    def _reopen(self, run_id: str, tags: dict[str, str]) -> str | None:
        from mlflow.entities import RunTag
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException:
            log.warning("the sweep's parent run %s is not in this MLflow store; starting a new one", run_id)
            return None
        with tracking.store_lock(self.uri):
            self.client.update_run(run_id, status="RUNNING")
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])  # the grid may have grown
        return run_id

    def child_tags(self, child: Child, invocation: str) -> dict[str, str]:
        return {
            "mlflow.parentRunId": self.run_id,
            "sweep.name": child.definition["sweep"],
            "sweep.config": child.config,
            "sweep.child": child.key,
            "sweep.invocation": invocation,
        }

    def record_failure(self, child: Child, invocation: str, error: str, registry) -> str:
        """Tag the failed child's run with its error; create a FAILED run when it failed before opening one."""
        experiment_id = tracking.experiment_id(self.client, experiment_name(child.recipe), self.uri)
        found = self.client.search_runs(
            [experiment_id],
            max_results=1,
            filter_string=(f"tags.`sweep.child` = '{child.key}' and tags.`sweep.invocation` = '{invocation}'"),
        )
        with tracking.store_lock(self.uri):
            if found:
                run_id = found[0].info.run_id
            else:
                tags = tracking.run_tags(child.recipe, registry) | self.child_tags(child, invocation)
                run_id = self.client.create_run(experiment_id, run_name=child.output_dir.name, tags=tags).info.run_id
            self.client.set_tag(run_id, "error", error[: tracking.MAX_TAG_LENGTH])
            self.client.set_terminated(run_id, status="FAILED")
        return run_id

    def finish(self, status: str, summary_file: Path) -> None:
        with tracking.store_lock(self.uri):
            self.client.log_artifact(self.run_id, str(summary_file))
            self.client.set_terminated(self.run_id, status=status)


def _parent_tags(sweep: Sweep, children: list[Child]) -> dict[str, str]:
    first = children[0].recipe
    return {
        "sweep.name": sweep.name,
        "sweep.recipe": sweep.base,
        "sweep.grid": json.dumps(sweep.grid),
        "sweep.seeds": json.dumps(sorted({c.seed for c in children})),
        "sweep.overrides": json.dumps(sweep.overrides),
        "sweep.children": str(len(children)),
        "task": first.task.name,
        "dataset": first.data.name,
    }


# --- running ---------------------------------------------------------------------------------------------


def run_sweep(
    sweep: Sweep,
    registry,
    *,
    root: str | Path = "runs",
    callbacks: Sequence = (),
    jobs: int = 1,
    launcher: str = "local",
    launcher_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Plan (validate all), then run every child not yet completed; write and return ``sweep.json``'s content.

    ``jobs`` > 1 runs that many children at once in worker processes, the cores divided between them (on a
    machine with several GPUs, each worker gets one); ``launcher="submitit"`` hands the children to submitit
    (SLURM on a cluster, local processes elsewhere) with ``launcher_options`` as its parameters.
    ``status`` is ``completed`` (every child completed, now or earlier), ``failed`` (some raised; the
    others ran) or ``interrupted`` (Ctrl-C: running children saved a checkpoint; the rest did not start).
    """
    if (jobs > 1 or launcher != "local") and callbacks:
        raise SweepError(sweep.name, ["callbacks run in this process only: use jobs=1 with the local launcher"])
    if jobs > 1 and launcher == "local":
        launch.preload(jobs, registry)  # the workers' imports overlap planning and the MLflow parent run
    children = plan(sweep, registry, root, allow_devices=launcher != "local")
    folder = sweep_dir(root, sweep.name)
    folder.mkdir(parents=True, exist_ok=True)
    parent = ParentRun(sweep, children, folder) if children[0].recipe.tracking.enabled else NullParent()
    state = _initial_state(sweep, children, parent)
    summary_file = folder / SWEEP_FILE
    invocation = uuid.uuid4().hex

    def record(index: int, entry: dict[str, Any]) -> None:
        state["children"][index] = entry
        log.info("[sweep %s %d/%d] %s", sweep.name, index + 1, len(children), progress_line(entry))
        _write_json(summary_file, state)

    try:
        if launcher == "submitit":
            launch.run_submitit(children, parent, invocation, folder, registry, record, launcher_options or {})
        elif jobs > 1:
            launch.run_parallel(children, parent, invocation, jobs, registry, record)
        else:
            _run_in_turn(children, parent, invocation, registry, callbacks, record)
    except KeyboardInterrupt:  # a second Ctrl-C: record what is known, then stop
        for entry in state["children"]:
            entry["status"] = "interrupted" if entry["status"] in ("pending", "running") else entry["status"]
        _finish(state, parent, summary_file, forced="interrupted")
        raise
    return _finish(state, parent, summary_file)


def _run_in_turn(children, parent, invocation, registry, callbacks, record) -> None:
    for index, child in enumerate(children):
        entry = attempt(child, registry, parent, invocation, callbacks)
        record(index, entry)
        if entry["status"] == "interrupted":
            break


def _initial_state(sweep: Sweep, children: list[Child], parent: NullParent) -> dict[str, Any]:
    return {
        "name": sweep.name,
        "source": sweep.source,
        "recipe": sweep.base,
        "task": children[0].recipe.task.name,
        "overrides": sweep.overrides,
        "grid": sweep.grid,
        "seeds": sorted({c.seed for c in children}),
        "status": "running",
        "parent_run_id": parent.run_id,
        "experiment": parent.experiment,
        "tracking_uri": tracking_uri_of(children[0].recipe) if parent.run_id else None,
        "children": [_record(child, "pending") for child in children],
    }


def attempt(child: Child, registry, parent: NullParent, invocation: str, callbacks: Sequence = ()) -> dict[str, Any]:
    """Run one child here (or skip it when its folder holds it completed) and return its record."""
    done = completed_metrics(child.output_dir)
    if done is not None:
        return _record(child, "skipped", done)
    log.info("sweep child %s: running in %s", child.key, child.output_dir)
    prepare_child(child)
    started = time.time()
    result, error, trace = run_child(
        child.recipe, registry, child.output_dir, parent.child_tags(child, invocation), callbacks
    )
    return finish_child(child, registry, parent, invocation, result, error, trace, time.time() - started)


def prepare_child(child: Child) -> None:
    child.output_dir.mkdir(parents=True, exist_ok=True)
    _write_json(child.output_dir / CHILD_FILE, child.definition)


#: What one child's run gives: (result, None, None) or (None, error, traceback).
ChildOutcome = tuple[dict[str, Any] | None, str | None, str | None]


def run_child(recipe, registry, output_dir: Path, tags: Mapping[str, str], callbacks: Sequence = ()) -> ChildOutcome:
    """(result, None, None) or (None, error, traceback): whatever one child raises, the others still run."""
    from molbridge.core.runner import run  # lazy: torch and Lightning take seconds to import

    try:
        return run(recipe, registry, output=output_dir, callbacks=callbacks, tracking_tags=tags), None, None
    except Exception as exc:  # noqa: BLE001 - one child's failure is recorded, not raised
        log.debug("%s failed", output_dir, exc_info=True)
        return None, f"{type(exc).__name__}: {exc}", traceback.format_exc()


def finish_child(child, registry, parent, invocation, result, error, trace, seconds: float) -> dict[str, Any]:
    """The child's record from what its run returned (the parent records a failure in MLflow)."""
    if error is not None:
        entry = _record(child, "failed", error=error, trace=trace)
        entry["run_id"] = parent.record_failure(child, invocation, error, registry)
    else:
        entry = _record(child, result["status"], result)
    entry["wall_time_s"] = round(seconds, 3)
    return entry


def completed_metrics(folder: Path) -> dict[str, Any] | None:
    """The child's metrics.json if it says the run completed, else None (not run, interrupted or unreadable)."""
    from molbridge.core.runner import METRICS_FILE

    metrics = _read_json(folder / METRICS_FILE, strict=False)
    return metrics if metrics and metrics.get("status") == "completed" else None


def _record(
    child: Child,
    status: str,
    result: Mapping[str, Any] | None = None,
    error: str | None = None,
    trace: str | None = None,
) -> dict[str, Any]:
    result = result or {}
    return {
        "key": child.key,
        "config": child.config,
        "seed": child.seed,
        "assignment": child.assignment,
        "status": status,
        "output_dir": str(child.output_dir),
        "run_id": result.get("tracking_run_id"),
        "monitor": monitor_metric(result),
        "metrics": result.get("metrics", {}),
        "best": result.get("best"),
        "error": error,
        "traceback": trace,
        "command": reproduce_command(child),
    }


def monitor_metric(result: Mapping[str, Any]) -> dict[str, Any] | None:
    """The task's monitored metric on the final split (``best`` names it: ``valid/NAME``)."""
    best, split = result.get("best"), result.get("evaluated_split")
    if not best or not split:
        return None
    name = f"{split}/{best['metric'].split('/', 1)[1]}"
    value = result.get("metrics", {}).get(name)
    return None if value is None else {"name": name, "value": value}


def reproduce_command(child: Child) -> str:
    """The ``bench run`` command line that runs this child alone."""
    words = ["bench", "run", child.recipe.task.name, "--recipe", child.definition["recipe"]]
    words += [word for kind, name in child.definition["components"].items() for word in (f"--{kind}", name)]
    words += child.definition["overrides"] + [f"output_dir={child.output_dir}"]
    return shlex.join(words)


def _finish(state: dict[str, Any], parent: NullParent, summary_file: Path, forced: str | None = None) -> dict:
    statuses = [c["status"] for c in state["children"]]
    state["status"] = forced or (
        "failed"
        if "failed" in statuses
        else "completed"
        if all(s in ("completed", "skipped") for s in statuses)
        else "interrupted"
    )
    state["failures"] = [c["key"] for c in state["children"] if c["status"] == "failed"]
    _write_json(summary_file, state)
    parent.finish({"completed": "FINISHED", "failed": "FAILED"}.get(state["status"], "KILLED"), summary_file)
    state["path"] = str(summary_file.resolve())
    return state


# --- reporting ------------------------------------------------------------------------------------------


def progress_line(record: Mapping[str, Any]) -> str:
    """``key: status, metric=value (wall time)`` or the error of a failed child."""
    text = f"{record['key']}: {record['status']}"
    if record.get("monitor"):
        text += f", {record['monitor']['name']}={record['monitor']['value']:.4g}"
    if record.get("wall_time_s") is not None:
        text += f" ({record['wall_time_s']:.1f} s)"
    if record.get("error"):
        text += f": {one_line(record['error'])}"
    return text


def one_line(error: str, limit: int = 300) -> str:
    """A multi-line error (e.g. a RecipeError's list of problems) on one line, shortened."""
    text = " ".join(line.strip() for line in error.splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def summary_table(state: Mapping[str, Any]) -> str:
    """Markdown: configuration, seed, status and the monitored metric; failures listed below."""
    children = state["children"]
    names = {c["monitor"]["name"] for c in children if c.get("monitor")}
    header = names.pop() if len(names) == 1 else "monitor"
    lines = [f"| configuration | seed | status | {header} |", "|---|---|---|---|"]
    for child in children:
        monitor = child.get("monitor")
        cell = (
            ""
            if not monitor
            else (f"{monitor['value']:.4f}" if header != "monitor" else f"{monitor['name']} {monitor['value']:.4f}")
        )
        lines.append(f"| {child['config']} | {child['seed']} | {child['status']} | {cell} |")
    failed = [c for c in children if c["status"] == "failed"]
    if failed:
        lines += ["", f"{len(failed)} failed:"]
        lines += [f"  {c['key']}: {one_line(c['error'])}" for c in failed]
    return "\n".join(lines)


# --- files ----------------------------------------------------------------------------------------------


def _read_json(path: Path, strict: bool = True) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        if strict:
            raise MolbridgeError(f"{path} is not readable JSON ({exc}); delete it to redo that child") from exc
        log.warning("%s is not readable JSON (%s); the child runs again", path, exc)
        return None


def _write_json(path: Path, content: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=2, default=str) + "\n")
    tmp.replace(path)
