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


FILLER = """
import json, os, sys, time
from pathlib import Path
import torch
from molbridge.core import cache
namespace, name, mode = sys.argv[1:4]
here = Path(os.environ["MOLBRIDGE_CACHE"])
(here / f"ready-{name}").touch()
while mode == "share" and len(list(here.glob("ready-*"))) < 2:  # start filling together
    time.sleep(0.01)
done = []
def compute(inputs):
    if mode == "die":
        (here / "claimed").touch()
        time.sleep(2)
        os._exit(1)  # dies holding its claim, having written nothing
    time.sleep(0.1)
    done.extend(inputs)
    return [{"x": torch.full((2,), float(i))} for i in inputs]
computed = cache.FeatureCache(namespace).fill({cache.digest(i): i for i in range(48)}, compute, chunk=4, progress=False)
print(json.dumps({"computed": computed, "inputs": done}))
"""


def _filler(namespace: str, name: str, mode: str) -> subprocess.Popen:
    command = [sys.executable, "-c", FILLER, namespace, name, mode]
    return subprocess.Popen(command, env=os.environ.copy(), stdout=subprocess.PIPE, text=True)


def test_processes_filling_one_cache_share_the_work(base):
    namespace = cache.digest("cooperative")
    fillers = [_filler(namespace, name, "share") for name in "ab"]
    reports = [json.loads(f.communicate(timeout=120)[0]) for f in fillers]
    a, b = (set(r["inputs"]) for r in reports)
    assert a and b and not a & b and a | b == set(range(48))  # each chunk computed once, by one of them
    assert [r["computed"] for r in reports] == [len(a), len(b)]
    entries = cache.FeatureCache(namespace).get([cache.digest(i) for i in range(48)])
    assert all(torch.equal(entries[cache.digest(i)]["x"], torch.full((2,), float(i))) for i in range(48))


def test_a_chunk_whose_claimant_died_is_computed_by_the_one_waiting(base):
    namespace = cache.digest("orphaned")
    dying = _filler(namespace, "dying", "die")
    while not (base.parent / "claimed").exists():
        assert dying.poll() is None, "the dying filler exited before claiming"
    survivor = json.loads(_filler(namespace, "survivor", "alone").communicate(timeout=120)[0])
    assert dying.wait(timeout=60) == 1
    assert survivor["computed"] == 48 and sorted(survivor["inputs"])[:4] == [0, 1, 2, 3]


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


TINY_STAGE2 = [
    "run",
    "captioning",
    "encoder.preset=small",
    "projector.num_layers=1",
    "data.batch_size=4",
    "data.limit=16",
    "data.eval_limit=6",
    "data.eval_batch_size=8",
    "train.max_steps=3",
    "train.warmup_steps=0",
    "tracking.enabled=false",
    "train.init_from=null",
    "task.max_new_tokens=6",
    "task.baseline=false",
]


def _stage2(tmp_path, out, *extra):
    assert main([*TINY_STAGE2, "--output", str(tmp_path / out), *extra]) == 0
    return json.loads((tmp_path / out / "metrics.json").read_text())


