"""The training loop on the toy task: freezing, schedules, accumulation, NaN stop, the CLI end to end."""

import dataclasses
import json
import math

import pytest
import torch
from lightning_fabric import Fabric

from molbridge.core import checkpoint
from molbridge.core.cli import main
from molbridge.core.contracts import Components
from molbridge.core.errors import CheckpointError, NonFiniteLossError, RecipeError
from molbridge.core.loop import ResumableSampler, apply_freezing, build_optimizer, fit, lr_factor
from molbridge.core.recipe import validate
from molbridge.core.runner import run


def toy_recipe(registry, task=None, train=None, **top):
    data = {
        "recipe": "toy",
        "task": {"name": "toy-regression", **(task or {})},
        "data": {"batch_size": 8},
        "train": {"max_steps": 6, "accelerator": "cpu", "lr": 1e-2, "log_every": 1, **(train or {})},
        "tracking": {"enabled": False},
        **top,
    }
    return validate(data, registry)


def toy_fit(recipe, registry, out):
    fabric = Fabric(accelerator="cpu", devices=1, precision=recipe.train.precision)
    fabric.seed_everything(recipe.seed)
    task = registry.build("task", recipe.task, recipe=recipe, registry=registry)
    return fit(fabric, task, task.build_model(Components()), recipe, out)


def test_freezing_by_glob_patterns(toy_registry):
    task = toy_registry.build("task", toy_recipe(toy_registry).task, recipe=None, registry=toy_registry)
    model = task.build_model(Components())
    trainable, total = apply_freezing(model, ["encoder.*"], ["encoder.1.*"])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "encoder.0.weight",
        "encoder.0.bias",
    }
    assert (trainable, total) == (8 * 16 + 16, sum(p.numel() for p in model.parameters()))
    with pytest.raises(RecipeError, match="train.frozen: pattern 'decoder.*' matches no parameter"):
        apply_freezing(model, ["*"], ["decoder.*"])


def test_frozen_parameters_do_not_change(toy_registry, tmp_path):
    recipe = toy_recipe(toy_registry, train={"trainable": ["head.*"], "max_steps": 3})
    result, loop = toy_fit(recipe, toy_registry, tmp_path)
    initial = toy_registry.build("task", recipe.task, recipe=recipe, registry=toy_registry)
    torch.manual_seed(0)
    fresh = initial.build_model(Components())
    trained = loop.model.module if hasattr(loop.model, "module") else loop.model
    assert torch.equal(trained.encoder[0].weight, fresh.encoder[0].weight)
    assert not torch.equal(trained.head.weight, fresh.head.weight)


def test_no_weight_decay_on_biases_and_norms(toy_registry):
    task = toy_registry.build("task", toy_recipe(toy_registry).task, recipe=None, registry=toy_registry)
    model = task.build_model(Components())
    apply_freezing(model, ["*"], [])
    decay, no_decay = build_optimizer(model, lr=1e-3, weight_decay=0.1).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {p.ndim for p in decay["params"]} == {2} and {p.ndim for p in no_decay["params"]} == {1}
    assert len(no_decay["params"]) == 4  # two linear biases, the LayerNorm weight and bias


def test_lr_scale_sets_a_rate_per_pattern_through_the_schedule(toy_registry, tmp_path):
    recipe = toy_recipe(toy_registry, train={"lr_scale": {"head.*": 0.1}, "warmup_steps": 2, "min_lr": 1e-3})
    _, loop = toy_fit(recipe, toy_registry, tmp_path)
    names = {id(p): n for n, p in loop.model.module.named_parameters()}
    rates = {names[id(p)]: g["lr"] for g in loop.optimizer.param_groups for p in g["params"]}
    # 6 of 6 steps: the cosine has reached min_lr, and the head runs at a tenth of the schedule
    assert rates.pop("head.weight") == rates.pop("head.bias") == pytest.approx(1e-4)
    assert len(rates) == 4 and all(rate == pytest.approx(1e-3) for rate in rates.values())
    head = next(g for g in loop.optimizer.param_groups if g["lr"] < 5e-4 and g["weight_decay"] > 0)
    assert [names[id(p)] for p in head["params"]] == ["head.weight"]  # decay still only on matrices


