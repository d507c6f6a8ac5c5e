"""Size a recipe's model without loading weights or allocating memory (``bench recipes validate``).

The components are built through the registry on the meta device, from the recipe's shapes, with the
options that only name weight files cleared (``checkpoint``, ``pretrained``): sizing needs no weights.
Folders that fix a shape (``projector.bert``, ``llm.path``) are read for their config only; when one is
not on this machine, a known shape stands in (SciBERT, Llama-2-7B) and the report says so. The task
assembles the model as training would (:meth:`~molbridge.core.contracts.Task.assemble`), then the
recipe's ``train.trainable``/``train.frozen`` globs apply exactly as in :func:`molbridge.core.loop.apply_freezing`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from molbridge.core.errors import MolbridgeError
from molbridge.core.identity import is_stage_reference
from molbridge.core.loop import apply_freezing
from molbridge.core.recipe import to_dict
from molbridge.core.registry import Registry

if TYPE_CHECKING:
    from molbridge.core.contracts import Projector

GIB = 2**30
#: Mixed-precision AdamW state per trainable parameter: fp32 master weight, gradient and two moments.
TRAIN_STATE_BYTES = 16
#: Options that only say where weights come from, and their "no weights" value.
WEIGHT_OPTIONS = {"checkpoint": None, "pretrained": False}
#: allenai/scibert_scivocab_uncased: BERT-base with the SciBERT vocabulary.
SCIBERT_SHAPE: dict[str, Any] = {
    "model_type": "bert",
    "vocab_size": 31090,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
}
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass
class Row:
    """One line of the sizing table."""

    name: str
    parameters: int = 0
    trainable: int = 0

    @property
    def bf16_gib(self) -> float:
        return self.parameters * 2 / GIB

    @property
    def train_state_gib(self) -> float:
        return self.trainable * TRAIN_STATE_BYTES / GIB


@dataclass
class Sizing:
    """Parameter counts by component, what was assumed (``notes``) and the base LLM's own size."""

    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    llm_base: int | None = None

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    @property
    def total(self) -> Row:
        return Row("total", sum(r.parameters for r in self.rows), sum(r.trainable for r in self.rows))

    def table(self) -> str:
        """The rows, a total, then the notes; memory in GiB (activations not included)."""
        head = f"{'component':<22}{'parameters':>16}{'trainable':>16}{'bf16 weights':>14}{'AdamW state':>13}"
        lines = [head, "-" * len(head)]
        for r in [*self.rows, self.total]:
            lines.append(
                f"{r.name:<22}{r.parameters:>16,}{r.trainable:>16,}{r.bf16_gib:>10.2f} GiB{r.train_state_gib:>9.2f} GiB"
            )
        total = self.total
        lines.append(
            f"weights (bf16) + AdamW state (fp32 master, grad, 2 moments; trainable only): "
            f"{total.bf16_gib + total.train_state_gib:.2f} GiB per device, activations not included"
        )
        if self.llm_base is not None:
            lines.append(f"base LLM as loaded: {self.llm_base:,} parameters")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


# --- building the components on the meta device ------------------------------------------------------


def _plain(section: DictConfig) -> DictConfig:
    """A resolved, editable copy of a validated recipe section (env interpolations applied)."""
    return OmegaConf.create(to_dict(section, resolve=True))


def _clear_weights(kind: str, section: DictConfig, notes: list[str]) -> DictConfig:
    for key, empty in WEIGHT_OPTIONS.items():
        value = section.get(key)
        if key in section and value not in (None, empty):
            if isinstance(value, str):
                state = "found" if Path(value).expanduser().exists() else "NOT FOUND on this machine"
                notes.append(f"{kind}.{key} {value}: {state}; weights not loaded (sizing needs shapes only)")
            section[key] = empty
    return section