def test_a_frozen_encoder_is_computed_once_for_every_run_that_shares_it(base, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = _stage2(tmp_path, "first")
    report = first["provenance"]["task_description"]["encoder_cache"]
    # train conformers (up to 3 each: training draws one per epoch) + valid + test, all computed this once
    assert report["computed"] == report["conformers"] > 16 + 12
    again = _stage2(tmp_path, "again", "seed=0", "train.log_every=1")  # another run of the same frozen encoder
    assert again["provenance"]["task_description"]["encoder_cache"]["computed"] == 0
    assert again["metrics"] == first["metrics"]
    live = _stage2(tmp_path, "live", "data.cache=false")  # the encoder run at every step instead
    assert live["provenance"]["task_description"]["encoder_cache"] is None
    assert live["metrics"].keys() == first["metrics"].keys()
    for name, value in live["metrics"].items():  # cached rows equal the live encoder's up to float noise
        assert abs(value - first["metrics"][name]) <= 1e-3, name
    other = _stage2(tmp_path, "other", "encoder.preset=small", "seed=1")  # other initial weights: other namespace
    assert other["provenance"]["task_description"]["encoder_cache"]["namespace"] != report["namespace"]


def test_a_resumed_run_caches_the_frozen_encoder_it_continues_with(base, tmp_path, monkeypatch, test_module):
    """Stage 2 from a trained stage-1 encoder, interrupted and resumed, equals the run never stopped: the frozen
    encoder's outputs are cached from the run's own weights, not from the encoder as built before the restore
    (which is what a resumed run cached before, and then trained and was scored on)."""
    from molbridge.core.plugins import get_registry
    from molbridge.core.recipe import load_recipe
    from molbridge.core.runner import run

    monkeypatch.chdir(tmp_path)
    stage1 = ["run", "retrieval", "--output", "stage1", *TINY_STAGE2[2:8], "train.max_steps=2", "task.baseline=false"]
    assert main([*stage1, "train.warmup_steps=0", "tracking.enabled=false"]) == 0
    registry = get_registry()
    overrides = [o for o in TINY_STAGE2[2:] if not o.startswith(("train.max_steps", "train.init_from"))]
    overrides += ["train.max_steps=4", "train.checkpoint_every=2", "train.init_from=stage1"]
    recipe = load_recipe("captioning", overrides, registry)
    straight = run(recipe, registry, output=tmp_path / "straight")
    ctrl_c = test_module("test_resume").SignalAt(2)  # SIGINT after step 2: the loop checkpoints and returns
    stopped = run(recipe, registry, output=tmp_path / "resumed", callbacks=[ctrl_c])
    assert stopped["status"] == "interrupted"
    resumed = run(recipe, registry, output=tmp_path / "resumed")
    assert resumed["provenance"]["resumed_from"].endswith("step-000002")
    cached = [r["provenance"]["task_description"]["encoder_cache"] for r in (straight, resumed)]
    assert cached[1]["namespace"] == cached[0]["namespace"] and cached[1]["computed"] == 0  # the same encoder
    assert resumed["metrics"] == straight["metrics"]


def test_a_second_retrieval_run_encodes_no_text_and_fits_no_baseline(base, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny = [
        "run",
        "retrieval",
        "encoder.preset=small",
        "projector.num_layers=1",
        "data.limit=16",
        "data.eval_limit=8",
        "data.batch_size=8",
        "train.max_steps=2",
        "train.warmup_steps=0",
        "tracking.enabled=false",
    ]
    results = []
    runs = ("cold", []), ("warm", ["train.log_every=1"]), ("off", ["data.cache=false"])
    for out, extra in (*runs, ("other", ["projector.pretrained=false"])):  # last: another text tower
        assert main([*tiny, "--output", str(tmp_path / out), *extra]) == 0
        results.append(json.loads((tmp_path / out / "metrics.json").read_text()))
    other = results.pop()["provenance"]["task_description"]
    assert other["text_cache"]["computed"] == other["text_cache"]["texts"] and other["baseline"]["fit"] == "computed"
    cold, warm, off = (r["provenance"]["task_description"]["text_cache"] for r in results)
    assert cold["computed"] == cold["texts"] > 0 and warm == cold | {"computed": 0}  # the second run encodes none
    assert off == {"texts": cold["texts"], "computed": cold["texts"], "cached": False}
    # nor fits the fingerprint baseline again: the same molecules and targets find the first run's fit
    fits = [r["provenance"]["task_description"]["baseline"].pop("fit") for r in results]
    assert fits == ["computed", "read from the cache", "computed"]
    assert len({json.dumps(r["provenance"]["task_description"]["baseline"]) for r in results}) == 1
    assert results[1]["metrics"] == results[0]["metrics"] == results[2]["metrics"]  # the same states and fit


def test_a_tokenizer_keeps_its_fingerprint_when_used():
    from molbridge.plugins.projectors.stage1 import default_bert, load_tokenizer

    tokenizer = load_tokenizer(default_bert())
    before = cache.tokenizer_fingerprint(tokenizer)
    tokenizer(["a text", "another"], padding="longest", truncation=True, max_length=8)  # records its settings
    assert cache.tokenizer_fingerprint(tokenizer) == before
    tokenizer.add_tokens(["[NEW]"])
    assert cache.tokenizer_fingerprint(tokenizer) != before  # another vocabulary: another key
