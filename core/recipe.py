"""Recipes: OmegaConf YAML files validated against structured (dataclass) schemas.

A recipe has fixed sections (``data``, ``train``, ``tracking``) and component sections
(``encoder``, ``projector``, ``llm``, ``task``) whose keys are validated against the schema the
named plugin registered. Validation runs in struct mode and collects every problem before it
raises one :class:`~molbridge.core.errors.RecipeError`: each problem names the key, where it came
from (file and line, or the command line) and the closest valid name.

``extends: NAME`` (a packaged recipe or a path relative to the file) merges the recipe over a base.
Overrides are ``key=value`` (OmegaConf dotlist, keys exactly as in :func:`flatten`) and ``~key``
(delete, falling back to the schema default, or to the profile's value).

``per_component: {KIND: {NAME: {key: value}}}`` holds settings for one component only: when the recipe runs
with component NAME of KIND (its own file or ``--encoder NAME``), they go into the KIND section, over the
recipe's section and under the command line (:func:`apply_per_component`).

``compat: NAME`` picks a protocol profile (:data:`PROFILES`): ``molbridge`` (the default: the schema
defaults, molbridge's fixes) or ``3d-molm`` (the reference code's choices, ``core/profiles/3d-molm.yaml``).
A profile is a table of ordinary recipe keys applied under the recipe: it fills every key the recipe
files and overrides leave unset, and never changes one they set (:func:`apply_profile`).
"""

import dataclasses
import importlib.resources
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import Container, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from molbridge.core.errors import RecipeError, suggest, unknown_name
from molbridge.core.registry import KINDS, ComponentConfig, Registry

PROFILES = ("molbridge", "3d-molm")  # compat: molbridge's defaults, or the 3D-MoLM reference's protocol
DEFAULT_PROFILE = "molbridge"
SPLIT_KINDS = ("scaffold", "random", "given", "given-described", "given-pretrain")  # see core/data/splits.py
LR_SCHEDULES = ("cosine", "cosine-per-epoch", "cosine-from-start")  # see TrainConfig.lr_schedule
Precision = Literal["32-true", "32", "64-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true"]
PRECISIONS: tuple[Precision, ...] = typing.get_args(Precision)  # the Lightning Fabric precisions a recipe may name
BOUNDS = {
    "ge": (">=", lambda v, b: v >= b),
    "gt": (">", lambda v, b: v > b),
    "le": ("<=", lambda v, b: v <= b),
    "lt": ("<", lambda v, b: v < b),
}


def bounded(default: Any = dataclasses.MISSING, *, ge=None, gt=None, le=None, lt=None, choices=None, **kwargs) -> Any:
    """A dataclass field with a valid range (and optionally choices) that recipe validation enforces.

    ``lr: float = bounded(1e-4, gt=0)``; ``dropout: float = bounded(0.1, ge=0, le=1)``. ``None`` values of
    optional fields are always accepted. Relations between fields belong in a schema method
    ``problems(self) -> list[str]``, which validation calls on the merged section.
    """
    limits = {name: bound for name, bound in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if bound is not None}
    metadata = dict(kwargs.pop("metadata", {})) | ({"bounds": limits} if limits else {})
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if default is not dataclasses.MISSING and "default_factory" not in kwargs:
        kwargs["default"] = default
    return field(metadata=metadata, **kwargs)


