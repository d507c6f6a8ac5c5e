"""Content-addressed feature caches: keys are digests, so nothing stale is ever read; writers never collide."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from molbridge.core import cache
from molbridge.core.cli import main


@pytest.fixture
def base(tmp_path, monkeypatch):
    monkeypatch.setenv("MOLBRIDGE_CACHE", str(tmp_path))
    return tmp_path / "features"


def test_entries_round_trip_and_only_their_own_key_hits(base):
    space = cache.FeatureCache(cache.digest("tower", 1), {"what": "test"})
    atoms, pooled = torch.randn(7, 4), torch.randn(4)
    key = cache.digest("CCO")
    assert space.missing([key, key]) == [key]
    space.put({key: {"atoms": atoms, "pooled": pooled}})
    (got,) = space.get([key]).values()
    assert torch.equal(got["atoms"], atoms) and torch.equal(got["pooled"], pooled)
    assert space.missing([key, cache.digest("CCN")]) == [cache.digest("CCN")]
    other = cache.FeatureCache(cache.digest("tower", 2))  # other weights: another namespace, no hit
    assert other.get([key]) == {} and other.missing([key]) == [key]


def test_a_changed_weight_or_input_changes_the_key():
    model = nn.Linear(3, 2)
    before = cache.weights_digest(model)
    with torch.no_grad():
        model.weight[0, 0] += 1e-6
    assert cache.weights_digest(model) != before
    positions = torch.zeros(3, 3)
    shifted = positions.clone()
    shifted[1, 2] = 1e-4
    assert cache.digest(positions) != cache.digest(shifted)
    assert cache.digest(positions) == cache.digest(positions.clone())


WRITER = """
import sys, torch
from molbridge.core import cache
space = cache.FeatureCache(sys.argv[1])
space.put({cache.digest(sys.argv[2], i): {"x": torch.full((3,), float(i))} for i in range(50)})
"""


def test_concurrent_writers_never_collide(base):
    namespace = cache.digest("shared")
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, namespace, name], env=os.environ.copy()) for name in "ab"
    ]
    assert all(w.wait(timeout=120) == 0 for w in writers)
    space = cache.FeatureCache(namespace)
    keys = [cache.digest(name, i) for name in "ab" for i in range(50)]
    assert space.missing(keys) == [] and len(list(base.joinpath(namespace).glob("part-*"))) == 2
    assert torch.equal(space.get([cache.digest("b", 7)])[cache.digest("b", 7)]["x"], torch.full((3,), 7.0))


def test_the_size_cap_removes_the_least_recently_used_namespaces(base, monkeypatch):
    old, new = cache.FeatureCache("old"), cache.FeatureCache("new")
    old.put({"k": {"x": torch.zeros(64 * 1024)}})  # 256 KiB each
    os.utime(old.folder, (1, 1))  # long unused
    monkeypatch.setenv(cache.ENV_MAX_GB, str(300 / 2**20))  # 300 KiB
    new.put({"k": {"x": torch.zeros(64 * 1024)}})
    assert [n["namespace"] for n in cache.namespaces()] == ["new"]


def test_bench_cache_info_and_clear(base, capsys):
    cache.FeatureCache("aaa", {"what": "text tower states"}).put({"k": {"x": torch.ones(2)}})
    assert main(["cache", "info", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [n["namespace"] for n in listing["namespaces"]] == ["aaa"]
    assert listing["namespaces"][0]["description"] == {"what": "text tower states"}
    assert main(["cache", "clear", "--older-than", "1"]) == 0 and cache.namespaces()  # used just now: kept
    assert main(["cache", "clear"]) == 0 and cache.namespaces() == []
