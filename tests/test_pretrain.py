"""The ``pretrain`` task: targets aligned to encoder positions, masking, seeded noise, the loss falling through the
one loop, exact resume, and stage 1 starting from its encoder by ``train.init_from``."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from molbridge.core import batch as keys
from molbridge.core import checkpoint
from molbridge.core.cli import main
from molbridge.core.errors import MolbridgeError, RecipeError
from molbridge.core.plugins import get_registry
from molbridge.core.recipe import load_recipe
from molbridge.core.registry import build_components
from molbridge.core.runner import run
from molbridge.core.testing import TASK_CHECK_OVERRIDES, check_task
from molbridge.plugins.encoders import unimol
from molbridge.plugins.tasks.pretrain import CLEAN_POSITIONS, DRAW, TARGETS, NoisyConformers
from molbridge.plugins.tasks.pretrain_views import choose_masked
from molbridge.plugins.tasks.retrieval import RetrievalTask

SMALL = ["data.limit=32", "data.eval_limit=16", "data.batch_size=8", "data.eval_batch_size=8", "tracking.enabled=false"]


def build(encoder="unimol", overrides=()):
    registry = get_registry()
    recipe = load_recipe("pretrain", [*SMALL, *overrides], registry, {"encoder": encoder})
    task = registry.build("task", recipe.task, recipe=recipe, registry=registry)
    return task, task.build_model(build_components(recipe, registry))


def heavy_distances(item, positions_key):
    z, pos = item[keys.ATOMIC_NUMBERS], np.asarray(item[positions_key], dtype=np.float64)
    heavy = pos[z != 1]
    return np.linalg.norm(heavy[:, None] - heavy[None, :], axis=-1)


@pytest.mark.parametrize("encoder", ["unimol", "schnet"])
def test_task_passes_its_contract_checks(encoder):
    check_task("pretrain", overrides=[*TASK_CHECK_OVERRIDES, f"encoder.name={encoder}"])


def test_heads_are_named_apart_from_the_encoder_which_stage_1_names_alike():
    task, model = build()
    names = [name for name, _ in model.named_parameters()]
    assert all(n.startswith(("encoder.", "pretrain_heads.")) for n in names)
    assert {n.split(".")[1] for n in names if n.startswith("pretrain_heads.")} == {"mask", "denoise", "distance"}
    registry = get_registry()
    stage1 = load_recipe("retrieval", ["task.baseline=false", "projector.num_layers=1"], registry)
    components = build_components(stage1, registry)
    stage1_model = RetrievalTask.assemble(stage1.task, components.encoder, components.projector, None)
    ours = {n: t.shape for n, t in model.state_dict().items() if n.startswith("encoder.")}
    theirs = {n: t.shape for n, t in stage1_model.state_dict().items() if n.startswith("encoder.")}
    assert ours == theirs


def test_unimol_targets_are_the_heavy_atoms_pair_distances_at_the_encoders_positions():
    task, _ = build()
    data = task.datasets()["train"]
    items = [data[i] for i in range(4)]
    batch = task.collate(items)
    targets, tokens = batch[TARGETS], batch[keys.ENCODER_INPUT]["src_tokens"]
    for b, item in enumerate(items):
        n = int((item[keys.ATOMIC_NUMBERS] != 1).sum())
        assert tokens[b, 0] == unimol.CLS and tokens[b, n + 1] == unimol.SEP  # atoms sit at positions 1..n
        assert int(targets["pairs"][b].sum()) == n * (n - 1) // 2  # atom pairs only, each once
        assert not targets["pairs"][b, 0].any() and not targets["pairs"][b, :, n + 1].any()
        for key, positions in (("clean_distance", CLEAN_POSITIONS), ("noisy_distance", keys.POSITIONS)):
            expected = heavy_distances(item, positions)
            assert np.allclose(targets[key][b, 1 : n + 1, 1 : n + 1].numpy(), expected, atol=1e-4), key
    noise = np.abs(items[0][keys.POSITIONS] - items[0][CLEAN_POSITIONS])
    assert 0 < noise.mean() < 0.5  # noise_std 0.2 Å


def test_schnet_keeps_hydrogens_in_its_targets_and_skips_masking():
    task, model = build("schnet")
    assert set(model.weights) == {"denoise", "distance"}
    assert any("mask" in skipped for skipped in task.describe()["skipped"])
    items = [task.datasets()["train"][i] for i in range(2)]
    targets = task.collate(items)[TARGETS]
    assert "tokens" not in targets
    for b, item in enumerate(items):
        n = len(item[keys.ATOMIC_NUMBERS])  # all_h: every atom
        pos = np.asarray(item[CLEAN_POSITIONS], dtype=np.float64)
        expected = np.linalg.norm(pos[:, None] - pos[None, :], axis=-1)
        assert int(targets["pairs"][b].sum()) == n * (n - 1) // 2
        assert np.allclose(targets["clean_distance"][b, :n, :n].numpy(), expected, atol=1e-4)


def test_masking_follows_unimol_and_keeps_edge_types_consistent():
    task, _ = build(overrides=["task.mask_rate=0.3"])
    data = task.datasets()["train"]
    batch = task.collate([data[i] for i in range(16)])
    inputs, original = batch[keys.ENCODER_INPUT], batch[TARGETS]["tokens"]
    tokens = inputs["src_tokens"]
    chosen = original >= 0
    atoms = (tokens != unimol.PAD) & (tokens != unimol.CLS) & (tokens != unimol.SEP)
    assert chosen.any() and not (chosen & ~atoms).any()  # only atoms are chosen
    assert 0.2 < chosen.sum() / atoms.sum() < 0.4
    assert (tokens[chosen] == unimol.DICTIONARY.index("[MASK]")).float().mean() > 0.75
    assert (tokens[~chosen & atoms] != unimol.DICTIONARY.index("[MASK]")).all()
    real = (tokens != unimol.PAD)[:, :, None] & (tokens != unimol.PAD)[:, None, :]
    edges = tokens[:, :, None] * len(unimol.DICTIONARY) + tokens[:, None, :]
    assert torch.equal(inputs["src_edge_type"][real], edges[real])  # recomputed from the masked tokens
    rng = np.random.default_rng(0)
    counts = [len(choose_masked(10, 0.15, rng)) for _ in range(4000)]
    assert set(counts) == {1, 2} and np.mean(counts) == pytest.approx(1.5, abs=0.05)  # probabilistic rounding


def test_noise_and_masks_are_seeded_per_molecule_and_epoch():
    task, _ = build()
    train, valid = task.datasets()["train"], task.datasets()["valid"]
    first = task.collate([train[i] for i in range(4)])
    again = task.collate([train[i] for i in range(4)])
    assert torch.equal(first[TARGETS]["tokens"], again[TARGETS]["tokens"])
    assert torch.equal(first[TARGETS]["noisy_distance"], again[TARGETS]["noisy_distance"])
    assert np.array_equal(valid[0][keys.POSITIONS], valid[0][keys.POSITIONS])
    before = train[0]
    train.set_epoch(1)
    after = train[0]
    assert before[DRAW][1] == 0 and after[DRAW][1] == 1
    assert not np.array_equal(
        before[keys.POSITIONS] - before[CLEAN_POSITIONS], after[keys.POSITIONS] - after[CLEAN_POSITIONS]
    )
    assert isinstance(train, NoisyConformers) and len(train.sizes()) == len(train)


def test_recipe_rejects_objectives_that_cannot_train():
    registry = get_registry()
    with pytest.raises(RecipeError, match="nothing to train"):
        load_recipe("pretrain", ["task.mask_weight=0", "task.denoise_weight=0", "task.distance_weight=0"], registry)
    with pytest.raises(RecipeError, match="needs task.noise_std > 0"):
        load_recipe("pretrain", ["task.noise_std=0"], registry)


def test_an_encoder_without_a_view_is_refused_by_name():
    with pytest.raises(MolbridgeError, match="encoder 'smiles' cannot be pre-trained"):
        build("smiles")


class Losses:
    def __init__(self, stop_at=None):
        self.values, self.stop_at = [], stop_at

    def on_step_end(self, loop, step, logs):
        self.values.append(logs)
        if step == self.stop_at:
            loop.request_stop()


def test_loss_falls_over_a_few_dozen_steps(tmp_cwd):
    recipe = load_recipe(
        "pretrain",
        [*SMALL, "data.limit=64", "data.batch_size=16", "train.max_steps=40", "train.warmup_steps=0", "train.lr=1e-3"],
        get_registry(),
    )
    losses = Losses()
    result = run(recipe, get_registry(), output=tmp_cwd / "out", callbacks=[losses])
    assert result["status"] == "completed"
    early = {k: np.mean([v[k] for v in losses.values[:5]]) for k in ("loss", "mask_loss", "distance_loss")}
    late = {k: np.mean([v[k] for v in losses.values[-10:]]) for k in early}
    assert late["loss"] < 0.75 * early["loss"], (early, late)
    assert late["mask_loss"] < early["mask_loss"] and late["distance_loss"] < early["distance_loss"]
    metrics = result["metrics"]
    assert result["best"]["metric"] == "valid/loss"
    for name in ("loss", "mask_acc", "baseline_mask_acc", "denoise_mae", "baseline_denoise_mae", "dist_mae"):
        assert np.isfinite(metrics[f"test/{name}"]), name


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_cwd):
    overrides = [*SMALL, "data.limit=16", "train.max_steps=6", "train.warmup_steps=0", "train.eval_every=3"]
    recipe = load_recipe("pretrain", overrides, get_registry())  # 2 batches per epoch: noise redrawn per epoch
    run(recipe, get_registry(), output=tmp_cwd / "straight")
    stopped = run(recipe, get_registry(), output=tmp_cwd / "resumed", callbacks=[Losses(stop_at=3)])
    assert stopped["status"] == "interrupted"
    resumed = run(recipe, get_registry(), output=tmp_cwd / "resumed")
    assert resumed["status"] == "completed"
    weights = [
        torch.load(checkpoint.latest_checkpoint(tmp_cwd / d / "checkpoints") / checkpoint.STATE_FILE, weights_only=True)
        for d in ("straight", "resumed")
    ]
    assert all(torch.equal(weights[0]["model"][k], weights[1]["model"][k]) for k in weights[0]["model"])
    assert resumed["metrics"] == pytest.approx(run(recipe, get_registry(), output=tmp_cwd / "straight")["metrics"])


@pytest.mark.slow
def test_stage_1_starts_from_the_pretrained_encoder(tmp_cwd):
    assert main(["run", "pretrain", "--encoder", "unimol", *SMALL, "train.max_steps=2", "train.warmup_steps=0"]) == 0
    (pretrain_run,) = [p.parent for p in (tmp_cwd / "runs").glob("pretrain-*/*/metrics.json")]
    pretrained = torch.load(
        checkpoint.latest_checkpoint(pretrain_run / "checkpoints") / checkpoint.STATE_FILE, weights_only=True
    )["model"]
    stage1 = [
        *SMALL,
        "train.max_steps=2",
        "train.warmup_steps=0",
        "task.baseline=false",
        "projector.num_layers=1",
        "train.init_from=stage:pretrain",
    ]
    assert main(["run", "retrieval", "--encoder", "unimol", "--output", "stage1", *stage1]) == 0
    report = json.loads((tmp_cwd / "stage1" / "metrics.json").read_text())["provenance"]["init_from"]
    assert pretrain_run.resolve() in Path(report["source"]).resolve().parents  # found by identity: stage:pretrain
    assert not [prefix for prefix in report["new"] if prefix.startswith("encoder")]
    assert report["loaded"] == sum(1 for name in pretrained if name.startswith("encoder."))
    assert set(report["unused"]) == {f"pretrain_heads.{h}" for h in ("mask", "denoise", "distance")}