def out_of_bounds(value: Any, limits: dict[str, Any]) -> str | None:
    """``'must be >= 1'`` when ``value`` breaks a limit of :func:`bounded`, else None."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    broken = [f"{BOUNDS[name][0]} {bound}" for name, bound in limits.items() if not BOUNDS[name][1](value, bound)]
    return f"{value} is out of range: must be {' and '.join(broken)}" if broken else None


@dataclass
class DataConfig:
    name: str = "molbridge-mini"
    """A packaged dataset name or a directory written by ``bench data prepare``."""
    split: str = field(default="scaffold", metadata={"choices": SPLIT_KINDS})
    """Which stored split to train and evaluate on."""
    batch_size: int = bounded(32, ge=1)
    """Molecules per optimizer micro-step and per process."""
    eval_batch_size: int = bounded(64, ge=1)
    """Molecules per evaluation batch (64 is the paper's in-batch retrieval size)."""
    num_workers: int = bounded(0, ge=0)
    """Data-loader worker processes."""
    limit: int | None = bounded(None, ge=1)
    """Use only the first N training molecules (quick experiments); evaluation splits are untouched."""
    eval_limit: int | None = bounded(None, ge=1)
    """Evaluate on only the first N molecules of each evaluation split (smoke tests; not for results)."""
    augment: bool = True
    """Training draws a seeded random conformer per molecule and epoch; evaluation always uses conformer 0."""
    cache: bool = True
    """Keep what frozen parts compute (a locked text tower's text states, a frozen encoder's outputs, the fingerprint
    baseline's fit) on disk, keyed by a digest of the weights and of each input, and reuse it across runs, seeds and
    sweep children (``bench cache info``). A changed weight or input is another key: nothing stale is ever read."""
    bucketing: bool = False
    """Training batches of molecules of similar size (each epoch still a seeded shuffle; exact resume kept): less
    padding, so less wasted work in Uni-Mol's pair layers. Off by default: it changes which molecules share a
    batch (contrastive negatives), so it is another experiment."""


@dataclass
class TrainConfig:
    max_steps: int = bounded(1000, ge=1)
    """Optimizer steps (each of ``grad_accum`` micro-batches)."""
    lr: float = bounded(1e-4, gt=0)
    """Peak learning rate (AdamW)."""
    min_lr: float = bounded(5e-6, ge=0)
    """Learning rate at the end of the cosine schedule."""
    warmup_steps: int = bounded(0, ge=0)
    """Linear warm-up steps from ``warmup_start_lr`` to ``lr``."""
    warmup_start_lr: float = bounded(0.0, ge=0)
    """Learning rate the warm-up starts from (3D-MoLM: 1e-6, its ``--warmup_lr``)."""
    lr_schedule: str = field(default="cosine", metadata={"choices": LR_SCHEDULES})
    """``cosine``: warm-up (step + 1) / warmup_steps of the way, then cosine over the remaining steps to
    ``min_lr``, stepped every optimizer step. ``cosine-per-epoch`` (LAVIS's LinearWarmupCosineLRScheduler,
    3D-MoLM stages 1-2): in epoch 0 warm-up step / warmup_steps of the way (warm-up capped at one epoch,
    then flat), from epoch e >= 1 cosine by e / epochs, constant within an epoch. ``cosine-from-start``
    (3D-MoLM stage 3): warm-up step / warmup_steps of the way, then cosine by step / max_steps, the
    warm-up steps included. Epochs are ``data.batch_size`` micro-batches x processes over the training set."""
    weight_decay: float = bounded(0.05, ge=0)
    """AdamW weight decay, on the parameters ``weight_decay_scope`` names."""
    weight_decay_scope: str = field(default="matrices", metadata={"choices": ("matrices", "all")})
    """``matrices``: no decay on biases and norm weights (the 1-D parameters); ``all``: decay on every
    trainable parameter (3D-MoLM: ``AdamW(self.parameters(), weight_decay=...)``)."""
    grad_accum: int = bounded(1, ge=1)
    """Micro-batches per optimizer step; gradients are synchronised on the last one only."""
    grad_clip: float | None = bounded(1.0, gt=0)
    """Clip the gradient norm to this value; null disables clipping."""
    trainable: list[str] = field(default_factory=lambda: ["*"])
    """Glob patterns over parameter names that train; every other parameter is frozen."""
    frozen: list[str] = field(default_factory=list)
    """Glob patterns frozen even when ``trainable`` matches them."""
    lr_scale: dict[str, float] = field(default_factory=dict)
    """Learning-rate factors by glob over parameter names, e.g. ``{"projector.*": 0.1}``: a parameter trains at
    ``lr`` (and ``min_lr``, and every step of the schedule) times the factor of the first pattern it matches,
    others at 1. A pattern that matches no trainable parameter is an error."""
    eval_every: int = bounded(0, ge=0)
    """Evaluate on the validation split every N steps (0: at the end only)."""
    checkpoint_every: int = bounded(0, ge=0)
    """Save a checkpoint every N steps (0: at the end only)."""
    keep_checkpoints: int = bounded(2, ge=1)
    """Periodic checkpoints to keep (the best and the last are always kept)."""
    log_every: int = bounded(10, ge=0)
    """Log training scalars every N steps."""
    resume: str = "auto"
    """``auto`` (latest checkpoint in the output directory, if any), ``never``, or a checkpoint path."""
    init_from: str | None = None
    """Start from another run's weights (the previous stage): ``stage:RECIPE[@DIR]``, its output directory
    (latest checkpoint), a checkpoint folder or a state.ckpt. Weights whose names match load; the rest keep
    their initialisation; both are reported. The run's identity holds the weights this resolves to, not these
    words. Ignored when the run resumes from its own checkpoint."""
    precision: str = field(default="32-true", metadata={"choices": PRECISIONS})
    """Lightning Fabric precision."""
    strategy: str = "auto"
    """Lightning Fabric strategy: auto, ddp, fsdp, deepspeed, ..."""
    accelerator: str = "auto"
    """cpu, cuda, auto."""
    devices: Any = 1
    """Devices per node (an int, or "auto")."""
    num_nodes: int = bounded(1, ge=1)
    """Machines (Lightning Fabric ``num_nodes``); each runs ``devices`` processes."""
    deterministic: bool = True
    """Use deterministic algorithms (exact resume on CPU); turn off for speed on GPU."""

    def problems(self) -> list[str]:
        found = []
        if self.warmup_steps and self.warmup_steps >= self.max_steps:
            found.append(f"train.warmup_steps={self.warmup_steps} must be < train.max_steps={self.max_steps}")
        if self.min_lr > self.lr:
            found.append(f"train.min_lr={self.min_lr} must be <= train.lr={self.lr}")
        if self.warmup_start_lr > self.lr:
            found.append(f"train.warmup_start_lr={self.warmup_start_lr} must be <= train.lr={self.lr}")
        found += [f"train.lr_scale.{k}={v} must be > 0" for k, v in self.lr_scale.items() if not v > 0]
        return found


@dataclass
class TrackingConfig:
    enabled: bool = True
    """Log the run to MLflow."""
    uri: str | None = None
    """MLflow tracking URI; null is ``sqlite:///mlflow.db`` in the working directory."""
    experiment: str | None = None
    """Experiment name; null is ``{task}-{dataset}``."""
    run_name: str | None = None
    """Run name; null is ``{encoder}-{projector}-{llm}-s{seed}``."""


@dataclass
class RecipeSchema:
    recipe: str = "custom"
    """The recipe's name (logged as a tag; ``train.init_from: stage:NAME`` names a previous stage by it)."""
    description: str = ""
    """What the recipe runs and why, for people (``bench recipes list`` shows the first line of the file)."""
    compat: str = field(default=DEFAULT_PROFILE, metadata={"choices": PROFILES})
    """Protocol profile: ``molbridge`` (our fixes, the schema defaults) or ``3d-molm`` (every choice of the
    reference code, core/profiles/3d-molm.yaml, filled in under the recipe's own settings; see
    docs/reproducing-3d-molm.md)."""
    per_component: dict[str, Any] = field(default_factory=dict)
    """Settings for one component only, by kind and name: ``{encoder: {schnet: {cutoff: 10.0}}}`` gives SchNet a
    10 Å cutoff wherever this recipe runs with SchNet (``--encoder schnet``) and changes nothing otherwise. They
    override the recipe's own section and yield to the command line; every entry is validated against its
    component's schema, used or not. The run's identity holds the settings they resolve to, not the table."""
    seed: int = 0
    """Seeds parameter initialisation, data order and conformer draws; part of the run's name."""
    output_dir: str | None = None
    """Where checkpoints and metrics.json go; null is ``runs/{experiment}/{run name}`` (the run's identity)."""
    data: DataConfig = field(default_factory=DataConfig)
    """The dataset and how it is batched."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, hardware, checkpoints and resume."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """MLflow."""
    encoder: Any | None = None
    """The 3D encoder: ``name`` and the keys of its plugin's schema (``bench recipes show NAME --doc``)."""
    projector: Any | None = None
    """The projector from encoder outputs to soft tokens: ``name`` and its plugin's keys."""
    llm: Any | None = None
    """The language model (stages 2 and 3): ``name`` and its plugin's keys."""
    task: Any | None = None
    """The task (required): ``name`` and its plugin's keys: its data, loss and metrics."""


COMPONENT_SECTIONS = KINDS  # encoder, projector, llm, task: validated against plugin schemas
REQUIRED_SECTIONS = ("task",)


# --- finding and reading recipe files -------------------------------------------------------------


def packaged_recipes() -> dict[str, Path]:
    root = importlib.resources.files("molbridge.core.recipes")
    return {Path(p.name).stem: Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml")}


def find_recipe(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """A recipe file by path (absolute, relative to cwd or to ``relative_to``) or packaged name."""
    for candidate in (Path(name_or_path), (relative_to or Path.cwd()) / str(name_or_path)):
        if candidate.suffix in {".yaml", ".yml"} and candidate.is_file():
            return candidate
    packaged = packaged_recipes()
    if str(name_or_path) in packaged:
        return packaged[str(name_or_path)]
    raise unknown_name("recipe", str(name_or_path), packaged)


def _key_lines(path: Path) -> dict[str, int]:
    """Dotted key -> line number in a YAML file, so errors can point at the line."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                dotted = f"{prefix}{key_node.value}"
                lines[dotted] = key_node.start_mark.line + 1
                walk(value_node, dotted + ".")

    root = yaml.compose(path.read_text())
    if root is not None:
        walk(root, "")
    return lines


def _read_with_bases(path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict, dict[str, str]]:
    """The recipe merged over its ``extends`` chain, and where each dotted key was last set."""
    if path.resolve() in seen:
        raise RecipeError(str(path), [f"'extends' forms a cycle: {' -> '.join(map(str, seen + (path,)))}"])
    try:
        data = OmegaConf.to_container(OmegaConf.load(path)) or {}
    except (OmegaConfBaseException, yaml.YAMLError) as exc:
        raise RecipeError(str(path), [f"not valid YAML: {exc}"]) from exc
    if not isinstance(data, dict):
        raise RecipeError(str(path), ["a recipe must be a mapping of sections"])
    bases = data.pop("extends", None) or []
    merged: dict[Any, Any] = {}
    origin: dict[str, str] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        base_data, base_origin = _read_with_bases(find_recipe(base, path.parent), seen + (path.resolve(),))
        merged = _merge(merged, base_data)
        origin.update(base_origin)
    lines = _key_lines(path)
    origin.update({k: f"{path}:{line}" for k, line in lines.items()})
    return _merge(merged, data), origin


def _merge(base: dict, top: dict) -> dict:
    return to_dict(OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(top)))


def to_dict(config: Container, resolve: bool = False) -> dict[Any, Any]:
    """``OmegaConf.to_container`` of a config that holds a mapping (a DictConfig), typed as the dict it gives."""
    container = OmegaConf.to_container(config, resolve=resolve)
    assert isinstance(container, dict), f"expected a mapping, got {type(container).__name__}"
    return container


# --- overrides --------------------------------------------------------------------------------------


def apply_overrides(data: dict, overrides: list[str], origin: dict[str, str]) -> dict:
    """Apply ``key=value`` and ``~key`` overrides; record them as coming from the command line."""
    problems = []
    for item in overrides:
        if item.startswith("~"):
            parent, _, leaf = item[1:].rpartition(".")
            node = _walk(data, parent.split(".")) if parent else data
            if not isinstance(node, dict) or leaf not in node:
                problems.append(f"'{item}' (command line): cannot delete '{item[1:]}', it is not set")
            else:
                del node[leaf]
            continue
        if "=" not in item:
            problems.append(f"'{item}' (command line): overrides are key=value or ~key")
            continue
        key = item.split("=", 1)[0]
        try:
            data = _merge(data, to_dict(OmegaConf.from_dotlist([item])))
        except OmegaConfBaseException as exc:
            problems.append(f"'{item}' (command line): {exc}")
            continue
        parts = key.split(".")
        for depth in range(1, len(parts)):  # a new section introduced here is located here too
            origin.setdefault(".".join(parts[:depth]), f"command line '{item}'")
        origin[key] = f"command line '{item}'"
    if problems:
        raise RecipeError("overrides", problems)
    return data


def _assign(data: dict, parts: list[str], value: Any) -> None:
    """Set the dotted key ``parts`` in ``data``, creating the sections on the way."""
    for part in parts[:-1]:
        data = data.setdefault(part, {})
    data[parts[-1]] = value


def _walk(data: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


#: Options naming a component's own weights, left behind when ``--encoder``/``--llm`` swaps it.
WEIGHT_KEYS = ("checkpoint", "trust_checkpoint", "path")


def replace_component(data: dict, kind: str, name: str, registry: Registry | None = None) -> dict:
    """``--encoder X``: switch a component. Options the new one also declares (e.g. ``preset``) carry
    over, so a recipe's sizing survives the swap; the others fall back to the new component's defaults.
    Weights never carry over: one component's checkpoint is not another's."""
    current = data.get(kind) or {}
    if current.get("name") == name:
        return data
    shared: set[str] = set()
    if registry is not None and name in registry.names(kind):
        shared = {f.name for f in dataclasses.fields(registry.get(kind, name).config_schema)} - {"name", *WEIGHT_KEYS}
    data[kind] = {"name": name} | {key: value for key, value in current.items() if key in shared}
    return data


# --- settings for one component (per_component) -----------------------------------------------------


def apply_per_component(data: dict, origin: dict[str, str]) -> None:
    """Merge ``per_component.KIND.NAME`` into the KIND section when it names component NAME. A key set on the
    command line keeps its value; a malformed table is left to :func:`validate` to report."""
    table = data.get("per_component")
    if not isinstance(table, dict):
        return
    for kind, entries in table.items():
        section = data.get(kind)
        if kind not in COMPONENT_SECTIONS or not isinstance(entries, dict) or not isinstance(section, dict):
            continue
        settings = entries.get(section.get("name"))
        if not isinstance(settings, dict):
            continue
        source = f"per_component.{kind}.{section['name']}"
        for key, value in flatten({k: v for k, v in settings.items() if k != "name"}).items():
            dotted = f"{kind}.{key}"
            if origin.get(dotted, "").startswith("command line"):
                continue
            _assign(section, key.split("."), value)
            origin[dotted] = f"{_where(f'{source}.{key}', origin)} ({source})"


def _per_component_problems(table: Any, registry: Registry, origin: dict[str, str]) -> list[str]:
    """Every entry of ``per_component`` checked against its component's schema, whether this run uses it or not."""
    problems: list[str] = []
    for kind, entries in table.items():
        where = f"per_component.{kind}"
        if kind not in COMPONENT_SECTIONS:
            problems.append(
                f"{where} ({_where(where, origin)}): not a component kind{suggest(str(kind), COMPONENT_SECTIONS)}; "
                f"kinds: {', '.join(COMPONENT_SECTIONS)}"
            )
            continue
        if not isinstance(entries, dict):
            problems.append(f"{where} ({_where(where, origin)}): expected a mapping of {kind} names, got {entries!r}")
            continue
        for name, settings in entries.items():
            path = f"{where}.{name}"
            try:
                schema = registry.get(kind, str(name)).config_schema
            except KeyError as exc:
                problems.append(f"{path} ({_where(path, origin)}): {exc}")
                continue
            if isinstance(settings, dict) and "name" in settings:
                problems.append(f"{path}.name ({_where(path, origin)}): settings for one {kind} cannot rename it")
            _check_section(schema, settings, path, origin, problems)
    return problems


# --- protocol profiles (compat) ----------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileSetting:
    """One key of a profile and what became of it in a recipe."""

    key: str
    value: Any
    status: str
    """``set`` (the profile's value is used), ``kept`` (the recipe sets the key itself: its value is used)
    or ``skipped`` (the recipe's component has no such key)."""
    note: str = ""
    before: Any = None
    """The value without the profile (filled by :func:`load_recipe` when it reports)."""


def profile_path(name: str) -> Path:
    return Path(str(importlib.resources.files("molbridge.core") / "profiles" / f"{name}.yaml"))


def profile_settings(name: str, task: str) -> dict[str, Any]:
    """Dotted key -> value that profile ``name`` gives a recipe of ``task``: its ``all`` part, then the task's."""
    if name == DEFAULT_PROFILE:
        return {}
    content = yaml.safe_load(profile_path(name).read_text()) or {}
    return flatten(content.get("all") or {}) | flatten(content.get(task) or {})


_UNSET = object()


def _lookup(data: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(data, dict) or part not in data:
            return _UNSET
        data = data[part]
    return data


def _declares(registry: Registry, kind: str, section: Any, key: str) -> bool:
    """Whether the component a recipe section names has ``key`` in its schema."""
    name = section.get("name") if isinstance(section, dict) else None
    if not name or name not in registry.names(kind):
        return False
    return key in {f.name for f in dataclasses.fields(registry.get(kind, name).config_schema)}


def apply_profile(data: dict, origin: dict[str, str], registry: Registry) -> list[ProfileSetting]:
    """Fill in the keys of the recipe's ``compat`` profile that the recipe leaves unset; report every key.

    A key the recipe files or overrides set keeps their value (so one fix at a time is one override); a key
    of a component section is applied only when that component declares it (e.g. a profile's Uni-Mol
    options do not apply to SchNet). An unknown profile or task is left to validation to report.
    """
    name, task = data.get("compat", DEFAULT_PROFILE), (data.get("task") or {}).get("name")
    if name not in PROFILES or not isinstance(task, str):
        return []
    report = []
    for key, value in profile_settings(name, task).items():
        parts = key.split(".")
        if parts[0] in COMPONENT_SECTIONS and not _declares(registry, parts[0], data.get(parts[0]), parts[1]):
            report.append(ProfileSetting(key, value, "skipped", f"the recipe's {parts[0]} has no key {parts[1]}"))
            continue
        current = _lookup(data, parts)
        if current is not _UNSET:
            report.append(ProfileSetting(key, value, "kept", f"{current!r} from {_where(key, origin)}"))
            continue
        _assign(data, parts, value)
        origin[key] = f"profile {name} ({profile_path(name).name})"
        report.append(ProfileSetting(key, value, "set"))
    return report


# --- validation -------------------------------------------------------------------------------------


def _where(dotted: str, origin: dict[str, str]) -> str:
    while dotted:
        if dotted in origin:
            return origin[dotted]
        dotted = dotted.rpartition(".")[0]
    return "defaults"


def _check_section(schema: type, data: Any, path: str, origin: dict[str, str], problems: list[str]) -> None:
    """Append a problem for every unknown key, wrong type or invalid choice under ``path``."""
    if not isinstance(data, dict):
        problems.append(f"{path or 'recipe'} ({_where(path, origin)}): expected a mapping, got {data!r}")
        return
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in fields:
            section = f"'{path}' section" if path else "top level"
            problems.append(
                f"{dotted} ({_where(dotted, origin)}): unknown key in the {section}"
                f"{suggest(str(key), fields)}; valid keys: {', '.join(fields)}"
            )
            continue
        if dataclasses.is_dataclass(hints[key]):
            _check_section(hints[key], value, dotted, origin, problems)
            continue
        entries = _entry_schema(hints[key])
        if entries is not None and isinstance(value, dict):  # a table of sections (e.g. task.generation)
            for name, entry in value.items():
                _check_section(entries, entry, f"{dotted}.{name}", origin, problems)
            continue
        try:
            OmegaConf.merge(OmegaConf.structured(schema), {key: value})
        except OmegaConfBaseException as exc:
            problems.append(f"{dotted} ({_where(dotted, origin)}): {str(exc).splitlines()[0]}")
            continue
        choices = fields[key].metadata.get("choices")
        if choices and value not in choices:
            problems.append(
                f"{dotted} ({_where(dotted, origin)}): '{value}' is not one of {', '.join(choices)}"
                f"{suggest(str(value), choices)}"
            )
        broken = out_of_bounds(value, fields[key].metadata.get("bounds", {}))
        if broken:
            problems.append(f"{dotted} ({_where(dotted, origin)}): {broken}")


def _entry_schema(hint: Any) -> type | None:
    """D when ``hint`` is ``dict[str, D]`` with D a dataclass (a table of sections), else None."""
    args = typing.get_args(hint)
    if (
        typing.get_origin(hint) is dict
        and len(args) == 2
        and isinstance(args[1], type)
        and dataclasses.is_dataclass(args[1])
    ):
        return args[1]
    return None


def _problems_of(instance: Any, path: str) -> list[str]:
    """``problems()`` of a section and of the sections in its tables (named by their full key)."""
    check = getattr(instance, "problems", None)
    found = list(check()) if callable(check) else []
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if isinstance(value, dict):
            for name, entry in value.items():
                if dataclasses.is_dataclass(entry):
                    found += [f"{path}.{f.name}.{name}.{p}" for p in _problems_of(entry, f"{path}.{f.name}.{name}")]
    return found


def _relation_problems(section: DictConfig, origin: dict[str, str], path: str) -> list[str]:
    """What the section schema's ``problems()`` says about the merged values (e.g. warm-up < steps)."""
    instance = OmegaConf.to_object(section)
    where = _where(path, origin)
    return [problem if where == "defaults" else f"{problem} ({where})" for problem in _problems_of(instance, path)]


def _component_schema(kind: str, section: Any, registry: Registry, origin: dict[str, str], problems: list[str]) -> type:
    name = section.get("name") if isinstance(section, dict) else None
    if not name:
        problems.append(
            f"{kind}.name ({_where(kind, origin)}): the {kind} section needs a name; "
            f"registered: {', '.join(registry.names(kind)) or 'none'}"
        )
        return ComponentConfig
    try:
        return registry.get(kind, name).config_schema
    except KeyError as exc:
        problems.append(f"{kind}.name ({_where(kind + '.name', origin)}): {exc}")
        return ComponentConfig  # still check the other keys against the common part


def validate(
    data: dict, registry: Registry, origin: dict[str, str] | None = None, source: str = "recipe"
) -> DictConfig:
    """Validate a merged recipe dict; return it as a struct-mode DictConfig or raise every problem."""
    origin = origin or {}
    problems: list[str] = []
    fixed = {k: v for k, v in data.items() if k not in COMPONENT_SECTIONS}
    _check_section(RecipeSchema, fixed, "", origin, problems)
    if isinstance(fixed.get("per_component"), dict):
        problems += _per_component_problems(fixed["per_component"], registry, origin)
    schemas = {}
    for kind in COMPONENT_SECTIONS:
        section = data.get(kind)
        if section is None:
            if kind in REQUIRED_SECTIONS:
                problems.append(
                    f"{kind}: required section missing; registered {kind}s: {', '.join(registry.names(kind)) or 'none'}"
                )
            continue
        schemas[kind] = _component_schema(kind, section, registry, origin, problems)
        _check_section(schemas[kind], section, kind, origin, problems)
    if problems:
        raise RecipeError(source, problems)
    recipe = OmegaConf.merge(OmegaConf.structured(RecipeSchema), fixed)
    assert isinstance(recipe, DictConfig)  # merged into a dataclass schema
    for kind, schema in schemas.items():
        recipe[kind] = OmegaConf.merge(OmegaConf.structured(schema), data[kind])
    missing = sorted(OmegaConf.missing_keys(recipe))
    if missing:
        raise RecipeError(source, [f"{key}: required value missing" for key in missing])
    for path in ("data", "train", *schemas):
        problems += _relation_problems(recipe[path], origin, path)
    if problems:
        raise RecipeError(source, problems)
    OmegaConf.set_struct(recipe, True)
    return recipe


def load_recipe(
    name_or_path: str | Path,
    overrides: Sequence[str] = (),
    registry: Registry | None = None,
    components: dict[str, str] | None = None,
    profile_report: list[ProfileSetting] | None = None,
) -> DictConfig:
    """Read, extend, override, apply the ``compat`` profile and validate a recipe. ``components`` maps kind ->
    name (``--encoder``); ``profile_report``, when given, receives what the profile did to each of its keys."""
    if registry is None:
        from molbridge.core.plugins import get_registry

        registry = get_registry()
    path = find_recipe(name_or_path)
    data, origin = _read_with_bases(path)
    for kind, name in (components or {}).items():
        if name:
            data = replace_component(data, kind, name, registry)
            origin[kind] = f"command line --{kind} {name}"
    data = apply_overrides(data, list(overrides), origin)
    apply_per_component(data, origin)
    without = _merge({}, data) if profile_report is not None else None  # a copy: the recipe without the profile
    settings = apply_profile(data, origin, registry)
    recipe = validate(data, registry, origin, source=str(path))
    if without is not None and profile_report is not None:  # both or neither
        before = flatten(validate(without, registry, dict(origin), source=str(path)))
        profile_report += [dataclasses.replace(s, before=before.get(s.key, "(unset)")) for s in settings]
    return recipe


PATTERN_CHARACTERS = set(".*?[]")


def flatten(recipe: DictConfig | Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train.lr": 1e-4, ...}``: keys exactly as a command-line override would name them. A table whose keys
    are not plain names (``train.lr_scale``'s globs: ``projector.*``) stays one value, as it is overridden."""
    container: Mapping[str, Any] = to_dict(recipe, resolve=True) if isinstance(recipe, DictConfig) else recipe
    flat: dict[str, Any] = {}
    for key, value in container.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and not any(set(str(k)) & PATTERN_CHARACTERS for k in value):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def to_yaml(recipe: DictConfig) -> str:
    return OmegaConf.to_yaml(recipe, resolve=True)


def read_yaml(path: Path) -> DictConfig:
    """A recipe :func:`to_yaml` wrote (a run's or a checkpoint's ``recipe.yaml``), as read back; not validated."""
    recipe = OmegaConf.load(path)
    if not isinstance(recipe, DictConfig):
        raise RecipeError(str(path), ["a recipe must be a mapping of sections"])
    return recipe
