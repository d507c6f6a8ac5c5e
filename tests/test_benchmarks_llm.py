"""benchmarks/llm.py on a tiny Llama: output structure, batched == one-at-a-time answers, the step variants."""

import pytest
import torch

from molbridge.core.errors import MolbridgeError
from molbridge.plugins.llms.base import IGNORE_INDEX
from molbridge.plugins.llms.demo import build_demo_model

TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 512,
    "vocab_size": 400,
}
CORPUS = [f"The molecule has {n} carbon atoms and a ring. Describe it. Is it aromatic?" for n in range(40)]
INSTRUCTIONS = ["Describe it.", "Is it aromatic? Answer yes or no, with one short reason.", "Ring?", "Describe."]
SMILES = ["CCO", "c1ccccc1O", "C", "CC(=O)Oc1ccccc1C(=O)O"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and a second thread stalls when the other core is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bench(benchmark_script):
    return benchmark_script("llm")


@pytest.fixture(scope="module")
def tiny_lm(bench, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    build_demo_model(CORPUS, folder, seed=0, shape=TINY)
    return bench.build_generation_lm(str(folder), "float32")


def prompts(lm):
    return [lm.format_prompt(i, s) for i, s in zip(INSTRUCTIONS, SMILES)]


def test_generation_batched_equals_one_at_a_time(bench, tiny_lm):
    mask = tiny_lm.tokenize_prompts(prompts(tiny_lm))["attention_mask"]
    assert (mask == 0).any(), "the prompts must differ in length, so the batch is really left-padded"
    result = bench.measure_generation(tiny_lm, prompts(tiny_lm), max_new_tokens=4)
    assert result["identical_texts"]
    assert result["prompts"] == 4 and 4 <= result["new_tokens"] <= 16
    for path in ("batched", "one_at_a_time"):
        assert set(result[path]) == {"seconds", "answers_per_s", "tokens_per_s"}
        assert result[path]["seconds"] > 0
    assert result["speedup"] > 0 and result["dtype"] == "float32" and result["device"]


def test_generation_check_catches_answers_that_depend_on_padding(bench, tiny_lm, monkeypatch):
    generate_ids = tiny_lm.generate_ids

    def attends_to_padding(input_ids, attention_mask, mol_tokens, **settings):  # the classic batching bug
        return generate_ids(input_ids, torch.ones_like(attention_mask), mol_tokens, **settings)

    monkeypatch.setattr(tiny_lm, "generate_ids", attends_to_padding)
    with pytest.raises(MolbridgeError, match="batched and one-at-a-time generation differ"):
        bench.measure_generation(tiny_lm, prompts(tiny_lm), max_new_tokens=4)


def test_benchmark_prompts_come_from_molbridge_mini(bench, tiny_lm):
    found = bench.benchmark_prompts(tiny_lm, 3)
    assert len(found) == 3 and all(p.count(tiny_lm.mol_token) == tiny_lm.num_mol_tokens for p in found)
    with pytest.raises(MolbridgeError, match="asked for 100000 prompts"):
        bench.benchmark_prompts(tiny_lm, 100_000)


def test_answer_lengths_stop_at_eos(bench):
    assert bench.answer_lengths(torch.tensor([[5, 2, 0, 0], [5, 6, 7, 8]]), eos=2) == [2, 4]


def test_step_variants_compute_the_same_step(bench):
    results = bench.with_ratios([bench.measure_step(TINY, v, batch=2, length=24, steps=1) for v in bench.VARIANTS])
    assert [r["variant"] for r in results] == list(bench.VARIANTS)
    losses = [r["loss"] for r in results]
    assert losses == pytest.approx([losses[0]] * len(losses), rel=1e-4)  # same init, same batch, same maths
    for r in results:
        assert r["tokens_per_s"] > 0 and r["step_s"] > 0 and r["trainable_m"] > 0
        assert r["precision"] == "fp32" and r["peak_mb"] is None  # CPU: only the RSS growth is measured
    counted = {r["variant"]: r["step_flops"] for r in results}
    assert counted["sdpa+checkpointing"] > counted["sdpa"] > 0  # the recomputed forward is counted too
    assert {r["model_flops"] for r in results} == {min(counted.values())}  # MFU: one model's FLOPs for all
    eager = next(r for r in results if r["variant"] == "eager")
    assert eager["speed_vs_eager"] == 1.0 and eager["peak_memory_vs_eager"] is None
    failed = bench.with_ratios([{"variant": "sdpa", "error": "killed (out of memory?)"}, eager])
    assert "speed_vs_eager" not in failed[0]  # a variant that did not run gets no ratios
    assert [r["gradient_checkpointing"] for r in results] == [False, True, False]


def test_step_batch_layout(bench):
    lm = bench.build_step_lm(TINY, "sdpa", False, torch.device("cpu"), torch.float32)
    batch = bench.step_batch(lm, batch=3, length=20, device=torch.device("cpu"))
    assert batch["input_ids"].shape == (3, 20) and batch["mol_tokens"].shape == (3, lm.num_mol_tokens, 768)
    assert ((batch["input_ids"] == lm.mol_token_id).sum(dim=1) == lm.num_mol_tokens).all()
    assert (batch["labels"][:, :10] == IGNORE_INDEX).all() and (batch["labels"][:, 10:] != IGNORE_INDEX).all()
    trainable = {n.split(".")[-2] for n, p in lm.named_parameters() if p.requires_grad}
    assert trainable == {"default", "llm_proj"}  # LoRA A/B (adapter "default") and llm_proj only
    assert lm.model.base_model.model.config._attn_implementation == "sdpa"
    with pytest.raises(MolbridgeError, match="--length 4"):
        bench.step_batch(lm, batch=1, length=4, device=torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_7b_refused_without_gpu(bench):
    with pytest.raises(MolbridgeError, match="needs a CUDA GPU"):
        bench._refuse_7b_without_gpu("7b")
    bench._refuse_7b_without_gpu("small")
