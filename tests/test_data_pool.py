"""Preparation's worker pool: a crashing or hung worker costs one item, Ctrl-C stops every worker and resumes."""

import functools
import multiprocessing
import operator
import os
import time

import pytest

from molbridge.core.data import open_dataset
from molbridge.core.data import prepare as preparation
from molbridge.core.data.conformers import ConformerConfig, Failure, MoleculeInput
from molbridge.core.data.pool import CRASHED, HUNG, WorkerLost, WorkerPool
from molbridge.core.data.prepare import _from_lost, prepare


def test_crashed_and_hung_workers_cost_one_item_each_in_order():
    # operator.call(item) runs item(): stdlib callables, so the spawned workers can unpickle them
    items = [functools.partial(abs, -i) for i in range(12)]
    items[3] = functools.partial(os._exit, 7)  # a worker dies, like a segfault inside RDKit
    items[8] = functools.partial(time.sleep, 60)  # a worker hangs past the hard limit
    with WorkerPool(2, operator.call, hard_limit_s=1.0, chunksize=2) as pool:
        processes = [w.process for w in pool.workers]
        results = list(pool.map(items))
        assert pool.restarts == 2
    assert [r for i, r in enumerate(results) if i not in (3, 8)] == [i for i in range(12) if i not in (3, 8)]
    assert isinstance(results[3], WorkerLost) and results[3].kind == CRASHED and "code 7" in results[3].detail
    assert isinstance(results[8], WorkerLost) and results[8].kind == HUNG
    assert not any(p.is_alive() for p in processes)
    failure = _from_lost(MoleculeInput(5, "m5", smiles="CCO"), results[3])
    assert (failure.stage, failure.reason, failure.index) == ("worker", "worker_crashed", 5)


def test_interruption_stops_every_worker():
    items = [functools.partial(time.sleep, 0.05)] * 200
    with pytest.raises(KeyboardInterrupt), WorkerPool(2, operator.call) as pool:
        processes = [w.process for w in pool.workers]
        for n, _ in enumerate(pool.map(items)):
            if n == 5:
                raise KeyboardInterrupt
    assert not any(p.is_alive() for p in processes)


MIXED = ["CCO", "CCN", "c1ccccc1", "CC(=O)O", "CCCl", "C1CCCCC1", "OCC(O)CO", "CC#N"]


def test_interrupted_prepare_leaves_resumable_shards_and_no_workers(tmp_path, monkeypatch):
    inputs = [MoleculeInput(i, f"m{i}", smiles=s) for i, s in enumerate(MIXED)]
    config = ConformerConfig(seed=1)
    reference = tmp_path / "ref"
    prepare(inputs, reference, name="t", config=config, shard_size=2, workers=1, progress=False)
    real_write, written = preparation._write_shard, []

    def write_then_interrupt(out, k, results):
        real_write(out, k, results)
        written.append(k)
        if len(written) == 2:
            raise KeyboardInterrupt  # as if Ctrl-C arrived while the third shard was being computed

    monkeypatch.setattr(preparation, "_write_shard", write_then_interrupt)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare(inputs, out, name="t", config=config, shard_size=2, workers=2, progress=False)
    assert multiprocessing.active_children() == []
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    monkeypatch.setattr(preparation, "_write_shard", real_write)
    meta = prepare(inputs, out, name="t", config=config, shard_size=2, workers=2, progress=False)
    assert meta["molecules"] == len(MIXED) and len(open_dataset(out)) == len(MIXED)
    for name in ("shards/part-00000.parquet", "shards/part-00003.parquet", "splits.parquet"):
        assert (out / name).read_bytes() == (reference / name).read_bytes()


def test_lost_worker_becomes_a_named_failure_in_the_dataset(tmp_path):
    lost = _from_lost(MoleculeInput(0, "x", smiles="C"), WorkerLost(HUNG, "worker killed after 9 s"))
    assert isinstance(lost, Failure) and lost.reason == "timeout" and lost.stage == "worker"