def test_lr_scale_pattern_that_matches_nothing_is_an_error(toy_registry):
    task = toy_registry.build("task", toy_recipe(toy_registry).task, recipe=None, registry=toy_registry)
    model = task.build_model(Components())
    with pytest.raises(RecipeError, match=r"train.lr_scale.projector\.\* matches no trainable parameter"):
        build_optimizer(model, lr=1e-3, weight_decay=0.1, lr_scale={"projector.*": 0.5})
    with pytest.raises(RecipeError, match=r"train.lr_scale.head.\*=0.0 must be > 0"):
        toy_recipe(toy_registry, train={"lr_scale": {"head.*": 0.0}})


def test_warmup_then_cosine_to_min_lr():
    factors = [lr_factor(s, warmup=4, total=20, min_ratio=0.1) for s in range(21)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and math.isclose(factors[20], 0.1)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:], strict=False))


def test_sampler_is_seeded_sharded_and_resumable():
    full = list(ResumableSampler(10, seed=3))
    assert sorted(full) == list(range(10)) and full == list(ResumableSampler(10, seed=3))
    ranks = [list(ResumableSampler(10, seed=3, rank=r, world_size=3)) for r in range(3)]
    assert all(len(r) == 3 for r in ranks) and len(set(sum(ranks, []))) == 9
    resumed = ResumableSampler(10, seed=3)
    resumed.load_state_dict({"epoch": 0, "position": 4})
    assert list(resumed) == full[4:]
    resumed.next_epoch()
    assert list(resumed) != full and sorted(resumed) == list(range(10))


def test_grad_accumulation_equals_one_big_batch(toy_registry, tmp_path):
    common = {"max_steps": 1, "grad_clip": None, "trainable": ["*"]}
    small = toy_recipe(toy_registry, train={**common, "grad_accum": 4}, data={"batch_size": 4})
    big = toy_recipe(toy_registry, train={**common, "grad_accum": 1}, data={"batch_size": 16})
    _, a = toy_fit(small, toy_registry, tmp_path / "a")
    _, b = toy_fit(big, toy_registry, tmp_path / "b")
    for (name, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6), name


def test_nan_loss_stops_naming_step_terms_molecules_and_checkpoint(toy_registry, tmp_path):
    recipe = toy_recipe(toy_registry, task={"nan_at_call": 5}, train={"checkpoint_every": 2, "max_steps": 10})
    with pytest.raises(NonFiniteLossError) as caught:
        toy_fit(recipe, toy_registry, tmp_path)
    message = str(caught.value)
    good = checkpoint.step_dir(tmp_path / "checkpoints", 4)
    assert "at step 5" in message and "loss, mse" in message and "train-" in message and str(good) in message
    assert checkpoint.latest_checkpoint(tmp_path / "checkpoints") == good
    state = torch.load(good / checkpoint.STATE_FILE, weights_only=True)
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_corrupt_checkpoint_is_named(toy_registry, tmp_path):
    recipe = toy_recipe(toy_registry, train={"max_steps": 2})
    toy_fit(recipe, toy_registry, tmp_path)
    latest = checkpoint.latest_checkpoint(tmp_path / "checkpoints")
    (latest / checkpoint.STATE_FILE).write_bytes(b"not a checkpoint")
    again = toy_recipe(toy_registry, train={"max_steps": 4})
    fabric = Fabric(accelerator="cpu", devices=1)
    task = toy_registry.build("task", again.task, recipe=again, registry=toy_registry)
    with pytest.raises(CheckpointError, match=str(latest / checkpoint.STATE_FILE)):
        fit(fabric, task, task.build_model(Components()), again, tmp_path, resume_from=latest)


