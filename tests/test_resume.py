"""Exact resume: a run interrupted by a signal and resumed ends bit-identical to one never stopped."""

import os
import signal

import pytest
import torch

from molbridge.core import checkpoint
from molbridge.core.errors import CheckpointError
from molbridge.core.recipe import validate
from molbridge.core.runner import run

# Dropout draws from the torch RNG, grad_accum=2 and 8 batches per epoch make the interruption fall
# mid-epoch and the run cross epochs, so the RNG, sampler and scheduler states all have to be right.
RECIPE = {
    "recipe": "toy",
    "seed": 7,
    "task": {"name": "toy-regression", "dropout": 0.2},
    "data": {"batch_size": 8},
    "train": {
        "max_steps": 12,
        "grad_accum": 2,
        "warmup_steps": 3,
        "lr": 1e-2,
        "accelerator": "cpu",
        "deterministic": True,
        "eval_every": 4,
        "log_every": 2,
    },
    "tracking": {"enabled": False},
}


class SignalAt:
    """Sends this process ``signum`` after the given step, ``times`` times; with ``once``, only in the first run that
    reaches the step (a sweep's later children run on)."""

    def __init__(self, step: int, signum: int = signal.SIGINT, times: int = 1, once: bool = False):
        self.step, self.signum, self.times, self.once, self.sent = step, signum, times, once, False

    def on_step_end(self, loop, step, logs):
        if step == self.step and not (self.once and self.sent):
            self.sent = True
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)


def final_weights(out):
    state = torch.load(checkpoint.latest_checkpoint(out / "checkpoints") / checkpoint.STATE_FILE, weights_only=True)
    return state["step"], state["model"]


@pytest.mark.parametrize(
    ("signum", "bucketing"),
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["SIGINT", "SIGTERM", "SIGINT-bucketed"],
)
def test_interrupted_and_resumed_run_equals_uninterrupted(toy_registry, tmp_cwd, signum, bucketing):
    recipe = validate({**RECIPE, "data": {**RECIPE["data"], "bucketing": bucketing}}, toy_registry)
    straight = run(recipe, toy_registry, output=tmp_cwd / "straight")
    stopped = run(recipe, toy_registry, output=tmp_cwd / "resumed", callbacks=[SignalAt(5, signum)])
    assert stopped["status"] == "interrupted" and stopped["provenance"]["steps"] == 5
    assert stopped["checkpoint"].endswith("step-000005") and stopped["metrics"] == {}
    resumed = run(recipe, toy_registry, output=tmp_cwd / "resumed")
    assert resumed["status"] == "completed" and resumed["provenance"]["resumed_from"].endswith("step-000005")

    (step_a, weights_a), (step_b, weights_b) = (
        final_weights(tmp_cwd / "straight"),
        final_weights(tmp_cwd / "resumed"),
    )
    assert step_a == step_b == 12
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert resumed["metrics"] == straight["metrics"] and resumed["best"] == straight["best"]


def test_second_signal_aborts(toy_registry, tmp_cwd):
    recipe = validate(RECIPE, toy_registry)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs as a background job
    with pytest.raises(KeyboardInterrupt, match="second signal"):
        run(recipe, toy_registry, output=tmp_cwd / "out", callbacks=[SignalAt(2, times=2)])
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def _final_weights(out):
    return torch.load(
        checkpoint.latest_checkpoint(out / checkpoint.CHECKPOINTS) / checkpoint.STATE_FILE, weights_only=True
    )["model"]


def test_init_from_starts_a_run_from_another_runs_weights(toy_registry, tmp_cwd):
    first = {**RECIPE, "train": {**RECIPE["train"], "max_steps": 4}}
    run(validate(first, toy_registry), toy_registry, output=tmp_cwd / "stage1")
    trained = _final_weights(tmp_cwd / "stage1")

    # a negligible lr (0 is refused): the second run keeps what it was initialised with, so its weights show what loaded
    second = {
        **RECIPE,
        "seed": 99,
        "train": {
            **RECIPE["train"],
            "max_steps": 1,
            "lr": 1e-12,
            "min_lr": 0.0,
            "warmup_steps": 0,
            "init_from": str(tmp_cwd / "stage1"),
        },
    }
    result = run(validate(second, toy_registry), toy_registry, output=tmp_cwd / "stage2")
    report = result["provenance"]["init_from"]
    assert report["loaded"] == len(trained) and report["new"] == {} and report["unused"] == {}
    assert report["source"].endswith("step-000004/state.ckpt")
    for name, value in _final_weights(tmp_cwd / "stage2").items():
        torch.testing.assert_close(value, trained[name], rtol=0, atol=1e-9, msg=name)


def test_init_from_errors_name_the_problem(toy_registry, tmp_cwd):
    run(
        validate({**RECIPE, "train": {**RECIPE["train"], "max_steps": 4}}, toy_registry),
        toy_registry,
        output=tmp_cwd / "small",
    )
    wider = {
        **RECIPE,
        "task": {**RECIPE["task"], "hidden": 32},
        "train": {**RECIPE["train"], "init_from": str(tmp_cwd / "small")},
    }
    with pytest.raises(CheckpointError, match=r"does not fit the model: .*\(16.*vs model \(32"):
        run(validate(wider, toy_registry), toy_registry, output=tmp_cwd / "wider")
    missing = {**RECIPE, "train": {**RECIPE["train"], "init_from": str(tmp_cwd / "nowhere")}}
    with pytest.raises(CheckpointError, match="nowhere does not exist; run the previous stage first"):
        run(validate(missing, toy_registry), toy_registry, output=tmp_cwd / "missing")
    (tmp_cwd / "empty").mkdir()
    empty = {**RECIPE, "train": {**RECIPE["train"], "init_from": str(tmp_cwd / "empty")}}
    with pytest.raises(CheckpointError, match="empty is not a run directory"):
        run(validate(empty, toy_registry), toy_registry, output=tmp_cwd / "missing")


def test_provenance_names_the_commit_the_run_started_on(toy_registry, tmp_cwd, monkeypatch):
    """A long run outlives commits to its tree: metrics.json names the one it was started on."""
    from molbridge.core import runner

    head = {"commit": "started-on"}

    class CommitWhileTraining:
        def on_step_end(self, loop, step, logs):
            head["commit"] = "committed-while-training"

    monkeypatch.setattr(runner, "_git_commit", lambda: head["commit"])
    recipe = validate(RECIPE, toy_registry)
    result = run(recipe, toy_registry, output=tmp_cwd / "out", callbacks=[CommitWhileTraining()])
    assert head["commit"] == "committed-while-training"
    assert result["provenance"]["git_commit"] == "started-on"
