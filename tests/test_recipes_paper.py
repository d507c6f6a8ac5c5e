"""The paper recipe chain 3d-molm-stage1/2/3 and `bench recipes validate` sizing on the meta device.

Expected counts are computed here from the published shapes (Llama-2-7B, BERT-base/SciBERT, Uni-Mol base),
independently of the sizing code. The model paths point at folders that do not exist, so the known
shapes stand in whatever this machine holds.
"""

import pytest

from molbridge.core.cli import main
from molbridge.core.errors import RecipeError
from molbridge.core.plugins import load_plugins
from molbridge.core.recipe import load_recipe
from molbridge.core.sizing import size_recipe

PAPER = ("3d-molm-stage1", "3d-molm-stage2", "3d-molm-stage3")
PATH_VARIABLES = ("MOLBRIDGE_LLAMA2_7B", "MOLBRIDGE_SCIBERT", "MOLBRIDGE_UNIMOL_CKPT")
# Llama-2-7B
HIDDEN, LAYERS, FFN, VOCAB = 4096, 32, 11008, 32000
# SciBERT = BERT-base; Uni-Mol base width; 8 queries
BERT_HIDDEN, BERT_LAYERS, BERT_FFN, UNIMOL_DIM, QUERIES = 768, 12, 3072, 512, 8


@pytest.fixture(scope="module")
def registry():
    return load_plugins(external=False).registry


