"""``bench run retrieval`` end to end on a slice of molbridge-mini: metrics, baseline, swaps, MLflow, compare."""

import json

import pytest
import torch
from lightning_fabric import Fabric

from molbridge.core import batch as keys
from molbridge.core.cli import main
from molbridge.core.cli.run import results_table
from molbridge.core.contracts import Projector, TextSide
from molbridge.core.plugins import get_registry
from molbridge.core.recipe import load_recipe
from molbridge.core.registry import build_components
from molbridge.plugins.tasks.stage1 import CACHED_TEXT

# A run sized for a test: tiny models, a slice of each split, the text tower trained, every loss and the
# re-ranking on (the packaged recipe locks the text tower and trains the contrastive loss only).
SMALL = [
    "encoder.preset=small",
    "projector.num_layers=1",
    "projector.max_text_length=32",
    "task.lock_text_tower=false",
    "task.matching_weight=1",
    "task.captioning_weight=1",
    "task.rerank_top_k=4",
    "data.batch_size=4",
    "data.limit=24",
    "data.eval_limit=12",
    "data.eval_batch_size=8",
    "train.max_steps=2",
    "train.eval_every=2",
    "train.warmup_steps=0",
]
LOCKED = ["task.lock_text_tower=true", "task.matching_weight=0", "task.captioning_weight=0", "task.rerank_top_k=0"]
PROTOCOL = [
    f"{scope}_{direction}_{metric}"
    for scope in ("inbatch", "full", "rerank_inbatch", "rerank_full")
    for direction in ("m2t", "t2m")
    for metric in ("acc", "r20")
]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """unimol and schnet runs logged to one MLflow store (module scope: they are the slow part)."""
    root = tmp_path_factory.mktemp("retrieval")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        results = {}
        for encoder in ("unimol", "schnet"):
            assert main(["run", "retrieval", "--encoder", encoder, "--output", f"out-{encoder}", *SMALL]) == 0
            results[encoder] = json.loads((root / f"out-{encoder}" / "metrics.json").read_text())
        yield root, results


def test_metrics_json_has_the_protocol_for_model_and_baseline(two_runs):
    _, results = two_runs
    metrics = results["unimol"]["metrics"]
    for name in PROTOCOL:
        assert 0.0 <= metrics[f"test/{name}"] <= 1.0, name
    for name in PROTOCOL[:8]:  # the baseline is scored with the same protocol, without re-ranking
        assert 0.0 <= metrics[f"test/baseline_{name}"] <= 1.0, name
    # 12 test molecules: in batches of 64 and the full set are the same candidates here
    assert metrics["test/inbatch_m2t_acc"] == metrics["test/full_m2t_acc"]
    described = results["unimol"]["provenance"]["task_description"]
    assert described["sizes"] == {"train": 24, "valid": 12, "test": 12}
    assert str(described["baseline"]["alpha"]) in described["baseline"]["validation_scores"]
    assert results["unimol"]["best"]["metric"] == "valid/full_acc"


def test_ranks_artifact_reproduces_the_logged_full_set_metrics(two_runs):
    root, results = two_runs
    ranks = json.loads((root / "out-unimol" / "ranks-test.json").read_text())
    metrics = results["unimol"]["metrics"]
    assert ranks["split"] == "test" and len(ranks["ids"]) == 12 == len(set(ranks["ids"]))
    for who, prefix in (("model", "test/full"), ("baseline", "test/baseline_full")):
        for direction in ("m2t", "t2m"):
            values = ranks[who][direction]
            assert len(values) == 12 and set(values) <= set(range(12))
            assert sum(r == 0 for r in values) / 12 == pytest.approx(metrics[f"{prefix}_{direction}_acc"])


def test_results_table_puts_model_and_baseline_side_by_side(two_runs):
    _, results = two_runs
    table = results_table(results["unimol"])
    assert "| metric | model | baseline |" in table
    row = next(line for line in table.splitlines() if line.startswith("| test/full_m2t_acc |"))
    assert row.count("|") == 4 and row.split("|")[3].strip() != ""