def _scibert_stand_in(folder: Path) -> Path:
    """A folder with SciBERT's config and a vocabulary of its size: what the Q-Former reads for its shape.

    The tokens are placeholders; only their number matters (it sizes the word embeddings and the LM head).
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(SCIBERT_SHAPE))
    fillers = (f"[unused{i}]" for i in range(SCIBERT_SHAPE["vocab_size"] - len(BERT_SPECIAL_TOKENS)))
    (folder / "vocab.txt").write_text("\n".join([*BERT_SPECIAL_TOKENS, *fillers]) + "\n")
    return folder


def _projector_section(section: DictConfig, scratch: Path, notes: list[str]) -> DictConfig:
    bert = section.get("bert")
    if bert and not (Path(bert).expanduser() / "config.json").is_file():
        notes.append(
            f"projector.bert {bert}: NOT FOUND on this machine; sized as SciBERT's shape "
            f"(BERT-base, vocab {SCIBERT_SHAPE['vocab_size']:,})"
        )
        section.bert = str(_scibert_stand_in(scratch / "scibert"))
    elif bert:
        notes.append(f"projector: shape from {bert}/config.json")
    return _clear_weights("projector", section, notes)


def _build_llm(
    section: DictConfig, registry: Registry, input_dim: int, notes: list[str]
) -> tuple[nn.Module, int | None]:
    """(LLM as the plugin wraps it, base LLM parameters or None), on the meta device; caller holds the meta context.

    An LLM plugin whose factory has ``size_on_meta(section, input_dim, notes) -> (module, base parameters)``
    sizes itself (e.g. from a model folder's config, or a known shape when the folder is not here); any other
    is built through its factory on the meta device."""
    factory = registry.get("llm", section.name).factory
    size_on_meta = getattr(factory, "size_on_meta", None)
    if size_on_meta is not None:
        return size_on_meta(section, input_dim, notes)
    notes.append(f"llm '{section.name}': built through its factory on the meta device")
    return registry.build("llm", section, input_dim=input_dim), None


def _assemble(
    recipe: DictConfig, registry: Registry, parts: dict[str, nn.Module | None], notes: list[str]
) -> nn.Module:
    assemble = getattr(registry.get("task", recipe.task.name).factory, "assemble", None)
    try:
        if assemble is None:
            raise NotImplementedError
        return assemble(recipe.task, parts["encoder"], parts["projector"], parts["llm"])
    except NotImplementedError:
        notes.append(
            f"task '{recipe.task.name}' does not say how it assembles its model; sized as the bare "
            "components with the recipe's train.trainable/train.frozen only"
        )
        return nn.ModuleDict({kind: part for kind, part in parts.items() if part is not None})


def _on_meta(kind: str, build: Callable[[], nn.Module], notes: list[str]) -> nn.Module:
    """``build()`` on the meta device; a small component whose constructor needs real values (``.item()``,
    ``float(tensor)``) is built on the CPU instead, and the notes say so."""
    try:
        with torch.device("meta"):
            return build()
    except MolbridgeError:
        raise
    except Exception as exc:  # any plugin code may refuse meta tensors; sizing must not fail for that
        notes.append(f"{kind}: cannot be built on the meta device ({type(exc).__name__}: {exc}); built on the CPU")
        return build()


def size_recipe(recipe: DictConfig, registry: Registry) -> Sizing:
    """Parameter counts and memory of the model ``recipe`` trains, built on the meta device (no weights).

    Raises :class:`~molbridge.core.errors.RecipeError` when a freezing glob matches no parameter.
    """
    notes = ["built on the meta device from the recipe's shapes: no weights read, no memory allocated"]
    parts: dict[str, nn.Module | None] = dict.fromkeys(("encoder", "projector", "llm"))
    llm_base = None
    with tempfile.TemporaryDirectory() as scratch:
        if recipe.get("encoder") is not None:
            encoder = _clear_weights("encoder", _plain(recipe.encoder), notes)
            parts["encoder"] = _on_meta("encoder", lambda: registry.build("encoder", encoder), notes)
        if recipe.get("projector") is not None and parts["encoder"] is not None:
            projector = _projector_section(_plain(recipe.projector), Path(scratch), notes)
            width = parts["encoder"].output_dim
            parts["projector"] = _on_meta(
                "projector", lambda: registry.build("projector", projector, input_dim=width), notes
            )
        with torch.device("meta"):
            if recipe.get("llm") is not None and parts["projector"] is not None:
                soft_width = cast("Projector", parts["projector"]).output_dim  # the projector contract's width
                parts["llm"], llm_base = _build_llm(_plain(recipe.llm), registry, soft_width, notes)
            model = _assemble(recipe, registry, parts, notes)
    apply_freezing(model, recipe.train.trainable, recipe.train.frozen, recipe.recipe)
    spec = recipe.train.init_from
    if spec and is_stage_reference(spec):
        notes.append(
            f"train.init_from {spec}: the completed run of that recipe with this run's components, data and "
            "seed, found when the run starts"
        )
    elif spec and not Path(spec).exists():
        notes.append(f"train.init_from {spec}: not there yet (run the previous stage first)")
    return Sizing(_rows(model, recipe), notes, llm_base)


def _row_name(name: str, recipe: DictConfig) -> str:
    """Rows by component, the LLM split into its base, LoRA adapters and ``llm_proj``."""
    kind = name.split(".", 1)[0]
    if kind == "llm" and "lora_" in name:
        return "llm LoRA"
    if name.startswith("llm.llm_proj."):
        return "llm llm_proj"
    section = recipe.get(kind) if kind in ("encoder", "projector", "llm") else None
    return f"{kind} {section.name}" if section is not None else kind


def _rows(model: nn.Module, recipe: DictConfig) -> list[Row]:
    rows: dict[str, Row] = {}
    for name, parameter in model.named_parameters():
        label = _row_name(name, recipe)
        row = rows.setdefault(label, Row(label))
        row.parameters += parameter.numel()
        row.trainable += parameter.numel() if parameter.requires_grad else 0
    return list(rows.values())
