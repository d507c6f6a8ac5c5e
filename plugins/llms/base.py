"""A HuggingFace causal LM that reads molecules as soft tokens: the common part of ``llama`` and ``vicuna``.

The prompt holds ``num_mol_tokens`` ``<mol>`` placeholders (a special token added to the tokenizer);
:meth:`SoftPromptLM.embed` replaces their input embeddings with ``llm_proj(mol_tokens)``, where
``llm_proj`` maps the projector width to the LLM width (3D-MoLM's Linear(768 -> 4096)).

Fixes of the reference's defects (see the 3D-MoLM notes): every target ends with EOS, so the model learns
to stop; generation runs on left-padded batches with the KV cache, and its settings are the caller's (per
task), never taken from a sample of the batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from molbridge.core.contracts import LanguageModel
from molbridge.core.errors import CheckpointError, MolbridgeError, suggest
from molbridge.core.recipe import bounded

IGNORE_INDEX = -100  # HuggingFace's cross-entropy ignore label
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
ADAPTER_FILE = "llm_proj.safetensors"


@dataclass
class GenerationSettings:
    """Decoding options; a task passes its own to :meth:`SoftPromptLM.generate` (recipe defaults otherwise)."""

    max_new_tokens: int = bounded(128, ge=1)
    """Most tokens generated per answer (a task may pass its own)."""
    num_beams: int = bounded(1, ge=1)
    """Beam width; 1 is greedy decoding when ``do_sample`` is off."""
    do_sample: bool = False
    """Sample instead of greedy or beam search (evaluation is then random: set ``seed``)."""
    temperature: float = bounded(1.0, gt=0)
    """Softmax temperature when sampling (ignored otherwise)."""
    top_p: float = bounded(1.0, gt=0, le=1)
    """Nucleus sampling mass when sampling (ignored otherwise); 1 keeps every token."""
    repetition_penalty: float = bounded(1.0, gt=0)
    """Hugging Face's repetition penalty; 1 is none."""


@dataclass
class DecodingSettings(GenerationSettings):
    """Everything :meth:`SoftPromptLM.generate` accepts: the recipe's defaults (:class:`GenerationSettings`, the
    ``llm`` section) and settings only a task passes (3D-MoLM's ``min_new_tokens`` and ``length_penalty``).
    At these defaults (Hugging Face's own) they are not passed to ``generate`` at all."""

    min_new_tokens: int = 0
    length_penalty: float = 1.0


#: Call-only settings whose default means "not passed to Hugging Face generate".
NEUTRAL_SETTINGS = {"min_new_tokens": 0, "length_penalty": 1.0}


@dataclass
class CausalLMConfig(GenerationSettings):
    """Recipe section of an LLM plugin (the generation fields are the defaults of :meth:`generate`)."""

    name: str = "???"
    path: str | None = None
    """Local HuggingFace folder (Llama-2-7B for the paper); null: the offline demo model (see demo.py)."""
    prompt_template: str = ""
    """Prompt around ``{instruction}``, ``{molecule}`` (SMILES) and ``{mol_tokens}``; empty: the plugin's."""
    num_mol_tokens: int = bounded(8, ge=1)
    """``<mol>`` placeholders per prompt = soft tokens per molecule (3D-MoLM: 8)."""
    lora: bool = True
    """Train LoRA adapters (peft) on the frozen LLM; off: the LLM stays frozen, only ``llm_proj`` trains."""
    lora_r: int = bounded(8, ge=1)
    """LoRA rank (3D-MoLM: 8)."""
    lora_alpha: int = bounded(32, ge=1)
    """LoRA scaling numerator: updates are scaled by ``lora_alpha / lora_r`` (3D-MoLM: 32)."""
    lora_dropout: float = bounded(0.1, ge=0, lt=1)
    """Dropout on the LoRA input (3D-MoLM: 0.1)."""
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    """Names of the linear layers that get adapters (default: Llama's attention and MLP projections)."""
    dtype: str = field(default="float32", metadata={"choices": tuple(DTYPES)})
    """Weights of the base LLM (bfloat16 on GPU); ``llm_proj`` and LoRA weights stay float32."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (saves memory for 7B models on GPU)."""
    max_length: int = bounded(512, ge=8)
    """Training sequences (prompt + response + EOS) are cut to this many tokens (the response is cut; the run
    counts how many were cut and reports it)."""
    demo_corpus: str | None = None
    """With ``path`` null: the dataset whose texts train the demo model's tokenizer (null: molbridge-mini). The
    packaged recipes set ``${data.name}``, the dataset the run reads."""


