"""Parameter counts and memory estimates, also for models too big to build (on the meta device)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from molbridge.plugins.llms.base import CausalLMConfig, apply_lora

GIB = 2**30
#: Llama-2-7B's shape (HF config of meta-llama/Llama-2-7b-hf).
LLAMA2_7B = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "intermediate_size": 11008,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
}
#: Bytes per trainable parameter for mixed-precision AdamW: fp32 master weight, gradient and two moments.
TRAIN_STATE_BYTES = 16


def param_report(model: nn.Module) -> dict[str, Any]:
    """Total and trainable parameter counts, bf16 weight memory and AdamW training-state memory (GiB)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "total": total,
        "trainable": trainable,
        "bf16_weights_gib": total * 2 / GIB,
        "train_state_gib": trainable * TRAIN_STATE_BYTES / GIB,
    }


def meta_llama(config: CausalLMConfig, input_dim: int, shape: dict[str, int] = LLAMA2_7B) -> tuple[nn.Module, int]:
    """A Llama of ``shape`` assembled as the LLM plugins do, on the meta device (no memory): ``<mol>`` added to
    the vocabulary, LoRA as in ``config``, ``llm_proj`` from ``input_dim``. Parameter names match
    :class:`~molbridge.plugins.llms.base.SoftPromptLM` (``model.*``, ``llm_proj.*``).

    Returns (module, parameters of the base LLM alone). For when no tokenizer is at hand: a model folder
    is sized more exactly through ``SoftPromptLM`` itself (see :mod:`molbridge.core.sizing`).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        llm = LlamaForCausalLM(LlamaConfig(**shape))
        base = sum(p.numel() for p in llm.parameters())
        llm.resize_token_embeddings(shape["vocab_size"] + 1, mean_resizing=False)  # <mol>
        assembled = nn.ModuleDict(
            {"model": apply_lora(llm, config), "llm_proj": nn.Linear(input_dim, shape["hidden_size"])}
        )
    return assembled, base


def meta_report(config: CausalLMConfig, input_dim: int, shape: dict[str, int] = LLAMA2_7B) -> dict[str, Any]:
    """:func:`param_report` of :func:`meta_llama`; ``llm_base`` is the base LLM alone (Llama-2-7B: 6,738,415,616)."""
    assembled, base = meta_llama(config, input_dim, shape)
    return {**param_report(assembled), "llm_base": base}
