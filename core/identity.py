"""Run identity: which configuration a run is, so two configurations never share a name, folder or resume.

A run is identified by its full resolved recipe. Its name is readable and carries a short stable hash of
every setting that differs from the task's packaged recipe (schema defaults when the task has none):

    unimol-qformer-none-s0-3f9c2a     {encoder}-{projector}-{llm}-s{seed}-{hash}

The hash leaves out the seed (it is in the name, so the seeds of one configuration share the hash), and
settings that cannot change a result: where a run goes and how it is watched (:data:`NOT_IDENTITY`) and
how often it logs or saves (:data:`NO_EFFECT`). The output folder is ``runs/{experiment}/{name}``, so
``train.lr=0.01`` and ``train.lr=0.5``, or 100 and 200 steps, are two runs in two folders. When a folder is
resumed, its stored recipe is compared key by key with the current one (:func:`resume_conflicts`): only
the settings of :data:`RESUMABLE` may differ (e.g. more steps for a folder named explicitly with
``output_dir``); anything else refuses the resume, naming every setting.

Stage chaining: ``train.init_from: stage:RECIPE`` (optionally ``stage:RECIPE@DIR``) names the previous
stage by its recipe; :func:`resolve_stage` finds the completed run of that recipe with the same
components, dataset and seed under ``runs/`` (or DIR), and refuses when there is none or more than one.
The weights a run starts from are part of its identity, not the words that named them
(:func:`init_identity`): ``stage:pretrain`` and that run's folder are one configuration, and a previous
stage trained further, or another run in its place, makes a new one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from molbridge.core.errors import MolbridgeError
from molbridge.core.recipe import flatten, packaged_recipes, read_yaml, to_yaml

log = logging.getLogger(__name__)

#: Settings that name where a run goes or how it is watched, never what it computes; and the per_component table,
#: whose settings for the run's own components are already in their sections.
NOT_IDENTITY = ("recipe", "description", "output_dir", "tracking.", "train.resume", "per_component", "per_component.")
#: Settings that say how often a run logs or saves, or how it loads data: results are identical (exact resume).
NO_EFFECT = ("train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "data.num_workers")
#: Settings a resumed run may change (the loop continues where it stopped): those above, the length, evaluation.
RESUMABLE = (*NO_EFFECT, "train.max_steps", "train.eval_every")
#: Settings that differ between runs of one configuration: the seed (in the name, not the hash) and those above.
NOT_CONFIGURATION = ("seed", *NOT_IDENTITY, *NO_EFFECT)
COMPONENT_KINDS = ("encoder", "projector", "llm")
RUN_FILE = "run.json"
RUN_RECIPE = "recipe.yaml"
STAGE_PREFIX = "stage:"
INIT_KEY = "train.init_from"
HASH_LENGTH = 6


def matches(key: str, prefixes: tuple[str, ...]) -> bool:
    """``key`` is one of ``prefixes`` or under one ending in a dot (``tracking.`` holds ``tracking.uri``)."""
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in prefixes)


def identity_settings(recipe: DictConfig | Mapping) -> dict[str, Any]:
    """Every setting of ``recipe`` that can change a result, flattened (``train.lr``...), seed excluded."""
    return {key: value for key, value in flatten(recipe).items() if not matches(key, NOT_CONFIGURATION)}


def base_recipe(recipe: DictConfig, registry) -> DictConfig:
    """What the hash is taken relative to: the task's packaged recipe, else the schema defaults."""
    from molbridge.core.recipe import load_recipe, validate

    task = recipe.task.name
    if task in packaged_recipes():
        return load_recipe(task, registry=registry)
    return validate({"task": {"name": task}}, registry, source=f"defaults of task '{task}'")


def differences(recipe: DictConfig, base: DictConfig) -> dict[str, Any]:
    """Identity settings of ``recipe`` whose value differs from ``base`` (or that ``base`` lacks)."""
    mine, theirs = identity_settings(recipe), identity_settings(base)
    missing = object()
    return {k: v for k, v in sorted(mine.items()) if theirs.get(k, missing) != v}


