"""The ``llama`` LLM: any local HuggingFace causal LM with 3D-MoLM's instruction prompt (Llama-2 base).

For a Llama-2 *chat* checkpoint set ``prompt_template`` to :data:`LLAMA2_CHAT_TEMPLATE`.
"""

from __future__ import annotations

from dataclasses import dataclass

from molbridge.core import hookimpl
from molbridge.plugins.llms.base import CausalLMConfig, llm_factory

#: 3D-MoLM's stage-2/3 prompt; the response follows "Response: ".
MOLM_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input molecule. "
    "Write a response that appropriately completes the request.\n"
    "Instruction: {instruction}\nInput molecule: {molecule} {mol_tokens}.\nResponse: "
)
#: Llama-2 chat's [INST] format (the tokenizer adds BOS; the response follows "[/INST]").
LLAMA2_CHAT_TEMPLATE = "[INST] {instruction}\nInput molecule: {molecule} {mol_tokens}. [/INST]"


@dataclass
class LlamaLMConfig(CausalLMConfig):
    name: str = "llama"
    prompt_template: str = MOLM_TEMPLATE


build = llm_factory(LlamaLMConfig)


@hookimpl
def molbridge_register_llms(register):
    register(
        "llama",
        build,
        LlamaLMConfig,
        description="local HF causal LM (Llama-2) + LoRA, 3D-MoLM prompt, <mol> soft tokens; "
        "path null: the molbridge-demo-llama demo model",
    )