def apply_lora(model: nn.Module, config: CausalLMConfig) -> nn.Module:
    """Wrap ``model`` in a PEFT LoRA model (base weights frozen) when the recipe asks for LoRA."""
    if not config.lora:
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
    )
    try:
        with warnings.catch_warnings():  # peft 0.21 calls a transformers 5 method deprecated for v6
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            return get_peft_model(model, lora)
    except ValueError as exc:  # PEFT names the modules it could not find
        raise MolbridgeError(f"llm.lora_target_modules {list(config.lora_target_modules)}: {exc}") from exc


def enable_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing in every decoder layer. Recent transformers call the switch
    ``activation_checkpointing_enable`` (and deprecate ``gradient_checkpointing_enable``); older 5.x releases,
    such as 5.17 on our GPU image, only have ``gradient_checkpointing_enable``."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _fill_device_constructor_cache() -> None:
    """transformers swaps ``torch.linspace`` for a wrapper while it builds a model on the meta device, and torch
    caches which factory functions a ``with torch.device(...)`` block redirects on that block's first use: a
    first use inside transformers' window leaves ``linspace`` out for the rest of the process (a later
    ``with torch.device("meta")`` then makes CPU tensors). Using a device block once beforehand fills the cache."""
    with torch.device("cpu"):
        torch.empty(0)


def load_pretrained(path: str | Path, dtype: torch.dtype):
    """(model, tokenizer) from a local HuggingFace folder; nothing is downloaded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _fill_device_constructor_cache()

    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"llm.path {folder}: not a local HuggingFace model folder (no config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load the LLM from {folder}: {exc}") from exc
    return model, tokenizer


def as_config(config: Any, schema: type[CausalLMConfig]) -> CausalLMConfig:
    """The recipe section (an OmegaConf node, a dict or the dataclass itself) as a ``schema`` instance."""
    if isinstance(config, schema):
        return config
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else dict(config)
    return schema(**data)


def llm_factory(schema: type[CausalLMConfig]):
    """The registry factory of an LLM plugin whose recipe section is ``schema`` (its name and prompt).

    The factory also has ``size_on_meta`` (``bench recipes validate`` sizes a 7B recipe without its weights)."""

    def build(config: Any, input_dim: int, texts: Iterable[str] | None = None) -> SoftPromptLM:
        """Load ``config.path`` (or build the demo model, its tokenizer trained on ``texts``) and wrap it."""
        config = as_config(config, schema)
        path = config.path
        if path is None:
            from molbridge.plugins.llms.demo import dataset_texts, demo_model_path

            if texts is None and config.demo_corpus:
                texts = dataset_texts(config.demo_corpus)
            path = demo_model_path(texts)
        model, tokenizer = load_pretrained(path, DTYPES[config.dtype])
        return SoftPromptLM(config, model, tokenizer, input_dim)

    def size_on_meta(section: Any, input_dim: int, notes: list[str]) -> tuple[nn.Module, int]:
        """The wrapped LLM on the meta device from its folder's config (or Llama-2-7B's shape when the folder is
        not on this machine), and the base LLM's parameter count; the caller holds the meta device context."""
        from molbridge.plugins.llms.sizing import LLAMA2_7B, meta_llama

        config = as_config(section, schema)
        if config.path is None:
            from molbridge.plugins.llms.demo import DEMO_NAME, dataset_texts, demo_model_path

            folder = demo_model_path(dataset_texts(config.demo_corpus) if config.demo_corpus else None)
            notes.append(f"llm.path null: {DEMO_NAME} (the offline demo model)")
        else:
            folder = Path(config.path).expanduser()
            if not (folder / "config.json").is_file():
                notes.append(
                    f"llm.path {config.path}: NOT FOUND on this machine; sized as Llama-2-7B's shape "
                    "(plugins/llms/sizing.py LLAMA2_7B)"
                )
                return meta_llama(config, input_dim, LLAMA2_7B)
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(folder), local_files_only=True))
        notes.append(f"llm: shape from {folder}/config.json; weights not loaded")
        return SoftPromptLM(config, model, tokenizer, input_dim), sum(p.numel() for p in model.parameters())

    build.size_on_meta = size_on_meta
    return build


