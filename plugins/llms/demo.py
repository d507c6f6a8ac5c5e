"""molbridge-demo-llama: the offline default LLM for CPU machines.

**Randomly initialised: it learns only what stages 2-3 teach it.** It is a small Llama-architecture model
(4 layers, hidden 256, ~3.7M parameters) with a byte-level BPE tokenizer trained on the texts of the dataset
in use (``llm.demo_corpus``, which the packaged recipes set to ``${data.name}``; molbridge-mini's by default):
a tokenizer trained on other texts cuts unfamiliar words into many pieces, so captions would hit the
generation limit and prompts the length limit. It exists so the LLM stages run end to end without a 7B
checkpoint; its captions and answers say nothing about what 3D-MoLM achieves.

The build is deterministic given the texts, the seed and :data:`DEMO_SHAPE`; it is written once with
``save_pretrained`` to ``$MOLBRIDGE_CACHE/demo-llm/<hash>`` (default ``~/.cache/molbridge``) and then loaded
through the same local-folder code as a real checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch

from molbridge.core.errors import MolbridgeError

DEMO_NAME = "molbridge-demo-llama"
DEMO_NOTICE = f"{DEMO_NAME}: randomly initialised, learns only what stages 2-3 teach it"
#: Model shape and tokenizer size; part of the cache key.
DEMO_SHAPE = {
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "intermediate_size": 688,
    "max_position_embeddings": 1024,
    "vocab_size": 3000,
}
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<mol>")
BUILD_VERSION = 2  # bump when the build changes, so old caches are not reused


def cache_root() -> Path:
    return Path(os.environ.get("MOLBRIDGE_CACHE", Path.home() / ".cache" / "molbridge"))


#: The text fields a language stage reads (captions), besides the instruction records.
CORPUS_FIELDS = ("description", "enriched_description")


def dataset_texts(name: str = "molbridge-mini") -> list[str]:
    """What the language stages read of a prepared dataset: its descriptions (:data:`CORPUS_FIELDS`) and instruction
    records (instruction, input, output); the tokenizer corpus. ``name`` is a packaged dataset or a folder written
    by ``bench data prepare``."""
    from molbridge.core.data import open_dataset

    store, texts = open_dataset(name), []
    for i in range(len(store)):
        mol = store[i]
        texts.extend(mol.texts[field] for field in CORPUS_FIELDS if mol.texts.get(field))
        texts.extend(r[key] for r in mol.instructions for key in ("instruction", "input", "output"))
    return texts


def default_texts() -> list[str]:
    """molbridge-mini's texts (:func:`dataset_texts`)."""
    return dataset_texts("molbridge-mini")


def train_tokenizer(texts: list[str], vocab_size: int, special_tokens: tuple[str, ...] = SPECIAL_TOKENS):
    """A byte-level BPE (any text encodes; digits one token each) with BOS prepended; a fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    # Digits one token each, as in Llama-2's own tokenizer: numbers stay learnable digit by digit instead of
    # becoming arbitrary BPE merges ("342" one token, "343" two), which matters for the numeric QA answers.
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer)
    bpe.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bpe.token_to_id("<s>"))]
    )
    pad = "<pad>" if "<pad>" in special_tokens else None
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token=pad,
        model_max_length=DEMO_SHAPE["max_position_embeddings"],
    )


def build_demo_model(
    texts: list[str],
    folder: Path,
    seed: int = 0,
    shape: dict[str, int] = DEMO_SHAPE,
    special_tokens: tuple[str, ...] = SPECIAL_TOKENS,
) -> None:
    """Train the tokenizer, initialise the Llama from ``seed`` and ``save_pretrained`` both into ``folder``.

    ``shape`` and ``special_tokens`` are for tests (tiny models; a Llama-2-like vocabulary without
    ``<mol>`` and pad).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_tokenizer(texts, shape["vocab_size"], special_tokens)
    shape = {k: v for k, v in shape.items() if k != "vocab_size"}
    config = LlamaConfig(
        **shape,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    # seeded init without touching the caller's RNG, on the CPU whatever device context the caller holds
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    (folder / "README.md").write_text(f"# {DEMO_NOTICE}\n\n{__doc__}")


def demo_model_path(texts: Iterable[str] | None = None, seed: int = 0) -> Path:
    """The cached demo model folder for these texts (molbridge-mini's when None), built on first use; the cache
    key is a digest of the texts, so each dataset gets its own tokenizer and model."""
    texts = [t for t in (default_texts() if texts is None else texts) if t]
    if not texts:
        raise MolbridgeError(f"{DEMO_NAME}: no texts to train its tokenizer on")
    key = hashlib.sha256(json.dumps([BUILD_VERSION, seed, DEMO_SHAPE, texts]).encode()).hexdigest()[:16]
    folder = cache_root() / "demo-llm" / key
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{key}-"))
    try:
        build_demo_model(texts, staging, seed)
        os.replace(staging, folder)  # atomic: a reader never sees a half-written model
    except OSError:
        if not (folder / "config.json").is_file():  # another process may have won the race
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
