"""The ``vicuna`` LLM: a local HuggingFace causal LM with Vicuna v1.1's conversation template."""

from __future__ import annotations

from dataclasses import dataclass

from molbridge.core import hookimpl
from molbridge.plugins.llms.base import CausalLMConfig, llm_factory

#: Vicuna v1.1 (FastChat "vicuna_v1.1"): system line, then "USER: ... ASSISTANT:"; the response follows.
VICUNA_TEMPLATE = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions. "
    "USER: {instruction}\nInput molecule: {molecule} {mol_tokens}. ASSISTANT:"
)


@dataclass
class VicunaLMConfig(CausalLMConfig):
    name: str = "vicuna"
    prompt_template: str = VICUNA_TEMPLATE


build = llm_factory(VicunaLMConfig)


@hookimpl
def molbridge_register_llms(register):
    register(
        "vicuna",
        build,
        VicunaLMConfig,
        description="local HF causal LM (Vicuna) + LoRA, Vicuna v1.1 chat template, <mol> soft tokens; "
        "path null: the molbridge-demo-llama demo model",
    )