def test_unfinished_checkpoint_is_never_resumed(tmp_path):
    (tmp_path / "checkpoints" / "step-000002").mkdir(parents=True)
    torch.save({}, tmp_path / "checkpoints" / "step-000002" / checkpoint.STATE_FILE)
    (tmp_path / "checkpoints" / "step-000004.tmp").mkdir()
    torch.save({}, tmp_path / "checkpoints" / "step-000004.tmp" / checkpoint.STATE_FILE)
    assert checkpoint.resolve_resume("auto", tmp_path).name == "step-000002"
    assert checkpoint.resolve_resume("never", tmp_path) is None
    with pytest.raises(CheckpointError, match="no checkpoint there"):
        checkpoint.resolve_resume(str(tmp_path / "nowhere"), tmp_path)


def test_keeps_periodic_best_and_last(toy_registry, tmp_path):
    recipe = toy_recipe(
        toy_registry, train={"max_steps": 12, "checkpoint_every": 2, "keep_checkpoints": 2, "eval_every": 4}
    )
    result, _ = toy_fit(recipe, toy_registry, tmp_path)
    kept = [p.name for p in checkpoint.list_checkpoints(tmp_path / "checkpoints")]
    best = checkpoint.read_best(tmp_path / "checkpoints")
    assert best["step"] == result.best["step"] and f"step-{best['step']:06d}" in kept
    assert kept[-2:] == ["step-000010", "step-000012"] and len(kept) <= 3
    assert (tmp_path / "checkpoints" / kept[-1] / checkpoint.RECIPE_FILE).read_text().startswith("recipe: toy")


def test_bench_run_end_to_end(toy_registry, tmp_cwd, monkeypatch, capsys):
    monkeypatch.setattr("molbridge.core.cli.run.get_registry", lambda: toy_registry)
    recipe = tmp_cwd / "toy.yaml"
    recipe.write_text(
        "recipe: toy\ntask:\n  name: toy-regression\ndata:\n  batch_size: 8\n"
        "train:\n  max_steps: 5\n  accelerator: cpu\n  eval_every: 2\ntracking:\n  enabled: false\n"
    )
    code = main(["run", "toy-regression", "--recipe", str(recipe), "--output", "out", "--seed", "3", "train.lr=0.01"])
    assert code == 0
    written = json.loads((tmp_cwd / "out" / "metrics.json").read_text())
    assert set(written["metrics"]) == {"test/mse", "test/mae"} and written["evaluated_split"] == "test"
    assert written["provenance"]["seed"] == 3 and written["provenance"]["steps"] == 5
    assert written["provenance"]["task_description"]["sizes"]["train"] == 64
    printed = capsys.readouterr().out
    assert "| test/mse |" in printed and str(tmp_cwd / "out" / "metrics.json") in printed


def test_bench_run_rejects_unknown_task_and_mismatched_recipe(toy_registry, tmp_cwd, monkeypatch, capsys):
    monkeypatch.setattr("molbridge.core.cli.run.get_registry", lambda: toy_registry)
    assert main(["run", "toy-regresion"]) == 2
    assert "did you mean 'toy-regression'" in capsys.readouterr().err
    monkeypatch.setattr("molbridge.core.cli.run.get_registry", lambda: _with_second_task(toy_registry))
    other = tmp_cwd / "other.yaml"
    other.write_text("task:\n  name: toy-regression\n")
    assert main(["run", "toy-copy", "--recipe", str(other)]) == 2
    assert "the recipe is for task 'toy-regression', not 'toy-copy'" in capsys.readouterr().err


def _with_second_task(registry):
    toy = registry.get("task", "toy-regression")
    registry.add(dataclasses.replace(toy, name="toy-copy"))
    return registry


def test_run_resumes_automatically_in_the_same_output(toy_registry, tmp_cwd):
    first = run(toy_recipe(toy_registry, train={"max_steps": 3}), toy_registry, output=tmp_cwd / "o")
    second = run(toy_recipe(toy_registry, train={"max_steps": 5}), toy_registry, output=tmp_cwd / "o")
    assert first["provenance"]["steps"] == 3 and second["provenance"]["steps"] == 5
    assert second["provenance"]["resumed_from"].endswith("step-000003")