def test_compare_shows_unimol_and_schnet_side_by_side(two_runs, capsys):
    root, _ = two_runs
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        capsys.readouterr()
        assert main(["compare", "--task", "retrieval"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("|  |"))
    assert "schnet-qformer-none-s0" in header and "unimol-qformer-none-s0" in header
    assert "| encoder | schnet | unimol |" in out or "| encoder | unimol | schnet |" in out
    assert "test/full_m2t_acc" in out


def test_linear_projector_random_split_and_locked_text_tower(tmp_cwd):
    args = ["run", "retrieval", "--projector", "linear", "--output", "out", "data.split=random", *SMALL, *LOCKED]
    assert main(args) == 0
    result = json.loads((tmp_cwd / "out" / "metrics.json").read_text())
    assert result["status"] == "completed"
    assert result["provenance"]["task_description"]["split"] == "random"
    assert 0.0 <= result["metrics"]["test/full_t2m_r20"] <= 1.0


def test_locked_text_tower_caches_what_the_tower_computes():
    registry = get_registry()
    recipe = load_recipe("retrieval", SMALL + LOCKED + ["task.baseline=false"], registry)
    task = registry.build("task", recipe.task, recipe=recipe, registry=registry)
    model = task.build_model(build_components(recipe, registry))
    projector = model.projector
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert "projector.bert.embeddings.word_embeddings.weight" in frozen
    assert "projector.bert.encoder.layer.0.attention.self.query.weight" in frozen
    assert "projector.match_head.weight" in frozen and "projector.lm_head.bias" in frozen  # their losses are off
    for trains in (
        "projector.text_proj.weight",
        "projector.query_tokens",
        "projector.bert.encoder.layer.0.crossattention.self.key.weight",
        "projector.bert.encoder.layer.0.intermediate_query.dense.weight",
        "encoder.embed_tokens.weight",
    ):
        assert trains not in frozen, trains
    samples = [task.splits["train"][i] for i in range(3)]
    batch = task.collate(samples)
    assert keys.TEXT_INPUT_IDS not in batch  # a locked tower's batch skips tokenising: its states are cached
    projector.eval()
    with torch.no_grad():
        live = projector.text_features(*projector.tokenize([s[keys.TEXT] for s in samples]))
        assert torch.allclose(projector.project_text(batch[CACHED_TEXT]), live, atol=1e-5)


def test_swapping_the_projector_keeps_the_shared_text_tower_options():
    recipe = load_recipe("retrieval", [], get_registry(), {"projector": "linear"})
    assert recipe.projector.name == "linear"
    assert recipe.projector.num_layers == 2 and recipe.projector.text_pooling == "mean"  # from the recipe
    assert recipe.projector.num_tokens == 8  # linear's own default


def test_evaluation_is_deterministic():
    registry = get_registry()
    recipe = load_recipe("retrieval", SMALL + ["task.baseline=false", "data.augment=true"], registry)
    fabric = Fabric(accelerator="cpu", devices=1)
    torch.manual_seed(0)
    task = registry.build("task", recipe.task, recipe=recipe, registry=registry)
    model = task.build_model(build_components(recipe, registry))
    first = task.evaluate(model, fabric, "test")
    model.train()  # dropout on between the two evaluations must not matter
    assert task.evaluate(model, fabric, "test") == first


def test_a_projector_without_a_text_side_gets_the_tasks_text_tower():
    """Any projector takes part in stage 1: the task's own BERT text tower reads its soft tokens as a prefix."""

    class Pooled(Projector):  # forward only: the whole projector contract
        def __init__(self, width):
            super().__init__()
            self.num_tokens, self.output_dim, self.proj = 4, 32, torch.nn.Linear(width, 4 * 32)

        def forward(self, encoded):
            keep = (~encoded.padding_mask).unsqueeze(-1).float()
            mean = (encoded.atom_embeddings * keep).sum(1) / keep.sum(1)
            return self.proj(mean).view(-1, 4, 32)

    registry = get_registry()
    recipe = load_recipe(
        "retrieval",
        SMALL
        + ["task.baseline=false", "task.lock_text_tower=false", "task.matching_weight=1", "task.captioning_weight=1"],
        registry,
    )
    task = registry.build("task", recipe.task, recipe=recipe, registry=registry)
    components = build_components(recipe, registry)
    components.projector = Pooled(components.encoder.output_dim)
    model = task.build_model(components)
    assert not isinstance(components.projector, TextSide) and isinstance(model.text, TextSide)
    names = {name for name, _ in model.named_parameters()}
    assert {"projector.proj.weight", "text_side.adapt.weight", "text_side.match_head.weight"} <= names
    assert not any(n.startswith("text_side._projector") for n in names)  # the projector is registered once
    terms = model(task.collate([task.splits["train"][i] for i in range(4)]))
    terms["loss"].backward()
    assert set(terms) == {"contrastive", "matching", "captioning", "loss"}
    assert components.projector.proj.weight.grad.abs().sum() > 0  # every loss reaches the projector
    assert task.describe()["text_side"].startswith("the task's text tower")
