"""Evaluation under DDP: each rank computes its share of the batches, and the metrics equal one process's."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from molbridge.core import distributed

HELPER = Path(__file__).resolve().parent / "ddp_eval.py"


def test_batches_shard_and_gather_back_in_order(monkeypatch):
    ranges = distributed.batches(10, 4)
    assert ranges == [range(0, 4), range(4, 8), range(8, 10)]
    shares = {}
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "world", lambda rank=rank: (rank, 2))
        shares[rank] = distributed.shard(ranges)
    assert shares == {0: [range(0, 4), range(8, 10)], 1: [range(4, 8)]}

    def all_gather_object(parts, mine):  # what torch.distributed returns on every rank
        parts[:] = [shares[0], shares[1]]

    monkeypatch.setattr(distributed.dist, "all_gather_object", all_gather_object)
    assert distributed.gather(shares[0]) == ranges


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _evaluate(task: str, devices: int, tmp_path: Path) -> dict:
    out = tmp_path / f"{task}-{devices}.json"
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_port()),
        "OMP_NUM_THREADS": "1",
        "MOLBRIDGE_CACHE": str(tmp_path / "cache"),
    }
    done = subprocess.run(
        [sys.executable, str(HELPER), task, str(devices), str(out)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("task", ["retrieval", "qa"])
def test_two_process_evaluation_equals_one_process(task, tmp_path):
    one = _evaluate(task, 1, tmp_path)
    two = _evaluate(task, 2, tmp_path)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert two["metrics"] == one["metrics"]  # identical, not close: the same batches, computed the same way
    assert two.get("answers") == one.get("answers")
    if task == "qa":
        assert len(one["answers"]) > 10 and len(set(one["answers"])) > 1