@pytest.fixture(autouse=True)
def missing_model_paths(monkeypatch, tmp_path):
    for variable in PATH_VARIABLES:
        monkeypatch.setenv(variable, str(tmp_path / "not-here" / variable.lower()))
    monkeypatch.delenv("MOLBRIDGE_3DMOLM_DATA", raising=False)


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def qformer_query_path() -> int:
    """What the soft tokens depend on: self-attention, cross-attention (every 2nd layer), the query FFN,
    the embedding LayerNorm, the queries and the LayerNorm on the encoder output."""
    norm = 2 * BERT_HIDDEN
    attention = 4 * linear(BERT_HIDDEN, BERT_HIDDEN) + norm
    cross = 2 * linear(BERT_HIDDEN, BERT_HIDDEN) + 2 * linear(UNIMOL_DIM, BERT_HIDDEN) + norm
    query_ffn = linear(BERT_HIDDEN, BERT_FFN) + linear(BERT_FFN, BERT_HIDDEN) + norm
    layers = BERT_LAYERS * (attention + query_ffn) + (BERT_LAYERS // 2) * cross
    return layers + norm + QUERIES * BERT_HIDDEN + 2 * UNIMOL_DIM


def test_the_three_paper_recipes_validate_with_the_papers_settings():
    stage1, stage2, stage3 = (load_recipe(name) for name in PAPER)
    for recipe in (stage1, stage2, stage3):
        assert (recipe.encoder.preset, recipe.encoder.hydrogens) == ("base", "no_h")
        assert "mol_pre_no_h" not in recipe.encoder.checkpoint  # MOLBRIDGE_UNIMOL_CKPT, set above, wins
        assert (recipe.projector.num_layers, recipe.projector.cross_attention_freq) == (12, 2)
        assert (recipe.projector.num_query_tokens, recipe.projector.text_pooling) == (8, "cls")
        assert recipe.train.frozen == ["encoder.*"] and recipe.train.precision == "bf16-mixed"
        assert recipe.train.weight_decay == 0.05
    task = stage1.task
    assert (task.contrastive_weight, task.matching_weight, task.captioning_weight) == (1.0, 1.0, 1.0)
    assert task.temperature == 0.1 and task.lock_text_tower is False
    for recipe in (stage2, stage3):
        llm = recipe.llm
        assert (llm.lora, llm.lora_r, llm.lora_alpha, llm.lora_dropout) == (True, 8, 32, 0.1)
        assert set(llm.lora_target_modules) == {
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        }
        assert llm.dtype == "bfloat16" and llm.gradient_checkpointing
    assert (stage1.train.lr, stage2.train.lr, stage3.train.lr) == (1e-4, 1e-4, 1e-5)
    assert (stage2.data.batch_size, stage2.train.grad_accum) == (16, 2)
    assert (stage3.data.batch_size, stage3.train.grad_accum, stage3.train.max_steps) == (8, 8, 40000)


def test_stages_chain_by_init_from_as_the_reference_scripts_and_paths_come_from_the_environment(monkeypatch):
    stage1, stage2, stage3 = (load_recipe(name) for name in PAPER)
    pretrain1, pretrain2 = load_recipe("3d-molm-stage1-pretrain"), load_recipe("3d-molm-stage2-pretrain")
    # stage1_pretrain.sh -> stage1_ft.sh and stage2_pretrain.sh; stage2_pretrain.sh -> stage2_ft.sh and stage3.
    # Each names the previous phase by its recipe; the run finds it by identity (tests/test_identity.py).
    assert pretrain1.train.init_from is None
    assert stage1.train.init_from == pretrain2.train.init_from == f"stage:{pretrain1.recipe}"
    assert stage2.train.init_from == stage3.train.init_from == f"stage:{pretrain2.recipe}"
    recipes = (stage1, stage2, stage3, pretrain1, pretrain2)
    assert len({r.recipe for r in recipes}) == 5 and all(r.output_dir is None for r in recipes)  # folders by identity
    monkeypatch.setenv("MOLBRIDGE_LLAMA2_7B", "/weights/llama")
    assert load_recipe("3d-molm-stage3").llm.path == "/weights/llama"
    monkeypatch.delenv("MOLBRIDGE_LLAMA2_7B")
    monkeypatch.delenv("MOLBRIDGE_UNIMOL_CKPT")
    defaults = load_recipe("3d-molm-stage3")
    assert defaults.llm.path == "/models/Llama-2-7b-hf"
    assert defaults.encoder.checkpoint.endswith("/mol_pre_no_h_220816.pt")


def test_stage3_sizing_has_llama2_7b_shape_and_trains_lora_projection_and_query_path(registry):
    sizing = size_recipe(load_recipe("3d-molm-stage3"), registry)
    llama = 2 * VOCAB * HIDDEN + LAYERS * (4 * HIDDEN * HIDDEN + 3 * HIDDEN * FFN + 2 * HIDDEN) + HIDDEN
    assert sizing.llm_base == llama == 6_738_415_616
    r = 8  # per layer: A (in x r) and B (r x out) for q, k, v, o (4096 -> 4096), gate, up (4096 -> 11008), down
    lora = LAYERS * r * (4 * (HIDDEN + HIDDEN) + 2 * (HIDDEN + FFN) + (FFN + HIDDEN))
    llm_proj = linear(BERT_HIDDEN, HIDDEN)
    rows = {row.name: row for row in sizing.rows}
    assert (rows["llm LoRA"].parameters, rows["llm LoRA"].trainable) == (lora, lora) == (19_988_480,) * 2
    assert rows["llm llm_proj"].trainable == llm_proj == 3_149_824
    assert rows["llm llama"].parameters == llama + 2 * HIDDEN  # the <mol> row of the embeddings and the LM head
    assert rows["llm llama"].trainable == 0 and rows["encoder unimol"].trainable == 0
    assert rows["projector qformer"].trainable == qformer_query_path()
    assert sizing.total.trainable == lora + llm_proj + qformer_query_path()
    assert sizing.total.train_state_gib == pytest.approx(sizing.total.trainable * 16 / 2**30)
    notes = "\n".join(sizing.notes)
    for key in ("llm.path", "projector.bert", "encoder.checkpoint"):
        assert f"{key} " in notes and "NOT FOUND" in notes
    assert "Llama-2-7B's shape" in notes and "SciBERT's shape" in notes


def test_validate_prints_the_table_and_reports_missing_weights_without_failing(capsys):
    assert main(["recipes", "validate", "3d-molm-stage1"]) == 0
    out = capsys.readouterr().out
    assert "recipe 3d-molm-stage1 is valid" in out and "projector qformer" in out
    assert "encoder.checkpoint" in out and "NOT FOUND" in out and "weights not loaded" in out
    assert main(["recipes", "validate", "retrieval"]) == 0  # the small CPU recipe is sized too
    assert "encoder unimol" in capsys.readouterr().out


def test_a_typo_in_a_paper_recipe_override_names_the_key(capsys):
    with pytest.raises(RecipeError) as error:
        load_recipe("3d-molm-stage2", ["llm.lora_rank=16", "train.max_step=10"])
    message = str(error.value)
    assert "llm.lora_rank" in message and "lora_r" in message
    assert "train.max_step" in message and "max_steps" in message
    assert main(["recipes", "validate", "3d-molm-stage2", "task.num_beam=2"]) == 2
    assert "task.num_beam" in capsys.readouterr().err


def test_a_freezing_glob_that_matches_nothing_is_reported_by_validate(capsys):
    assert main(["recipes", "validate", "3d-molm-stage1", "train.frozen=[encodr.*]"]) == 2
    err = capsys.readouterr().err
    assert "train.frozen" in err and "encodr.*" in err


def test_a_component_that_refuses_meta_tensors_is_sized_on_the_cpu(registry):
    # SchNet derives a Python float from a tensor in its constructor, which meta tensors cannot give
    recipe = load_recipe("retrieval", ["~encoder.preset"], registry, components={"encoder": "schnet"})
    sizing = size_recipe(recipe, registry)
    assert sizing.row("encoder schnet").parameters > 0
    assert any("encoder: cannot be built on the meta device" in note for note in sizing.notes)


def test_pretraining_phases_use_the_enriched_descriptions_of_the_release_pretrain_split():
    for name, steps in (("3d-molm-stage1-pretrain", 58750), ("3d-molm-stage2-pretrain", 23510)):
        recipe = load_recipe(name)
        assert (recipe.data.split, recipe.task.text_field, recipe.train.max_steps) == (
            "given-pretrain",
            "enriched_description",
            steps,
        )
    for name, split, steps in (
        ("3d-molm-stage1", "given-described", 460),
        ("3d-molm-stage2", "given-described", 930),
        ("3d-molm-stage3", "given", 40000),  # stage 3 also trains on the PubChemQC molecules, which have no text
    ):
        recipe = load_recipe(name)
        assert recipe.data.split == split and recipe.train.max_steps == steps
        assert recipe.data.name == "data/3d-molm"  # MOLBRIDGE_3DMOLM_DATA unset: the documented --out
        assert recipe.task.get("text_field", "description") == "description"


def test_validate_names_a_dataset_without_the_given_split(monkeypatch, capsys):
    monkeypatch.setenv("MOLBRIDGE_3DMOLM_DATA", "molbridge-mini")
    assert main(["recipes", "validate", "3d-molm-stage1", "--no-size"]) == 2
    err = capsys.readouterr().err
    assert "dataset 'molbridge-mini'" in err and "no split kind 'given-described'" in err
    assert "its split kinds: random, scaffold" in err
