"""The paper's chain end to end on a format-exact miniature of the 3D-MoLM release, at tiny shapes on CPU.

The release is written by tests/test_data_release.py's writer (its folder layout, pickled LMDB records with its
keys, 3D-MoIT JSON), prepared with ``bench data prepare``, then the five phases run in the reference's order,
each finding the previous one by identity (``train.init_from: stage:...``).
"""

import json

import pytest

from molbridge.core.cli import main
from molbridge.core.data import open_dataset

#: The paper recipes' shapes, weights and hardware, shrunk to a CPU minute (everything else as the paper's).
TINY = [
    "data.name=data/3d-molm",
    "encoder.checkpoint=null",
    "encoder.preset=small",
    "projector.bert=null",
    "projector.num_layers=1",
    "train.precision=32-true",
    "train.strategy=auto",
    "train.devices=1",
    "train.accelerator=cpu",
    "train.deterministic=true",
    "train.max_steps=2",
    "train.warmup_steps=0",
    "train.grad_accum=1",
    "train.eval_every=0",
    "train.checkpoint_every=0",
    "data.batch_size=2",
    "data.eval_batch_size=2",
    "data.num_workers=0",
    "tracking.enabled=false",
]
LLM = ["llm.path=null", "llm.lora=false", "llm.dtype=float32", "llm.gradient_checkpointing=false", "llm.num_beams=1"]
PHASES = [  # (recipe, task, previous phase)
    # the compat profile loads SciBERT's MLM head into the captioning head; MiniLM stands in and has none
    ("3d-molm-stage1-pretrain", "retrieval", None, ["task.captioning_head_init=fresh"]),
    ("3d-molm-stage1", "retrieval", "3d-molm-stage1-pretrain", ["task.captioning_head_init=fresh"]),
    ("3d-molm-stage2-pretrain", "captioning", "3d-molm-stage1-pretrain", LLM + ["task.max_new_tokens=4"]),
    ("3d-molm-stage2", "captioning", "3d-molm-stage2-pretrain", LLM + ["task.max_new_tokens=4"]),
    (
        "3d-molm-stage3",
        "qa",
        "3d-molm-stage2-pretrain",
        LLM + ["task.max_new_tokens=4", "task.descriptive_max_new_tokens=4", "task.valid_per_task=1"],
    ),
]


@pytest.mark.slow
def test_the_paper_chain_runs_on_the_release_miniature(tmp_cwd, test_module, monkeypatch, capsys):
    test_module("test_data_release").write_release(tmp_cwd / "3d-mol-dataset")
    monkeypatch.setenv("MOLBRIDGE_CACHE", str(tmp_cwd / "cache"))
    assert main(["data", "prepare", "3d-mol-dataset", "--trust-pickle", "--out", "data/3d-molm"]) == 0
    results = {}
    for recipe, task, previous, extra in PHASES:
        code = main(["run", task, "--recipe", recipe, *TINY, *extra])
        assert code == 0, capsys.readouterr().err[-3000:]
        (metrics_file,) = (tmp_cwd / "runs" / recipe).glob("unimol-qformer-*/metrics.json")
        result = json.loads(metrics_file.read_text())
        assert result["status"] == "completed" and result["metrics"], recipe
        init = result["provenance"]["init_from"]
        if previous is None:
            assert init is None
        else:  # found by identity among the phases run so far
            assert f"runs/{previous}/unimol-qformer-" in init["source"] and init["loaded"] > 0, recipe
        results[recipe] = result
    sizes = results["3d-molm-stage1"]["provenance"]["task_description"]["sizes"]
    store = open_dataset("data/3d-molm")  # the release's own fine-tuning split, as prepared
    assert sizes == {split: len(store.split(split, "given-described")) for split in ("train", "valid", "test")}
    assert "test/skill" in results["3d-molm-stage3"]["metrics"]
