"""Stages 2 and 3 end to end on a slice of molbridge-mini with the demo LLM: captioning, QA, stage chaining."""

import json

import pytest

from molbridge.core.cli import main
from molbridge.core.plugins import get_registry
from molbridge.core.recipe import load_recipe
from molbridge.plugins.tasks.captioning import shape_fact_metrics
from molbridge.plugins.tasks.llm_stage import freeze_unused

TINY = [
    "encoder.preset=small",
    "projector.num_layers=1",
    "data.batch_size=4",
    "data.limit=16",
    "data.eval_limit=6",
    "data.eval_batch_size=8",
    "train.max_steps=2",
    "train.warmup_steps=0",
    "tracking.enabled=false",
    "train.init_from=null",
]


@pytest.fixture(autouse=True)
def demo_cache(tmp_path_factory, monkeypatch):
    """One demo-LLM build for the module, in a private cache."""
    monkeypatch.setenv("MOLBRIDGE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_captioning_writes_caption_metrics_and_baseline(tmp_cwd):
    assert main(["run", "captioning", "--output", "out", *TINY, "task.max_new_tokens=8"]) == 0
    result = json.loads((tmp_cwd / "out" / "metrics.json").read_text())
    for name in ("bleu2", "bleu4", "rouge1", "rouge2", "rougeL", "meteor"):
        assert 0.0 <= result["metrics"][f"test/{name}"] <= 1.0
        assert 0.0 < result["metrics"][f"test/baseline_{name}"] <= 1.0  # copied captions share the templates
    for name in ("shape_acc", "baseline_shape_acc", "baseline_rg_valid"):
        assert 0.0 <= result["metrics"][f"test/{name}"] <= 1.0
    assert result["metrics"]["test/baseline_rg_valid"] == 1.0  # a copied caption always states a radius
    assert result["provenance"]["task_description"]["sizes"] == {"train": 16, "valid": 6, "test": 6}
    answers = [json.loads(line) for line in (tmp_cwd / "out" / "answers-test.jsonl").read_text().splitlines()]
    assert len(answers) == 6 and {"smiles", "reference", "answer"} <= set(answers[0])


def test_shape_facts_score_the_class_and_the_radius_of_gyration():
    references = [
        "It is rod-like, with a radius of gyration of 4.0 \u00c5.",
        "Its 3D shape is disc-like (normalised principal moments 0.30, 0.70); radius of gyration 3.0 \u00c5.",
        "The MMFF geometry is sphere-like and spans a radius of gyration of 2.0 \u00c5.",
    ]
    predictions = [
        "It is rod-like, with a radius of gyration of 4.5 \u00c5.",  # right class, 0.5 off
        "The MMFF geometry is sphere-like and spans a radius of gyration of 2.0 \u00c5.",  # wrong, 1.0
        "It has no stereocentres.",
    ]  # states neither: wrong class, no radius
    metrics = shape_fact_metrics(predictions, references)
    assert metrics == pytest.approx({"shape_acc": 1 / 3, "rg_valid": 2 / 3, "rg_mae": 0.75})
    assert shape_fact_metrics(["x"], ["A caption of another kind."]) == {}


def test_a_stage_without_its_previous_run_says_which_to_run_first(tmp_cwd, capsys):
    assert main(["run", "qa", *TINY[:-1]]) == 2
    error = capsys.readouterr().err
    assert "train.init_from=stage:captioning: no completed run of recipe 'captioning' matches under runs/" in error
    assert "run that stage first (e.g. bench run captioning with the same --encoder/--projector/--llm" in error


def test_qa_scores_every_property_against_the_training_mean(tmp_cwd):
    tasks = "task.tasks=[Molecular Weight,LogP,Description]"
    assert main(["run", "qa", "--output", "out", *TINY, tasks, "task.descriptive_max_new_tokens=8"]) == 0
    result = json.loads((tmp_cwd / "out" / "metrics.json").read_text())
    metrics = result["metrics"]
    for prop in ("Molecular Weight", "LogP"):
        assert metrics[f"test/{prop}/baseline_mae"] > 0 and metrics[f"test/{prop}/baseline_medae"] > 0
        assert 0.0 <= metrics[f"test/{prop}/valid_rate"] <= 1.0
    assert "test/skill" in metrics and "test/Description/bleu4" in metrics
    mixture = result["provenance"]["task_description"]["train_mixture"]
    assert set(mixture) == {"Molecular Weight", "LogP", "Description"}


def test_qa_mixture_follows_size_to_the_quarter():
    registry = get_registry()
    recipe = load_recipe("qa", TINY + ["data.limit=200"], registry)
    task = registry.build("task", recipe.task, recipe=recipe, registry=registry)
    train = task.splits["train"]  # the mixture is drawn when the examples are (on first use)
    sizes = {}
    molecules = task.molecules["train"]
    for row in molecules.indices:
        for record in molecules.store[int(row)].instructions:
            sizes[record["task"]] = sizes.get(record["task"], 0) + 1
    weights = {t: n**0.25 for t, n in sizes.items()}
    total = sum(sizes.values())
    for t, count in task.train_mixture.items():
        assert abs(count - total * weights[t] / sum(weights.values())) <= 1, t
    assert len(train) == sum(task.train_mixture.values())
    # the descriptive QA task has 3x the records of a property but is drawn only 3^0.25 = 1.32x as often
    assert 1.2 < task.train_mixture["Descriptive QA"] / task.train_mixture["LogP"] < 1.45


def test_stage2_starts_from_stage1_and_freezes_what_soft_tokens_do_not_use(tmp_cwd):
    stage1 = ["run", "retrieval", "--output", "stage1", *TINY, "task.baseline=false", "projector.max_text_length=32"]
    assert main(stage1) == 0
    assert (
        main(
            [
                "run",
                "captioning",
                "--output",
                "stage2",
                *TINY,
                "task.max_new_tokens=4",
                "task.baseline=false",
                "train.init_from=stage1",
            ]
        )
        == 0
    )
    report = json.loads((tmp_cwd / "stage2" / "metrics.json").read_text())["provenance"]["init_from"]
    assert report["loaded"] > 0 and report["source"].endswith("state.ckpt")
    assert set(report["new"]) == {"llm.llm_proj", "llm.model", "llm.tokenizer_digest"}  # the rest: stage 1
    assert "log_temperature" in report["unused"]


def test_freeze_unused_keeps_the_query_path_trainable():
    registry = get_registry()
    recipe = load_recipe("captioning", TINY, registry)
    projector = registry.build("projector", recipe.projector, input_dim=16)
    frozen = set(freeze_unused(projector, 16))
    for name in (
        "bert.embeddings.word_embeddings.weight",
        "text_proj.weight",
        "match_head.weight",
        "lm_head.bias",
        "mol_proj.weight",
        "bert.encoder.layer.0.intermediate.dense.weight",
    ):
        assert name in frozen, name
    for name, parameter in projector.named_parameters():
        assert parameter.requires_grad == (name not in frozen), name
        assert parameter.grad is None
    assert {
        "query_tokens",
        "encoder_norm.weight",
        "bert.encoder.layer.0.crossattention.self.key.weight",
        "bert.encoder.layer.0.attention.self.query.weight",
    }.isdisjoint(frozen)