def tokenizer_digest(tokenizer: Any) -> Tensor:
    """SHA-256 (32 bytes as uint8) of the tokenizer's full definition (vocabulary, merges, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return torch.tensor(list(hashlib.sha256(text.encode()).digest()), dtype=torch.uint8)


class SoftPromptLM(LanguageModel):
    """A causal LM (optionally with LoRA) whose ``<mol>`` placeholders carry projected molecule tokens."""

    default_template: str = "{instruction}\n{molecule} {mol_tokens}\n"

    def __init__(self, config: CausalLMConfig, model: nn.Module, tokenizer: Any, input_dim: int):
        super().__init__()
        self.config, self.tokenizer = config, tokenizer
        self.template = config.prompt_template or self.default_template
        self.num_mol_tokens, self.max_length = config.num_mol_tokens, config.max_length
        self._check_template()
        self.generation = DecodingSettings(
            **{f.name: getattr(config, f.name) for f in dataclasses.fields(GenerationSettings)}
        )
        self.mol_token_id = self._add_mol_token(model)
        if config.gradient_checkpointing:
            enable_checkpointing(model)
        self.model = apply_lora(model, config)
        self.lora_active = config.lora
        self.hidden_size = model.config.hidden_size
        self.llm_proj = nn.Linear(input_dim, self.hidden_size)
        # Saved with every checkpoint: weights trained with one tokenizer must not load under another with
        # the same vocabulary size (e.g. a rebuilt demo model), which no shape check would notice.
        self.register_buffer("tokenizer_digest", tokenizer_digest(self.tokenizer))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        theirs = state_dict.get(prefix + "tokenizer_digest")
        if theirs is not None and not torch.equal(theirs.to(self.tokenizer_digest.device), self.tokenizer_digest):
            raise CheckpointError(
                "these LLM weights were trained with a different tokenizer than the one loaded now (for the demo "
                f"model: molbridge-mini's texts or the demo build changed since; {self.model.name_or_path}); "
                "retrain, or load the LLM folder they were trained with (llm.path)"
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _check_template(self) -> None:
        try:
            probe = self.format_prompt("", "")
        except (KeyError, IndexError, ValueError) as exc:
            raise MolbridgeError(
                f"llm.prompt_template: {exc!r}; placeholders are {{instruction}}, {{molecule}} "
                "and {mol_tokens} (double other braces)"
            ) from exc
        if self.mol_token * self.num_mol_tokens not in probe:
            raise MolbridgeError("llm.prompt_template has no {mol_tokens} placeholder")

    def _add_mol_token(self, model: nn.Module) -> int:
        """Add ``<mol>`` (special, never split) and a pad token if missing; grow the embeddings to match."""
        tok = self.tokenizer
        if self.mol_token not in tok.get_vocab():
            tok.add_tokens([self.mol_token], special_tokens=True)
        if tok.pad_token is None:  # Llama-2 has none; padding is masked out, any id will do
            tok.pad_token = tok.unk_token or tok.eos_token
        if tok.eos_token_id is None:
            raise CheckpointError(f"the tokenizer of {self.config.path} has no EOS token")
        if len(tok) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tok), mean_resizing=False)  # <mol> rows are always replaced
        model.config.pad_token_id = model.generation_config.pad_token_id = tok.pad_token_id
        return tok.convert_tokens_to_ids(self.mol_token)

    # -- prompts and batches --------------------------------------------------------------------------
    def format_prompt(self, instruction: str, molecule: str) -> str:
        """The plugin's template with ``num_mol_tokens`` placeholders after the SMILES."""
        return self.template.format(
            instruction=instruction, molecule=molecule, mol_tokens=self.mol_token * self.num_mol_tokens
        )

    def _encode(self, texts: Sequence[str], special: bool) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=special)["input_ids"]

    def tokenize_batch(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, Tensor]:
        """Right-padded training batch: prompt (with BOS) + response + EOS; labels only on response and EOS.

        Prompt and response are tokenized apart so the prompt tokens are exactly those
        :meth:`tokenize_prompts` gives at generation time.
        """
        if len(prompts) != len(responses):
            raise MolbridgeError(f"tokenize_batch: {len(prompts)} prompts but {len(responses)} responses")
        eos, rows, labels = self.tokenizer.eos_token_id, [], []
        for i, (prompt, response) in enumerate(zip(self._encode(prompts, True), self._encode(responses, False))):
            room = self.config.max_length - len(prompt) - 1
            if room < 1:
                raise MolbridgeError(
                    f"sample {i}: the prompt has {len(prompt)} tokens, no room for a response "
                    f"within llm.max_length={self.config.max_length}"
                )
            target = response[:room] + [eos]
            rows.append(torch.tensor(prompt + target))
            labels.append(torch.tensor([IGNORE_INDEX] * len(prompt) + target))
        input_ids = pad_sequence(rows, batch_first=True, padding_value=self.tokenizer.pad_token_id)
        return {
            "input_ids": input_ids,
            "attention_mask": pad_sequence([torch.ones_like(r) for r in rows], batch_first=True),
            "labels": pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX),
        }

    def tokenize_prompts(self, prompts: Sequence[str]) -> dict[str, Tensor]:
        """Left-padded prompts for :meth:`generate` (new tokens then follow every row directly)."""
        rows = [torch.tensor(ids) for ids in self._encode(prompts, True)]
        pad = self.tokenizer.pad_token_id
        return {
            "input_ids": pad_sequence(rows, batch_first=True, padding_value=pad, padding_side="left"),
            "attention_mask": pad_sequence([torch.ones_like(r) for r in rows], batch_first=True, padding_side="left"),
        }

    # -- model ------------------------------------------------------------------------------------------
    def embed(self, input_ids: Tensor, mol_tokens: Tensor) -> Tensor:
        """Input embeddings with the ``<mol>`` positions replaced by ``llm_proj(mol_tokens)`` (B, T, input_dim)."""
        is_mol = input_ids == self.mol_token_id
        counts = is_mol.sum(dim=1)
        bad = (counts != self.num_mol_tokens).nonzero().flatten().tolist()
        if bad:
            raise MolbridgeError(
                f"rows {bad} of the batch have {counts[bad].tolist()} '{self.mol_token}' tokens; "
                f"each prompt needs exactly {self.num_mol_tokens} (use format_prompt)"
            )
        expected = (input_ids.shape[0], self.num_mol_tokens, self.llm_proj.in_features)
        if tuple(mol_tokens.shape) != expected:
            raise MolbridgeError(f"mol_tokens has shape {tuple(mol_tokens.shape)}, expected {expected}")
        embeds = self.model.get_input_embeddings()(input_ids)
        soft = self.llm_proj(mol_tokens.to(self.llm_proj.weight.dtype)).to(embeds.dtype)
        # row-major fill: row b's placeholders, in order, get soft[b, 0..T-1]
        return embeds.masked_scatter(is_mol.unsqueeze(-1), soft)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, mol_tokens: Tensor, labels: Tensor | None = None
    ) -> Any:
        """Teacher-forced pass; HF shifts ``labels`` and averages the loss over non-ignored tokens."""
        return self.model(inputs_embeds=self.embed(input_ids, mol_tokens), attention_mask=attention_mask, labels=labels)

    def generation_settings(self, **overrides: Any) -> DecodingSettings:
        """The recipe's defaults updated with a task's settings; an unknown name is an error."""
        valid = [f.name for f in dataclasses.fields(DecodingSettings)]
        for key in overrides:
            if key not in valid:
                raise MolbridgeError(
                    f"unknown generation setting '{key}'{suggest(key, valid)}; valid: {', '.join(valid)}"
                )
        return dataclasses.replace(self.generation, **overrides)

    @torch.no_grad()
    def generate_ids(self, input_ids: Tensor, attention_mask: Tensor, mol_tokens: Tensor, **generation: Any) -> Tensor:
        """New token ids (B, <= max_new_tokens) for a left-padded batch (:meth:`tokenize_prompts`), KV-cached.

        Rows that finish early are filled with the pad token after their EOS.
        """
        if bool((attention_mask[:, -1] == 0).any()):
            raise MolbridgeError(
                "generate needs left-padded prompts (the last column is padding); use tokenize_prompts"
            )
        settings = dataclasses.asdict(self.generation_settings(**generation))
        if not settings["do_sample"]:  # HF warns about sampling options that greedy/beam search ignores
            settings.pop("temperature"), settings.pop("top_p")
        for key, neutral in NEUTRAL_SETTINGS.items():  # unset: the call stays what it was before they existed
            if settings[key] == neutral:
                settings.pop(key)
        # given inputs_embeds and no input_ids, HF generate returns only the new tokens
        return self.model.generate(
            inputs_embeds=self.embed(input_ids, mol_tokens),
            attention_mask=attention_mask,
            use_cache=True,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            **settings,
        )

    def generate(self, input_ids: Tensor, attention_mask: Tensor, mol_tokens: Tensor, **generation: Any) -> list[str]:
        """Decoded answers (special tokens dropped) for a left-padded batch; settings override the recipe's."""
        ids = self.generate_ids(input_ids, attention_mask, mol_tokens, **generation)
        return [text.strip() for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    # -- LoRA -------------------------------------------------------------------------------------------
    def save_trainable(self, folder: str | Path) -> None:
        """Save what stages 2-3 train in the LLM: the LoRA adapter (PEFT format) and ``llm_proj``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.lora_active:
            self.model.save_pretrained(str(folder))
        save_file({k: v.contiguous() for k, v in self.llm_proj.state_dict().items()}, str(folder / ADAPTER_FILE))

    def load_trainable(self, folder: str | Path) -> None:
        """Load :meth:`save_trainable` output; every adapter weight must be present and match."""
        from peft import get_peft_model_state_dict, load_peft_weights, set_peft_model_state_dict
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / ADAPTER_FILE).is_file():
            raise CheckpointError(f"{folder}: no {ADAPTER_FILE}; not written by save_trainable")
        self.llm_proj.load_state_dict(load_file(str(folder / ADAPTER_FILE)))
        if not self.lora_active:
            return
        if not (folder / "adapter_config.json").is_file():
            raise CheckpointError(f"{folder}: no LoRA adapter (adapter_config.json) but llm.lora is on")
        weights = load_peft_weights(str(folder), device="cpu")
        missing = sorted(set(get_peft_model_state_dict(self.model)) - set(weights))
        if missing:
            raise CheckpointError(f"{folder}: adapter lacks {len(missing)} LoRA weights: {', '.join(missing[:5])}")
        result = set_peft_model_state_dict(self.model, weights)
        if result.unexpected_keys:
            raise CheckpointError(
                f"{folder}: adapter weights the model does not have: " + ", ".join(result.unexpected_keys[:5])
            )

    def merge_lora(self) -> None:
        """Fold the LoRA weights into the base weights (faster inference; no longer trainable as LoRA)."""
        if self.lora_active:
            self.model, self.lora_active = self.model.merge_and_unload(), False
