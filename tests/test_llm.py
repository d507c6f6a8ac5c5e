"""The LLM plugins: prompts, training batches (EOS, labels), <mol> injection, generation, LoRA, sizing."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from molbridge.core.errors import CheckpointError, MolbridgeError, RecipeError
from molbridge.core.plugins import load_plugins
from molbridge.core.recipe import validate
from molbridge.plugins.llms.base import IGNORE_INDEX, LORA_TARGETS, enable_checkpointing
from molbridge.plugins.llms.demo import build_demo_model
from molbridge.plugins.llms.llama import MOLM_TEMPLATE, LlamaLMConfig
from molbridge.plugins.llms.llama import build as build_llama
from molbridge.plugins.llms.sizing import LLAMA2_7B, meta_report, param_report
from molbridge.plugins.llms.vicuna import VicunaLMConfig
from molbridge.plugins.llms.vicuna import build as build_vicuna

TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 512,
    "vocab_size": 400,
}
MOL_DIM = 24  # projector width in these tests
CORPUS = [
    f"The molecule has {n} carbon atoms and a LogP of {n / 7:.2f}. It is an aromatic alcohol." for n in range(60)
] + ["What is the molecular weight? Respond with the numerical value only."]
INSTRUCTIONS = [
    "Describe this molecule.",
    "What is the LogP of this molecule? Respond with the numerical value only.",
    "Is it aromatic?",
]
SMILES = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    build_demo_model(CORPUS, folder, seed=0, shape=TINY)
    return folder


def make(folder, seed=0, builder=build_llama, schema=LlamaLMConfig, **options):
    """A wrapper on the tiny model; ``seed`` fixes llm_proj and LoRA init; LoRA B made non-zero (else a no-op)."""
    torch.manual_seed(seed)
    model = builder(schema(path=str(folder), **options), input_dim=MOL_DIM).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return model


def batch(lm, responses=("It is ethanol.", "The LogP is 1.46.", "Yes, it has a benzene ring.")):
    prompts = [lm.format_prompt(i, s) for i, s in zip(INSTRUCTIONS, SMILES)]
    return lm.tokenize_batch(prompts, list(responses))


def test_plugins_registered_with_their_schemas():
    registry = load_plugins(external=False).registry
    assert registry.get("llm", "llama").config_schema is LlamaLMConfig
    assert registry.get("llm", "vicuna").config_schema is VicunaLMConfig
    fields = {f.name: f for f in dataclasses.fields(LlamaLMConfig)}
    assert fields["dtype"].metadata["choices"] == ("float32", "bfloat16")
    assert LlamaLMConfig().lora_target_modules == list(LORA_TARGETS)
    assert (LlamaLMConfig().lora_r, LlamaLMConfig().lora_alpha, LlamaLMConfig().lora_dropout) == (8, 32, 0.1)


def test_prompt_templates(tiny_dir):
    llama = make(tiny_dir)
    assert llama.format_prompt("Describe.", "CCO") == (
        "Below is an instruction that describes a task, paired with an input molecule. Write a response that "
        "appropriately completes the request.\nInstruction: Describe.\nInput molecule: CCO "
        + "<mol>" * 8
        + ".\nResponse: "
    )
    vicuna = make(tiny_dir, builder=build_vicuna, schema=VicunaLMConfig)
    prompt = vicuna.format_prompt("Describe.", "CCO")
    assert prompt.startswith("A chat between a curious user and an artificial intelligence assistant.")
    assert "USER: Describe.\nInput molecule: CCO " + "<mol>" * 8 in prompt and prompt.endswith("ASSISTANT:")
    custom = make(tiny_dir, prompt_template="Q: {instruction} {molecule} {mol_tokens} A:", num_mol_tokens=2)
    assert custom.format_prompt("x", "C") == "Q: x C <mol><mol> A:"
    assert LlamaLMConfig().prompt_template == MOLM_TEMPLATE


def test_every_target_ends_with_eos_and_loss_is_on_the_response_only(tiny_dir):
    lm = make(tiny_dir)
    tok = lm.tokenizer
    b = batch(lm)
    for row, labels, mask, response in zip(b["input_ids"], b["labels"], b["attention_mask"], batch.__defaults__[0]):
        real = row[mask.bool()]
        assert real[0] == tok.bos_token_id and real[-1] == tok.eos_token_id
        target = labels[labels != IGNORE_INDEX]
        assert target[-1] == tok.eos_token_id and (target == tok.eos_token_id).sum() == 1
        assert tok.decode(target[:-1]) == response  # exactly the response, then EOS
        assert (labels[~mask.bool()] == IGNORE_INDEX).all()  # padding
        prompt_len = mask.sum() - len(target)
        assert (labels[:prompt_len] == IGNORE_INDEX).all()
        assert (labels[prompt_len : mask.sum()] == real[prompt_len:]).all()


def test_truncation_keeps_the_prompt_and_the_eos(tiny_dir):
    longest_prompt = int((batch(make(tiny_dir))["labels"] == IGNORE_INDEX).sum(1).min())  # shortest padding
    lm = make(tiny_dir, max_length=longest_prompt + 300)
    b = batch(lm, responses=["word " * 400] * 3)
    assert b["input_ids"].shape[1] == longest_prompt + 300 and (b["attention_mask"] == 1).all()
    assert (b["labels"][:, -1] == lm.tokenizer.eos_token_id).all()
    with pytest.raises(MolbridgeError, match="sample 0: the prompt has .* no room"):
        make(tiny_dir, max_length=20).tokenize_batch(["long prompt " * 10], ["a"])


def test_loss_equals_cross_entropy_over_response_tokens(tiny_dir):
    lm = make(tiny_dir)
    b = batch(lm)
    mol = torch.randn(3, 8, MOL_DIM)
    out = lm(b["input_ids"], b["attention_mask"], mol, labels=b["labels"])
    logits, labels = out.logits[:, :-1], b["labels"][:, 1:]
    expected = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, expected)


def test_mol_placeholders_carry_the_projected_tokens(tiny_dir):
    lm = make(tiny_dir)
    b = batch(lm)
    mol = torch.randn(3, 8, MOL_DIM)
    embeds = lm.embed(b["input_ids"], mol)
    is_mol = b["input_ids"] == lm.mol_token_id
    assert (is_mol.sum(1) == 8).all()
    for row in range(3):
        torch.testing.assert_close(embeds[row][is_mol[row]], lm.llm_proj(mol[row]))
    table = lm.model.get_input_embeddings()(b["input_ids"])
    torch.testing.assert_close(embeds[~is_mol], table[~is_mol])
    # the soft tokens change the output; a different molecule gives different logits
    one = lm(b["input_ids"], b["attention_mask"], mol).logits
    two = lm(b["input_ids"], b["attention_mask"], mol + 1).logits
    assert not torch.allclose(one, two)


def test_wrong_number_of_mol_tokens_is_a_clear_error(tiny_dir):
    lm = make(tiny_dir)
    ids = lm.tokenize_prompts([lm.format_prompt("a", "C"), "no molecule here"])
    with pytest.raises(MolbridgeError, match=r"rows \[1\] of the batch have \[0\] '<mol>' tokens"):
        lm.embed(ids["input_ids"], torch.zeros(2, 8, MOL_DIM))
    with pytest.raises(MolbridgeError, match=r"mol_tokens has shape \(2, 4, 24\)"):
        lm.embed(lm.tokenize_prompts([lm.format_prompt("a", "C")] * 2)["input_ids"], torch.zeros(2, 4, MOL_DIM))


def _until_eos(ids, eos):
    ids = ids.tolist()
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def test_left_padded_batch_generation_equals_one_at_a_time(tiny_dir):
    lm = make(tiny_dir)
    prompts = [lm.format_prompt(i, s) for i, s in zip(INSTRUCTIONS, SMILES)]
    mol = torch.randn(3, 8, MOL_DIM)
    batched = lm.tokenize_prompts(prompts)
    assert (batched["attention_mask"][:, -1] == 1).all() and (batched["attention_mask"][:, 0] == 0).any()
    eos = lm.tokenizer.eos_token_id
    together = lm.generate_ids(**batched, mol_tokens=mol, max_new_tokens=16)
    assert together.shape[1] <= 16  # new tokens only, not the prompt
    for row, prompt in enumerate(prompts):
        alone = lm.generate_ids(**lm.tokenize_prompts([prompt]), mol_tokens=mol[row : row + 1], max_new_tokens=16)
        assert _until_eos(together[row], eos) == _until_eos(alone[0], eos)
        assert len(_until_eos(alone[0], eos)) >= 2  # something was generated
    texts = lm.generate(**batched, mol_tokens=mol, max_new_tokens=16)
    assert texts == [t.strip() for t in lm.tokenizer.batch_decode(together, skip_special_tokens=True)]


def test_generation_settings_come_from_the_call(tiny_dir):
    lm = make(tiny_dir, max_new_tokens=10)
    inputs = lm.tokenize_prompts([lm.format_prompt(i, s) for i, s in zip(INSTRUCTIONS, SMILES)])
    mol = torch.randn(3, 8, MOL_DIM)
    assert lm.generate_ids(**inputs, mol_tokens=mol).shape[1] <= 10  # recipe default
    assert lm.generate_ids(**inputs, mol_tokens=mol, max_new_tokens=3).shape[1] <= 3
    beams = lm.generate_ids(**inputs, mol_tokens=mol, max_new_tokens=4, num_beams=3)
    assert beams.shape[0] == 3
    with pytest.raises(MolbridgeError, match="unknown generation setting 'max_new_token' .*did you mean"):
        lm.generate(**inputs, mol_tokens=mol, max_new_token=3)
    right = lm.tokenize_batch(["a " + lm.mol_token * 8, "b"], ["x", "y"])  # right-padded training batch
    with pytest.raises(MolbridgeError, match="left-padded"):
        lm.generate(right["input_ids"], right["attention_mask"], mol[:2])


def test_lora_trains_adapters_and_projection_only(tiny_dir):
    lm = make(tiny_dir).train()
    b = batch(lm)
    lm(**b, mol_tokens=torch.randn(3, 8, MOL_DIM)).loss.backward()
    trainable = {n for n, p in lm.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("llm_proj.") for n in trainable)
    assert {n.split(".")[-4] for n in trainable if ".lora_" in n} == set(LORA_TARGETS)
    assert all(p.grad is not None for n, p in lm.named_parameters() if n in trainable)
    full = make(tiny_dir, lora=False)
    assert all(p.requires_grad for p in full.parameters())


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_dir):
    results = []
    for checkpointing in (False, True):
        lm = make(tiny_dir, lora_dropout=0.0, gradient_checkpointing=checkpointing).train()
        assert lm.model.get_base_model().is_activation_checkpointing == checkpointing
        loss = lm(**batch(lm), mol_tokens=torch.ones(3, 8, MOL_DIM)).loss
        loss.backward()
        results.append((loss.detach(), lm.llm_proj.weight.grad.clone()))
    torch.testing.assert_close(results[0], results[1])


def test_checkpointing_uses_the_older_switch_where_transformers_lacks_the_new_one():
    class Older(torch.nn.Module):  # transformers 5.17 (the GPU image): gradient_checkpointing_enable only
        def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
            self.kwargs = gradient_checkpointing_kwargs

    older = Older()
    enable_checkpointing(older)
    assert older.kwargs == {"use_reentrant": False}


def test_lora_save_load_round_trip_and_merge(tiny_dir, tmp_path):
    trained = make(tiny_dir, seed=1)
    b, mol = batch(trained), torch.randn(3, 8, MOL_DIM)
    expected = trained(**b, mol_tokens=mol).logits
    trained.save_trainable(tmp_path / "adapter")
    fresh = make(tiny_dir, seed=2)
    assert not torch.allclose(fresh(**b, mol_tokens=mol).logits, expected)
    fresh.load_trainable(tmp_path / "adapter")
    torch.testing.assert_close(fresh(**b, mol_tokens=mol).logits, expected, rtol=0, atol=0)
    fresh.merge_lora()
    assert not any(".lora_" in n for n, _ in fresh.named_parameters())
    torch.testing.assert_close(fresh(**b, mol_tokens=mol).logits, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(CheckpointError, match="no llm_proj.safetensors"):
        make(tiny_dir).load_trainable(tmp_path)
    fresh.save_trainable(tmp_path / "merged")  # merged: llm_proj only
    with pytest.raises(CheckpointError, match="no LoRA adapter"):
        make(tiny_dir).load_trainable(tmp_path / "merged")
    fewer = make(tiny_dir, lora_target_modules=["q_proj"])
    fewer.save_trainable(tmp_path / "q-only")
    with pytest.raises(CheckpointError, match="adapter lacks .* LoRA weights"):
        make(tiny_dir).load_trainable(tmp_path / "q-only")


def test_llama2_like_tokenizer_gets_mol_and_pad_tokens(tmp_path):
    build_demo_model(CORPUS, tmp_path, shape=TINY, special_tokens=("<unk>", "<s>", "</s>"))
    lm = make(tmp_path)
    tok = lm.tokenizer
    assert tok.convert_ids_to_tokens(lm.mol_token_id) == "<mol>" and lm.mol_token_id == len(tok) - 1
    assert lm.model.get_input_embeddings().num_embeddings == len(tok)
    assert tok.pad_token == "<unk>"
    ids = tok(lm.format_prompt("a", "C"))["input_ids"]
    assert ids.count(lm.mol_token_id) == 8  # one token each, never split into bytes
    assert lm(**batch(lm), mol_tokens=torch.zeros(3, 8, MOL_DIM)).loss.isfinite()


def test_bfloat16_weights(tiny_dir):
    lm = make(tiny_dir, dtype="bfloat16")
    assert lm.model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert lm.llm_proj.weight.dtype == torch.float32
    out = lm(**batch(lm), mol_tokens=torch.randn(3, 8, MOL_DIM))
    assert out.loss.isfinite()


def test_bad_paths_and_options_are_clear_errors(tiny_dir, tmp_path):
    with pytest.raises(CheckpointError, match="not a local HuggingFace model folder"):
        build_llama(LlamaLMConfig(path=str(tmp_path / "nowhere")), input_dim=MOL_DIM)
    with pytest.raises(MolbridgeError, match="lora_target_modules"):
        make(tiny_dir, lora_target_modules=["query_key_value"])
    with pytest.raises(MolbridgeError, match="prompt_template has no {mol_tokens}"):
        make(tiny_dir, prompt_template="{instruction} {molecule}")
    with pytest.raises(MolbridgeError, match="prompt_template: KeyError\\('smiles'\\)"):
        make(tiny_dir, prompt_template="{instruction} {smiles} {mol_tokens}")


def test_param_report_and_7b_meta_build():
    config = LlamaLMConfig()
    report = meta_report(config, input_dim=768)
    h, n, i, v = (LLAMA2_7B[k] for k in ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size"))
    base = 2 * v * h + n * (4 * h * h + 3 * h * i + 2 * h) + h
    assert report["llm_base"] == base == 6_738_415_616
    lora = n * config.lora_r * (4 * (h + h) + 2 * (h + i) + (i + h))  # q,k,v,o; gate,up; down
    projection = 768 * h + h
    assert report["trainable"] == lora + projection == 19_988_480 + 3_149_824
    assert report["total"] == base + 2 * h + lora + projection  # + the <mol> rows of embeddings and lm_head
    assert report["bf16_weights_gib"] == pytest.approx(report["total"] * 2 / 2**30)
    small = param_report(torch.nn.Linear(3, 2))
    assert (small["total"], small["trainable"]) == (8, 8)


def test_recipe_section_is_validated_and_builds_through_the_registry(tiny_dir):
    registry = load_plugins(external=False).registry
    base = {"encoder": {"name": "unimol"}, "projector": {"name": "qformer"}, "task": {"name": "retrieval"}}
    with pytest.raises(RecipeError) as error:
        validate(base | {"llm": {"name": "vicuna", "dtype": "float16", "lora_r": "eight", "lora_rank": 8}}, registry)
    message = str(error.value)
    assert "llm.dtype" in message and "float32, bfloat16" in message
    assert "llm.lora_r" in message and "llm.lora_rank" in message and "did you mean 'lora_r'" in message
    recipe = validate(
        base
        | {"llm": {"name": "llama", "path": str(tiny_dir), "lora_target_modules": ["q_proj"], "max_new_tokens": 5}},
        registry,
    )
    lm = registry.build("llm", recipe.llm, input_dim=MOL_DIM)
    assert {n.split(".")[-4] for n, p in lm.named_parameters() if ".lora_" in n} == {"q_proj"}
    assert lm.generation.max_new_tokens == 5 and lm.format_prompt("a", "C").startswith("Below is an instruction")


def test_weights_do_not_load_under_another_tokenizer_of_the_same_size(tmp_path):
    shape = {**TINY, "vocab_size": 300}  # both corpora have more merges than this: equal shapes
    build_demo_model(CORPUS, tmp_path / "ours", seed=0, shape=shape)
    build_demo_model([text.replace("molecule", "compound") for text in CORPUS], tmp_path / "other", seed=0, shape=shape)
    state = make(tmp_path / "ours", lora=False).state_dict()
    make(tmp_path / "ours", lora=False, seed=3).load_state_dict(state)  # same tokenizer: loads
    stranger = make(tmp_path / "other", lora=False)
    assert {k: v.shape for k, v in stranger.state_dict().items()} == {k: v.shape for k, v in state.items()}
    with pytest.raises(CheckpointError, match="trained with a different tokenizer"):
        stranger.load_state_dict(state)
