"""Two CPU processes (gloo) through the same loop and runner as a single-process run."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from molbridge.core import checkpoint

HELPER = Path(__file__).resolve().parent / "ddp_run.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ddp(tmp_path, task_extra: str = ""):
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(
        f"recipe: toy\ntask:\n  name: toy-regression\n{task_extra}data:\n  batch_size: 8\n"
        "train:\n  max_steps: 6\n  grad_accum: 2\n  strategy: ddp\n  devices: 2\n"
        "  accelerator: cpu\n  eval_every: 3\n  checkpoint_every: 3\n"
        "tracking:\n  enabled: false\n"
    )
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    return subprocess.run(
        [sys.executable, str(HELPER), str(recipe), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )


def test_two_process_cpu_ddp_run(tmp_path):
    done = run_ddp(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank} of 2 trained step 1" in done.stdout, done.stdout
        assert f"rank {rank} finished: completed" in done.stdout, done.stdout
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["provenance"]["world_size"] == 2 and metrics["provenance"]["steps"] == 6
    assert set(metrics["metrics"]) == {"test/mse", "test/mae"}
    last = tmp_path / "out" / "checkpoints" / "step-000006"
    assert {p.name for p in last.iterdir()} >= {
        "state.ckpt",
        "recipe.yaml",
        "rng-rank0.json",
        "rng-rank1.json",
        "manifest.json",
    }
    assert checkpoint.verify(last) is None  # the manifest covers every rank's file


@pytest.mark.slow
def test_nan_on_one_rank_stops_both(tmp_path):
    """Rank 1 alone sees a NaN at step 5 (its 9th micro-batch): both ranks must stop there together."""
    done = run_ddp(tmp_path, "  nan_at_call: 9\n  nan_rank: 1\n")
    assert done.returncode != 0
    assert "rank 1 stopped: non-finite loss at step 5 (rank 1); non-finite terms: loss, mse" in done.stdout
    assert "rank 0 stopped: non-finite loss at step 5 (rank 0); non-finite terms: on another rank" in done.stdout
    assert "step-000003" in done.stdout
    assert [p.name for p in (tmp_path / "out" / "checkpoints").glob("step-*")] == ["step-000003"]


RETRIEVAL = """\
recipe: retrieval-ddp
encoder: {name: unimol, preset: small}
projector: {name: qformer, num_layers: 1, max_text_length: 32}
task: {name: retrieval, lock_text_tower: false, matching_weight: 1, captioning_weight: 1, baseline: false}
data: {batch_size: 4, limit: 32, eval_limit: 12, eval_batch_size: 8}
train: {max_steps: 3, strategy: ddp, devices: 2, accelerator: cpu, eval_every: 3}
tracking: {enabled: false}
"""


def test_retrieval_stage1_under_two_process_ddp(tmp_path):
    """Contrastive features gathered across ranks (autograd all_gather), every loss on, every parameter used."""
    recipe = tmp_path / "retrieval.yaml"
    recipe.write_text(RETRIEVAL)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    done = subprocess.run(
        [sys.executable, str(HELPER), str(recipe), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 1 finished: completed" in done.stdout and "rank 0 finished: completed" in done.stdout
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["provenance"]["world_size"] == 2
    assert 0.0 <= metrics["metrics"]["test/full_m2t_acc"] <= 1.0