def test_bf16_mixed_precision_on_cpu(toy_registry, tmp_path):
    recipe = toy_recipe(toy_registry, train={"precision": "bf16-mixed", "max_steps": 3, "eval_every": 3})
    result, loop = toy_fit(recipe, toy_registry, tmp_path)
    assert result.status == "completed" and math.isfinite(result.best["value"])
    assert all(p.dtype == torch.float32 for p in loop.model.parameters())  # mixed: weights stay fp32


def test_train_scalars_are_logged_every_log_every_steps(toy_registry, tmp_path):
    recipe = toy_recipe(toy_registry, train={"max_steps": 6, "log_every": 2, "eval_every": 3})
    logged = []
    fabric = Fabric(accelerator="cpu", devices=1)
    task = toy_registry.build("task", recipe.task, recipe=recipe, registry=toy_registry)
    fit(
        fabric,
        task,
        task.build_model(Components()),
        recipe,
        tmp_path,
        log_metrics=lambda m, step: logged.append((step, m)),
    )
    train_steps = [step for step, m in logged if "train/loss" in m]
    assert train_steps == [2, 4, 6]
    assert {"train/loss", "train/mse", "train/lr", "train/grad_norm"} <= set(logged[0][1])
    assert [step for step, m in logged if "valid/mse" in m] == [3, 6]


def test_run_is_tracked_in_mlflow_and_resume_reopens_the_run(toy_registry, tmp_cwd):
    from mlflow.tracking import MlflowClient

    class StopAfter2:
        def on_step_end(self, loop, step, logs):
            if step == 2:
                loop.request_stop()

    uri = f"sqlite:///{tmp_cwd / 'mlflow.db'}"
    recipe = toy_recipe(toy_registry, train={"max_steps": 4, "log_every": 1, "eval_every": 2}, tracking={"uri": uri})
    client = MlflowClient(tracking_uri=uri)
    stopped = run(recipe, toy_registry, output=tmp_cwd / "out", callbacks=[StopAfter2()])
    assert client.get_run(stopped["tracking_run_id"]).info.status == "KILLED"
    result = run(recipe, toy_registry, output=tmp_cwd / "out")
    assert result["tracking_run_id"] == stopped["tracking_run_id"]
    tracked = client.get_run(result["tracking_run_id"])
    assert tracked.info.status == "FINISHED"
    assert tracked.data.metrics["test/mse"] == pytest.approx(result["metrics"]["test/mse"])
    assert tracked.data.metrics["best/valid/mse"] == pytest.approx(result["best"]["value"])
    history = client.get_metric_history(tracked.info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2, 3, 4]


def test_data_limit_restricts_training_samples(toy_registry, tmp_path):
    recipe = toy_recipe(toy_registry, train={"max_steps": 3}, data={"batch_size": 8, "limit": 16})
    result, loop = toy_fit(recipe, toy_registry, tmp_path)
    assert loop.sampler.size == 16 and (loop.sampler.epoch, loop.sampler.position) == (1, 8)
    assert loop.train_dataset.epoch == 1  # set_epoch reached the dataset through the Subset


def test_frozen_modules_run_in_eval_mode_while_the_rest_trains(toy_registry, tmp_path):
    """A frozen encoder's dropout must not fire during training (3D-MoLM pins its frozen encoder in eval mode)."""
    recipe = toy_recipe(toy_registry, task={"dropout": 0.5}, train={"frozen": ["encoder.*"], "max_steps": 2})
    _, loop = toy_fit(recipe, toy_registry, tmp_path)
    model = loop.model.module if hasattr(loop.model, "module") else loop.model
    loop.train_mode()
    assert not model.encoder.training and model.encoder[3].training is False  # its Dropout included
    assert model.training and model.head.training
    x = torch.randn(4, 8)
    assert torch.equal(model.encoder(x), model.encoder(x))  # no dropout noise in the frozen part
