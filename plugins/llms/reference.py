"""Loading 3D-MoLM's stage-2/3 checkpoints (Lightning ``ckpt["state_dict"]``, keys under ``blip2opt.``).

Their model (``Blip2Llama``) keeps only the Q-Former's query path (``Qformer.cls``, the word and position
embeddings and the text FFNs ``layer.N.intermediate/output`` are deleted), ``ln_graph``, ``query_tokens``,
``llm_proj`` (Linear 768 -> 4096) and the PEFT-wrapped Llama as ``llm_model``; the saved state holds the
trainable weights (LoRA), and may hold frozen ones. Mapping:

- Q-Former query path -> :class:`~molbridge.plugins.projectors.qformer.QFormer` through its stage-1 mapping
  (:func:`~molbridge.plugins.projectors.qformer.from_reference` with ``prefix="blip2opt."``);
- ``llm_proj.*`` -> the LLM wrapper's ``llm_proj.*``;
- ``llm_model.<peft name>.lora_{A,B}[.default].weight`` -> the wrapper's ``model.<peft name>.lora_{A,B}.default.weight``
  (PEFT names the adapter ``default`` in the model's state dict, not in saved adapter files);
- frozen ``graph_encoder.*`` and base ``llm_model.*`` weights are returned as "others" (they come from the
  encoder's and ``llm.path``'s own checkpoints); any other key is a :class:`CheckpointError`.
"""

from __future__ import annotations

import re
from pathlib import Path

from torch import Tensor, nn

from molbridge.core.errors import CheckpointError
from molbridge.plugins.encoders.weights import load_strict, read_state_dict
from molbridge.plugins.projectors.qformer import from_reference, to_reference

PREFIX = "blip2opt."
_LORA = re.compile(r"llm_model\.(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight")
#: Our Q-Former names of the text path, which a stage-2/3 checkpoint does not have (forward() never uses them).
TEXT_PATH = re.compile(
    r"bert\.embeddings\.(word|position)_embeddings\."
    r"|bert\.encoder\.layer\.\d+\.(intermediate|output)\."
    r"|(lm_head|match_head|mol_proj|text_proj)\."
)
#: The same in the reference's names (what ``to_stage23`` leaves out).
_REF_TEXT_PATH = re.compile(
    r"Qformer\.(cls\.|bert\.embeddings\.(word|position)_embeddings\."
    r"|bert\.encoder\.layer\.\d+\.(intermediate|output)\.)|(graph_proj|text_proj|gtm_head)\."
)


def from_stage23(state: dict[str, Tensor], prefix: str = PREFIX) -> tuple[dict, dict, dict]:
    """Split a stage-2/3 state dict into (projector state, LLM-wrapper state, others), in molbridge names."""
    llm, others, rest, unmapped = {}, {}, {}, []
    for key, value in state.items():
        name = key.removeprefix(prefix)
        lora = _LORA.fullmatch(name)
        if name.startswith("llm_proj."):
            llm[name] = value
        elif lora:
            llm[f"model.{lora['module']}.lora_{lora['ab']}.default.weight"] = value
        elif name.startswith("llm_model.") and ".lora_" in name:
            unmapped.append(key)  # another adapter name or LoRA variant: refuse rather than drop it
        elif name.startswith("llm_model."):
            others[name] = value
        else:
            rest[key] = value
    if unmapped:
        raise CheckpointError(
            f"{len(unmapped)} LoRA keys of the 3D-MoLM checkpoint have no molbridge name: " + ", ".join(unmapped[:10])
        )
    projector, more = from_reference(rest, prefix)
    return projector, llm, others | more


def to_stage23(
    projector_state: dict[str, Tensor], llm_state: dict[str, Tensor], prefix: str = PREFIX
) -> dict[str, Tensor]:
    """The inverse of :func:`from_stage23` for the trainable parts: the reference's layout (for tests, export)."""
    out = {
        k: v
        for k, v in to_reference(projector_state, prefix).items()
        if not _REF_TEXT_PATH.match(k.removeprefix(prefix))
    }
    for name, value in llm_state.items():
        if name.startswith("llm_proj."):
            out[prefix + name] = value
        elif ".lora_" in name:
            out[prefix + "llm_model." + name.removeprefix("model.")] = value
    return out


def load_stage23(
    source: str | Path | dict[str, Tensor], projector: nn.Module, llm: nn.Module, prefix: str = PREFIX
) -> dict[str, Tensor]:
    """Load a 3D-MoLM stage-2/3 checkpoint (file or state dict) into a Q-Former and an LLM wrapper.

    The projector's query path, ``llm_proj`` and (when the wrapper uses LoRA) every LoRA weight must be
    present; returns the frozen weights the checkpoint also held (encoder, base LLM), unused.
    """
    state = source if isinstance(source, dict) else read_state_dict(source, key="state_dict")
    where = "state dict" if isinstance(source, dict) else str(source)
    projector_state, llm_state, others = from_stage23(state, prefix)
    load_strict(projector, projector_state, f"{where} (Q-Former)", optional=lambda k: bool(TEXT_PATH.match(k)))
    load_strict(llm, llm_state, f"{where} (LLM)", optional=lambda k: not (k.startswith("llm_proj.") or ".lora_" in k))
    return others
