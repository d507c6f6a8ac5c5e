"""3D-MoLM stage-2/3 checkpoint layout: a synthetic checkpoint in their names loads into our Q-Former + LLM."""

import pytest
import torch

from molbridge.core.contracts import EncoderOutput
from molbridge.core.errors import CheckpointError
from molbridge.plugins.llms.base import SoftPromptLM
from molbridge.plugins.llms.demo import build_demo_model
from molbridge.plugins.llms.llama import LlamaLMConfig
from molbridge.plugins.llms.llama import build as build_llama
from molbridge.plugins.llms.reference import from_stage23, load_stage23, to_stage23
from molbridge.plugins.projectors.qformer import QFormer, QFormerConfig

ATOM_DIM = 16
TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 256,
    "vocab_size": 300,
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    build_demo_model([f"molecule {n} has a ring and {n} atoms" for n in range(40)], folder, shape=TINY)
    return folder


def parts(folder, seed: int) -> tuple[QFormer, SoftPromptLM]:
    """A Q-Former and an LLM wrapper whose trainable weights depend on ``seed`` (LoRA B non-zero)."""
    torch.manual_seed(seed)
    projector = QFormer(QFormerConfig(num_layers=2), input_dim=ATOM_DIM).eval()
    llm = build_llama(LlamaLMConfig(path=str(folder)), input_dim=projector.output_dim).eval()
    with torch.no_grad():
        for param in [*projector.parameters(), *llm.parameters()]:
            if param.requires_grad:
                param.normal_(0, 0.05)
    return projector, llm


def trainable_llm_state(llm):
    return {k: v for k, v in llm.state_dict().items() if k.startswith("llm_proj.") or ".lora_" in k}


def outputs(projector, llm):
    """Soft tokens for two padded molecules, then the LLM logits on a prompt carrying them."""
    torch.manual_seed(123)
    atoms = torch.randn(2, 5, ATOM_DIM)
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    soft = projector(EncoderOutput(atoms * ~padding[..., None], padding, atoms.mean(1)))
    prompts = llm.tokenize_prompts([llm.format_prompt("Describe.", "CCO"), llm.format_prompt("LogP?", "c1ccccc1")])
    return soft, llm(prompts["input_ids"], prompts["attention_mask"], soft).logits


def write_reference(projector, llm, path, extra=None):
    state = to_stage23(projector.state_dict(), trainable_llm_state(llm))
    torch.save({"state_dict": state | (extra or {}), "epoch": 3}, path)
    return state


def test_synthetic_stage23_checkpoint_round_trip(tiny_dir, tmp_path):
    source = parts(tiny_dir, seed=1)
    state = write_reference(
        *source,
        tmp_path / "stage2.ckpt",
        extra={
            "blip2opt.graph_encoder.embed_tokens.weight": torch.zeros(3, 4),  # frozen Uni-Mol, saved by some runs
            "blip2opt.llm_model.base_model.model.model.norm.weight": torch.ones(64),
        },
    )  # a frozen base weight
    # their layout: PEFT names under llm_model., the Q-Former query path only, llm_proj
    assert "blip2opt.llm_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight" in state
    assert "blip2opt.llm_model.base_model.model.model.layers.1.mlp.down_proj.lora_B.default.weight" in state
    assert {
        "blip2opt.llm_proj.weight",
        "blip2opt.llm_proj.bias",
        "blip2opt.query_tokens",
        "blip2opt.ln_graph.weight",
        "blip2opt.Qformer.bert.encoder.layer.0.crossattention.self.key.weight",
        "blip2opt.Qformer.bert.encoder.layer.1.output_query.dense.weight",
    } <= set(state)
    assert not any(".cls." in k or "word_embeddings" in k or ".intermediate." in k or "gtm_head" in k for k in state)
    assert state["blip2opt.llm_proj.weight"].shape == (64, 384)

    target = parts(tiny_dir, seed=2)
    expected = outputs(*source)
    assert not torch.allclose(outputs(*target)[1], expected[1])
    others = load_stage23(tmp_path / "stage2.ckpt", *target)
    assert set(others) == {"graph_encoder.embed_tokens.weight", "llm_model.base_model.model.model.norm.weight"}
    for got, want in zip(outputs(*target), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_lora_names_without_the_adapter_name_map_too(tiny_dir):
    source = parts(tiny_dir, seed=1)
    state = to_stage23(source[0].state_dict(), trainable_llm_state(source[1]))
    plain = {k.replace(".default.", "."): v for k, v in state.items()}  # as in PEFT's saved adapter files
    assert "blip2opt.llm_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in plain
    assert from_stage23(plain)[1].keys() == from_stage23(state)[1].keys()
    target = parts(tiny_dir, seed=2)
    load_stage23(plain, *target)
    torch.testing.assert_close(outputs(*target)[1], outputs(*source)[1], rtol=0, atol=0)


def test_layout_problems_are_listed(tiny_dir):
    projector, llm = parts(tiny_dir, seed=1)
    state = to_stage23(projector.state_dict(), trainable_llm_state(llm))
    with pytest.raises(CheckpointError, match="no molbridge name: blip2opt.opt_proj.weight"):
        from_stage23(state | {"blip2opt.opt_proj.weight": torch.zeros(1)})
    odd = "blip2opt.llm_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.other.weight"
    with pytest.raises(CheckpointError, match=f"1 LoRA keys .*{odd}"):
        from_stage23(state | {odd: torch.zeros(1)})
    lost = "blip2opt.llm_model.base_model.model.model.layers.1.mlp.up_proj.lora_B.default.weight"
    with pytest.raises(CheckpointError, match=r"\(LLM\) does not match the model; missing: .*layers.1.mlp.up_proj"):
        load_stage23({k: v for k, v in state.items() if k != lost}, projector, llm)
    with pytest.raises(CheckpointError, match=r"\(Q-Former\) .*missing: query_tokens"):
        load_stage23({k: v for k, v in state.items() if k != "blip2opt.query_tokens"}, projector, llm)
    wrong = state | {"blip2opt.llm_proj.weight": torch.zeros(64, 768)}
    with pytest.raises(CheckpointError, match=r"shape mismatch: llm_proj.weight \(64, 768\) vs model \(64, 384\)"):
        load_stage23(wrong, projector, llm)


def test_unreadable_checkpoint(tmp_path):
    (tmp_path / "bad.ckpt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*bad.ckpt"):
        load_stage23(tmp_path / "bad.ckpt", None, None)
