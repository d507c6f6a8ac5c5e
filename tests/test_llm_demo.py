"""molbridge-demo-llama: deterministic build, cache, loaded through the same local-folder path as real models."""

import pytest
import torch

from molbridge.core.errors import MolbridgeError
from molbridge.plugins.llms.demo import DEMO_NOTICE, DEMO_SHAPE, build_demo_model, default_texts, demo_model_path
from molbridge.plugins.llms.llama import LlamaLMConfig
from molbridge.plugins.llms.llama import build as build_llama

TEXTS = [
    f"The molecule is a {kind} with {n} rings; its HOMO-LUMO gap is {n * 0.37:.2f} eV."
    for n in range(80)
    for kind in ("carboxylic acid", "secondary amine", "aromatic ether")
]


def test_two_builds_are_identical(tmp_path):
    build_demo_model(TEXTS, tmp_path / "a", seed=0)
    build_demo_model(TEXTS, tmp_path / "b", seed=0)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"} <= set(names)
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    build_demo_model(TEXTS, tmp_path / "c", seed=1)
    assert (tmp_path / "a/model.safetensors").read_bytes() != (tmp_path / "c/model.safetensors").read_bytes()


def test_cached_and_loaded_like_a_real_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("MOLBRIDGE_CACHE", str(tmp_path))
    folder = demo_model_path(TEXTS)
    assert folder.parent == tmp_path / "demo-llm"
    assert DEMO_NOTICE in (folder / "README.md").read_text()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert demo_model_path(TEXTS) == folder and (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert demo_model_path(TEXTS[:-1]) != folder  # other texts, other tokenizer, other folder
    assert not list(folder.parent.glob(".*"))  # no staging folder left behind

    lm = build_llama(LlamaLMConfig(path=None, lora=False), input_dim=32, texts=TEXTS)
    assert lm.model.config.hidden_size == DEMO_SHAPE["hidden_size"]
    assert lm.model.config.num_hidden_layers == DEMO_SHAPE["num_hidden_layers"]
    assert lm.model.name_or_path == str(folder)
    tok = lm.tokenizer
    text = "The HOMO-LUMO gap is 4.21 eV, ünïcode too."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text  # byte-level: any text
    digits = tok.convert_ids_to_tokens(tok("gap 4.21 and 14.8", add_special_tokens=False)["input_ids"])
    assert [t for t in digits if any(c.isdigit() for c in t)] == list("421148")  # one digit per token
    assert len(tok) <= DEMO_SHAPE["vocab_size"] and {tok.bos_token, tok.eos_token, tok.pad_token} == {
        "<s>",
        "</s>",
        "<pad>",
    }
    batch = lm.tokenize_batch([lm.format_prompt("Describe this molecule.", "CCO")], ["It is a small alcohol."])
    assert lm(**batch, mol_tokens=torch.zeros(1, 8, 32)).loss.isfinite()


def test_no_texts_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MOLBRIDGE_CACHE", str(tmp_path))
    with pytest.raises(MolbridgeError, match="no texts to train its tokenizer"):
        demo_model_path(["", ""])


def test_default_corpus_is_molbridge_mini_text():
    texts = default_texts()
    from molbridge.core.data import open_dataset

    mol = open_dataset("molbridge-mini")[0]
    assert mol.description in texts and mol.instructions[0]["output"] in texts
    assert len(texts) > len(open_dataset("molbridge-mini"))


@pytest.mark.slow
def test_default_demo_model_trains_and_generates(tmp_path, monkeypatch):
    """The default (molbridge-mini texts) demo LLM: LoRA steps lower the loss; it learns to tell two prompts apart."""
    monkeypatch.setenv("MOLBRIDGE_CACHE", str(tmp_path))
    torch.manual_seed(0)
    lm = build_llama({"name": "llama", "path": None}, input_dim=32).train()
    prompts = [lm.format_prompt("Describe this molecule.", s) for s in ("CCO", "c1ccccc1")]
    batch = lm.tokenize_batch(prompts, ["It is ethanol.", "It is benzene."])
    mol = torch.randn(2, 8, 32)
    optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(40):
        loss = lm(**batch, mol_tokens=mol).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 2
    lm.eval()
    answers = lm.generate(**lm.tokenize_prompts(prompts), mol_tokens=mol, max_new_tokens=8)
    assert answers == ["It is ethanol.", "It is benzene."]  # each prompt its own answer, and then EOS