def config_hash(diff: Mapping[str, Any]) -> str:
    """Six hex digits of SHA-256 over the sorted differences: stable across processes and machines."""
    text = json.dumps(sorted(diff.items()), default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


@dataclass(frozen=True)
class Identity:
    """A run's configuration: its hash, what differs from the packaged recipe, and its name."""

    hash: str
    diff: dict[str, Any]
    name: str

    def record(self, recipe: DictConfig) -> dict[str, Any]:
        """The content of ``run.json`` in the run's folder (what :func:`resolve_stage` searches)."""
        return {
            "name": self.name,
            "config_hash": self.hash,
            "differences": {k: _jsonable(v) for k, v in self.diff.items()},
            "recipe": recipe.recipe,
            "task": recipe.task.name,
            "seed": recipe.seed,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except TypeError:
        return str(value)
    return value


def component_name(recipe: DictConfig, kind: str) -> str:
    section = recipe.get(kind)
    return section.name if section is not None else "none"


def identify(recipe: DictConfig, registry) -> Identity:
    """The identity of ``recipe``: the hash of its differences from the task's packaged recipe, and its name
    (``tracking.run_name`` when the recipe sets one, else ``{encoder}-{projector}-{llm}-s{seed}-{hash}``).
    ``train.init_from`` enters as the weights it resolves to (:func:`init_identity`)."""
    diff = differences(recipe, base_recipe(recipe, registry))
    if recipe.train.init_from:
        diff[INIT_KEY] = _init_for_identity(recipe)
    digest = config_hash(diff)
    parts = [component_name(recipe, kind) for kind in COMPONENT_KINDS]
    name = recipe.tracking.run_name or "-".join([*parts, f"s{recipe.seed}", digest])
    return Identity(digest, diff, name)


def experiment_name(recipe: DictConfig) -> str:
    """One MLflow experiment per task and dataset, unless the recipe names one."""
    return recipe.tracking.experiment or f"{recipe.task.name}-{_folder_safe(recipe.data.name)}"


def _folder_safe(name: str) -> str:
    """A dataset given as a directory contributes its last part (``/data/chebi20`` -> ``chebi20``)."""
    return Path(str(name)).name or str(name)


def output_dir(recipe: DictConfig, identity: Identity) -> Path:
    """Checkpoints and metrics.json: the recipe's ``output_dir``, else ``runs/{experiment}/{name}``."""
    return Path(recipe.output_dir or Path("runs") / experiment_name(recipe) / identity.name)


# --- resume ------------------------------------------------------------------------------------------------


def resume_conflicts(stored: DictConfig | Mapping, current: DictConfig | Mapping, same_init: bool = False) -> list[str]:
    """``key: stored -> current`` for every setting that differs and may not change on resume.

    A key the stored recipe lacks came with a newer molbridge (its default keeps the old behaviour): it is not a
    conflict, and a warning names it. ``same_init``: ``train.init_from`` is spelled otherwise but names the same
    weights (:func:`same_init`), which is no conflict either."""
    old, new = flatten(stored), flatten(current)
    if same_init:
        old.pop(INIT_KEY, None)
        new.pop(INIT_KEY, None)
    added = sorted(k for k in set(new) - set(old) if not matches(k, NOT_IDENTITY + RESUMABLE))
    if added:
        log.warning("settings new since this run was started (not compared): %s", ", ".join(added))
    absent = "<absent>"
    return [
        f"{key}: {old.get(key, absent)!r} (stored) -> {new.get(key, absent)!r} (now)"
        for key in sorted(old)
        if not matches(key, NOT_IDENTITY + RESUMABLE) and old[key] != new.get(key, absent)
    ]


def same_init(folder: Path, identity: Identity) -> bool:
    """The run in ``folder`` started from the weights ``identity`` starts from (its ``run.json`` says so)."""
    record = _read_json(Path(folder) / RUN_FILE) or {}
    stored = (record.get("differences") or {}).get(INIT_KEY)
    return stored is not None and stored == identity.diff.get(INIT_KEY)


def resumable_changes(stored: DictConfig | Mapping, current: DictConfig | Mapping) -> dict[str, list[Any]]:
    """Allowed settings that differ: ``{key: [stored, current]}`` (recorded with the resumed run)."""
    old, new = flatten(stored), flatten(current)
    return {
        k: [old.get(k), new.get(k)]
        for k in sorted(set(old) | set(new))
        if matches(k, RESUMABLE) and old.get(k) != new.get(k)
    }


def write_run_files(folder: Path, recipe: DictConfig, identity: Identity) -> None:
    """``run.json`` (identity) and ``recipe.yaml`` (resolved recipe) at the top of a run's folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUN_FILE).write_text(json.dumps(identity.record(recipe), indent=2) + "\n")
    (folder / RUN_RECIPE).write_text(to_yaml(recipe))


def stored_recipe(folder: Path) -> DictConfig | None:
    """The resolved recipe a run folder was started with (``recipe.yaml``; plain YAML, never unpickled)."""
    path = Path(folder) / RUN_RECIPE
    return read_yaml(path) if path.is_file() else None


# --- stage chaining ------------------------------------------------------------------------------------------


def is_stage_reference(value: str | None) -> bool:
    return bool(value) and str(value).startswith(STAGE_PREFIX)


def stage_differences(recipe: DictConfig, other: DictConfig) -> list[str]:
    """Why ``other`` (a previous stage's recipe) cannot be the previous stage of ``recipe``: another seed or
    dataset, or another component of a kind both use. Empty if it can be."""
    reasons = []
    for key in ("seed", "data.name"):  # not data.split: phases of the paper's chain read different subsets
        mine, theirs = OmegaConf.select(recipe, key), OmegaConf.select(other, key)
        if mine != theirs:
            reasons.append(f"{key} {theirs!r} != {mine!r}")
    for kind in COMPONENT_KINDS:
        if other.get(kind) is not None and recipe.get(kind) is not None and other[kind].name != recipe[kind].name:
            reasons.append(f"{kind} '{other[kind].name}' != '{recipe[kind].name}'")
    return reasons


def same_sections(recipe: DictConfig, other: DictConfig) -> bool:
    """Every component section both recipes have is identical (presets, widths, generation settings...)."""
    return all(
        flatten(recipe[kind]) == flatten(other[kind])
        for kind in COMPONENT_KINDS
        if other.get(kind) is not None and recipe.get(kind) is not None
    )


def resolve_stage(spec: str, recipe: DictConfig, root: str | Path = "runs") -> Path:
    """The completed run folder that ``train.init_from: stage:RECIPE[@DIR]`` names for ``recipe``.

    Candidates are run folders under DIR (default ``runs/``) whose ``run.json`` says they ran recipe RECIPE
    and whose ``metrics.json`` says they completed. The previous stage has this run's seed, dataset and
    components (for each kind both stages use; the split may differ, as between the paper's pretraining and
    fine-tuning phases, and so may settings such as generation lengths). Among several, the one whose component
    sections are identical to this run's wins; none, or several still, is an error that lists what was found.
    Whether its weights fit is checked when they load (names and shapes).
    """
    target, _, where = spec[len(STAGE_PREFIX) :].partition("@")
    search = Path(where or root)
    found, rejected = [], []
    for run_file in sorted(search.glob("**/" + RUN_FILE)) if search.is_dir() else []:
        folder = run_file.parent
        record = _read_json(run_file)
        if record is None or record.get("recipe") != target:
            continue
        metrics = _read_json(folder / "metrics.json")
        other = stored_recipe(folder)
        if other is None or metrics is None or metrics.get("status") != "completed":
            rejected.append(f"{folder} (not completed)")
            continue
        reasons = stage_differences(recipe, other)
        (rejected.append(f"{folder} ({'; '.join(reasons)})") if reasons else found.append((folder, other)))
    if len(found) > 1:
        found = [pair for pair in found if same_sections(recipe, pair[1])] or found
    if len(found) == 1:
        return found[0][0]
    how = (
        f"bench run {recipe.task.name} ... needs the run of recipe '{target}' with the same seed, dataset and "
        f"components; "
    )
    if not found:
        seen = f" runs of '{target}' found but not matching: {'; '.join(rejected[:5])}." if rejected else ""
        raise MolbridgeError(
            f"train.init_from={spec}: no completed run of recipe '{target}' matches under {search}/.{seen} "
            f"{how}run that stage first (e.g. bench run {target} with the same --encoder/--projector/--llm, "
            f"seed and data), or set train.init_from to a run folder, or null to start from scratch"
        )
    listing = "; ".join(f"{f} ({(_read_json(f / RUN_FILE) or {}).get('differences', {})})" for f, _ in found)
    raise MolbridgeError(
        f"train.init_from={spec}: {len(found)} completed runs match ({listing}); {how}name one with "
        f"train.init_from=FOLDER, or narrow the search with stage:{target}@DIR"
    )


def init_identity(recipe: DictConfig) -> str:
    """What ``train.init_from`` starts ``recipe`` from, whatever words named it.

    A checkpoint of a molbridge run is that run's recipe, configuration hash, seed (``same seed`` when it is
    this run's, so the seeds of a stage chain stay one configuration) and step:
    ``pretrain 76b870 seed 0, step-002000``. Any other state file is the SHA-256 of its bytes. Raises when the
    weights are not there."""
    from molbridge.core.checkpoint import CHECKPOINTS, init_state_file

    spec = str(recipe.train.init_from)
    state = init_state_file(resolve_stage(spec, recipe) if is_stage_reference(spec) else spec)
    step = state.parent
    record = _read_json(step.parent.parent / RUN_FILE) if step.parent.name == CHECKPOINTS else None
    if record is None:
        stat = state.stat()
        return f"sha256 {_file_digest(state.resolve(), stat.st_size, stat.st_mtime_ns)}"
    seed = "same seed" if record.get("seed") == recipe.seed else f"seed {record.get('seed')}"
    return f"{record.get('recipe')} {record.get('config_hash')} {seed}, {step.name}"


def _init_for_identity(recipe: DictConfig) -> str:
    """:func:`init_identity`, or the words and ``(not found)`` while the weights are not there: a sweep lists its
    children before their previous stage has run, and a run fails on it before any set-up (the runner)."""
    try:
        return init_identity(recipe)
    except MolbridgeError:
        return f"{recipe.train.init_from} (not found)"


@functools.lru_cache(maxsize=64)  # a sweep identifies every child: read a large file once (keyed by size, mtime)
def _file_digest(path: Path, size: int, mtime_ns: int, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()[:16]


def _read_json(path: Path) -> dict | None:
    try:
        content = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None
