"""Run identity: two configurations never share a name, a folder or a resume; nothing read on resume runs code."""

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from molbridge.core import checkpoint, identity
from molbridge.core.compare import gather_runs, group_runs, render_aggregate
from molbridge.core.errors import CheckpointError, MolbridgeError
from molbridge.core.recipe import validate
from molbridge.core.runner import run
from molbridge.core.tracking import default_uri

TOY = {
    "recipe": "toy",
    "task": {"name": "toy-regression", "size": 32},
    "data": {"batch_size": 8},
    "train": {"max_steps": 4, "lr": 0.01, "accelerator": "cpu", "checkpoint_every": 2},
}


def toy(registry, **sections):
    data = {key: value for key, value in TOY.items()}
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
    return validate(data, registry)


def test_two_learning_rates_are_two_runs_two_folders_two_mlflow_rows(toy_registry, tmp_cwd):
    """The reported repro: the same command with train.lr=0.5 after train.lr=0.01 must not resume the first."""
    low = run(toy(toy_registry, train={"lr": 0.01}), toy_registry)
    high = run(toy(toy_registry, train={"lr": 0.5}), toy_registry)
    assert low["path"] != high["path"] and low["metrics"] != high["metrics"]
    assert high["provenance"]["resumed_from"] is None
    names = [low["provenance"]["identity"]["name"], high["provenance"]["identity"]["name"]]
    assert names[0] != names[1] and all(n.startswith("none-none-none-s0-") for n in names)
    assert high["provenance"]["identity"]["differences"]["train.lr"] == 0.5
    client = MlflowClient(default_uri())
    rows = gather_runs(task="toy-regression", metrics=("test/*",))
    assert sorted(r.name for r in rows) == sorted(names)
    assert {client.get_run(r.run_id).data.params["train.lr"] for r in rows} == {"0.01", "0.5"}
    # bench compare groups by configuration and shows the param that tells them apart
    table = render_aggregate(group_runs(rows))
    assert table.splitlines()[0].startswith("| configuration | seeds | n | train.lr |")


def test_the_hash_ignores_what_cannot_change_a_result_and_seeds_share_it(toy_registry):
    base = identity.identify(toy(toy_registry), toy_registry)
    quieter = identity.identify(toy(toy_registry, train={"log_every": 1, "checkpoint_every": 3}), toy_registry)
    seeded = identity.identify(toy(toy_registry, seed=5), toy_registry)
    longer = identity.identify(toy(toy_registry, train={"max_steps": 8}), toy_registry)
    assert base.hash == quieter.hash == seeded.hash and seeded.name.endswith(f"-s5-{base.hash}")
    assert longer.hash != base.hash  # more steps change the schedule: another configuration
    assert identity.config_hash({"train.lr": 0.5}) == identity.config_hash({"train.lr": 0.5})  # stable
    assert identity.config_hash({"train.lr": 0.5}) != identity.config_hash({"train.lr": 0.05})


def test_resuming_a_folder_with_another_setting_is_refused_naming_every_key(toy_registry, tmp_cwd):
    run(toy(toy_registry), toy_registry, output=tmp_cwd / "out")
    other = toy(toy_registry, train={"lr": 0.5}, task={"hidden": 32})
    with pytest.raises(MolbridgeError) as refused:
        run(other, toy_registry, output=tmp_cwd / "out")
    message = str(refused.value)
    assert "train.lr: 0.01 (stored) -> 0.5 (now)" in message and "task.hidden: 16 (stored) -> 32 (now)" in message
    assert "--force-new" in message
    # the allow-list: a longer run continues from the stored checkpoint and says what changed
    longer = run(toy(toy_registry, train={"max_steps": 6}), toy_registry, output=tmp_cwd / "out")
    assert longer["provenance"]["resumed_from"].endswith("step-000004") and longer["provenance"]["steps"] == 6
    assert longer["provenance"]["resume_changes"] == {"train.max_steps": [4, 6]}
    # --force-new sets the folder aside (nothing deleted) and starts afresh with the other settings
    fresh = run(other, toy_registry, output=tmp_cwd / "out", force_new=True)
    assert fresh["status"] == "completed" and fresh["provenance"]["resumed_from"] is None
    (aside,) = tmp_cwd.glob("out.set-aside-*")
    assert (aside / "metrics.json").is_file()


def test_a_completed_run_is_not_trained_again_and_its_mlflow_run_stays_finished(toy_registry, tmp_cwd):
    first = run(toy(toy_registry), toy_registry)
    again = run(toy(toy_registry), toy_registry)
    assert again["reused"] and again["metrics"] == first["metrics"]
    client = MlflowClient(default_uri())
    assert client.get_run(first["tracking_run_id"]).info.status == "FINISHED"
    assert len(client.search_runs([client.get_experiment_by_name("toy-regression-molbridge-mini").experiment_id])) == 1


class Payload:
    """Unpickling this creates ``marker``: what a crafted checkpoint file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(folder, name, marker):
    """Write a code-running payload into ``folder/name`` in that file's own format, and refresh the manifest so the
    integrity check passes: the loader itself must refuse to run it."""
    path = folder / name
    if name.endswith(".ckpt"):
        torch.save({"model": Payload(marker), "step": 2}, path)
    elif name.endswith(".yaml"):
        path.write_text(f"!!python/object/apply:builtins.open ['{marker}', 'w']\n")
    elif name.endswith(".pt"):
        path.write_bytes(pickle.dumps(Payload(marker)))
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))  # a pickle where JSON is expected
    if folder.name.startswith("step-"):
        checkpoint.write_manifest(folder)


@pytest.mark.parametrize(
    "target",
    [
        "checkpoints/step-000002/state.ckpt",
        "checkpoints/step-000002/rng-rank0.json",
        "checkpoints/step-000002/rng-rank0.pt",  # the legacy name: never unpickled without --trust-pickle
        "checkpoints/step-000002/recipe.yaml",
        "checkpoints/step-000002/manifest.json",
        "checkpoints/best.json",
        "recipe.yaml",
        "run.json",
        "metrics.json",
    ],
)
def test_a_crafted_pickle_in_a_checkpoint_folder_never_runs(toy_registry, tmp_cwd, target):
    recipe = toy(toy_registry, train={"max_steps": 2, "eval_every": 2}, tracking={"enabled": False})
    run(recipe, toy_registry, output=tmp_cwd / "pristine")
    folder = tmp_cwd / "out"
    shutil.copytree(tmp_cwd / "pristine", folder)
    marker = tmp_cwd / "pwned"
    path = folder / target
    _plant(path.parent, path.name, marker)
    try:
        run(
            toy(toy_registry, train={"max_steps": 4, "eval_every": 2}, tracking={"enabled": False}),
            toy_registry,
            output=folder,
        )
    except (MolbridgeError, ValueError, yaml.YAMLError):
        pass  # refusing is fine; running the payload is not
    assert not marker.exists(), f"unpickling {target} ran code"


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one_before_any_setup(toy_registry, tmp_cwd, caplog):
    run(toy(toy_registry), toy_registry, output=tmp_cwd / "out")
    latest = checkpoint.latest_checkpoint(tmp_cwd / "out" / "checkpoints")
    assert latest.name == "step-000004"
    (latest / checkpoint.STATE_FILE).write_bytes(b"truncated")
    (tmp_cwd / "out" / "metrics.json").unlink()  # as if the run had died after saving
    assert "state.ckpt has 9 bytes, the manifest says" in checkpoint.verify(latest)
    with pytest.raises(CheckpointError, match="is unusable: state.ckpt has 9 bytes"):  # named explicitly: an error
        checkpoint.resolve_resume(str(latest), tmp_cwd / "out")
    result = run(toy(toy_registry, train={"max_steps": 6}), toy_registry, output=tmp_cwd / "out")
    assert result["provenance"]["resumed_from"].endswith("step-000002")
    assert f"checkpoint {latest} is unusable" in caplog.text


def test_the_previous_stage_is_found_by_identity_and_ambiguity_is_refused(toy_registry, tmp_cwd):
    stage1 = run(toy(toy_registry), toy_registry)
    later = toy(toy_registry, recipe="toy-stage2", train={"init_from": "stage:toy", "max_steps": 2})
    found = identity.resolve_stage("stage:toy", later)
    assert (
        str(found) == str(tmp_cwd / "runs/toy-regression-molbridge-mini" / stage1["provenance"]["identity"]["name"])
        or found.resolve() == (tmp_cwd / stage1["path"]).parent.resolve()
    )
    result = run(later, toy_registry)
    assert result["provenance"]["init_from"]["source"].startswith(str(found))
    other_seed = toy(toy_registry, recipe="toy-stage2", seed=3, train={"init_from": "stage:toy", "max_steps": 2})
    with pytest.raises(MolbridgeError, match=r"no completed run of recipe 'toy' matches .*seed 0 != 3"):
        identity.resolve_stage("stage:toy", other_seed)
    run(toy(toy_registry, train={"lr": 0.02}), toy_registry)  # a second run of recipe toy, seed 0
    with pytest.raises(MolbridgeError, match=r"2 completed runs match .*train.lr.*narrow the search"):
        identity.resolve_stage("stage:toy", later)


def test_a_run_is_identified_by_the_weights_it_starts_from_not_the_words_naming_them(toy_registry, tmp_cwd):
    """stage:RECIPE and the previous run's folder are one configuration; the previous stage trained further is
    another (never the stale result); every seed started from one shared run is one configuration."""
    stage1 = run(toy(toy_registry), toy_registry)
    folder = str((tmp_cwd / stage1["path"]).parent)
    by_stage = run(toy(toy_registry, recipe="toy-stage2", train={"init_from": "stage:toy"}), toy_registry)
    by_folder = run(toy(toy_registry, recipe="toy-stage2", train={"init_from": folder}), toy_registry)
    described = by_stage["provenance"]["identity"]["differences"]["train.init_from"]
    assert described == f"toy {stage1['provenance']['identity']['config_hash']} same seed, step-000004"
    assert by_folder["path"] == by_stage["path"] and by_folder["reused"]  # one run, not trained twice
    run(toy(toy_registry, train={"max_steps": 6}), toy_registry, output=Path(folder))  # stage 1 trained further
    further = run(toy(toy_registry, recipe="toy-stage2", train={"init_from": "stage:toy"}), toy_registry)
    assert further["path"] != by_stage["path"] and not further.get("reused")
    assert further["provenance"]["init_from"]["source"].endswith("step-000006/state.ckpt")
    shared = [toy(toy_registry, recipe="toy-stage2", seed=seed, train={"init_from": folder}) for seed in (1, 2)]
    names = [identity.identify(recipe, toy_registry) for recipe in shared]
    assert names[0].hash == names[1].hash != further["provenance"]["identity"]["config_hash"]
    assert names[0].diff["train.init_from"].endswith("seed 0, step-000006")


def test_a_state_file_outside_a_run_is_identified_by_its_bytes(toy_registry, tmp_cwd):
    run(toy(toy_registry), toy_registry, output=tmp_cwd / "out")
    state = tmp_cwd / "weights.ckpt"
    shutil.copy(checkpoint.latest_checkpoint(tmp_cwd / "out" / "checkpoints") / checkpoint.STATE_FILE, state)
    before = identity.identify(toy(toy_registry, train={"init_from": str(state)}), toy_registry)
    assert before.diff["train.init_from"].startswith("sha256 ")
    state.write_bytes(state.read_bytes() + b"\0")
    after = identity.identify(toy(toy_registry, train={"init_from": str(state)}), toy_registry)
    assert after.hash != before.hash
    gone = toy(toy_registry, train={"init_from": str(tmp_cwd / "gone")})
    assert identity.identify(gone, toy_registry).diff["train.init_from"].endswith("gone (not found)")
    with pytest.raises(CheckpointError, match="does not exist"):  # and the run fails on it before any set-up
        run(gone, toy_registry)
    assert not (tmp_cwd / "runs").exists()


def test_a_resume_may_name_the_same_weights_otherwise_but_not_other_weights(toy_registry, tmp_cwd):
    stage1 = run(toy(toy_registry), toy_registry)
    folder = str((tmp_cwd / stage1["path"]).parent)
    out = tmp_cwd / "stage2"
    run(toy(toy_registry, recipe="toy-stage2", train={"init_from": "stage:toy"}), toy_registry, output=out)
    longer = toy(toy_registry, recipe="toy-stage2", train={"init_from": folder, "max_steps": 6})
    assert run(longer, toy_registry, output=out)["provenance"]["resumed_from"].endswith("step-000004")
    other = run(toy(toy_registry, train={"lr": 0.02}), toy_registry)
    elsewhere = toy(toy_registry, recipe="toy-stage2", train={"init_from": str(Path(other["path"]).parent)})
    with pytest.raises(MolbridgeError, match="train.init_from: "):
        run(elsewhere, toy_registry, output=out)


def test_run_json_records_the_identity(toy_registry, tmp_cwd):
    result = run(toy(toy_registry, train={"lr": 0.02}), toy_registry)
    folder = (tmp_cwd / result["path"]).parent
    record = json.loads((folder / identity.RUN_FILE).read_text())
    assert record["name"] == folder.name and record["differences"]["train.lr"] == 0.02
    assert record["config_hash"] == identity.config_hash(record["differences"]) and folder.name.endswith(
        record["config_hash"]
    )


def test_a_setting_newer_than_the_stored_recipe_does_not_refuse_a_resume(caplog):
    stored = {"train": {"lr": 0.01}, "task": {"name": "t"}}
    current = {"train": {"lr": 0.01, "warmup_start_lr": 0.0}, "task": {"name": "t"}}
    assert identity.resume_conflicts(stored, current) == []
    assert "settings new since this run was started (not compared): train.warmup_start_lr" in caplog.text
    removed = identity.resume_conflicts({**stored, "data": {"old_key": 1}}, current)
    assert removed == ["data.old_key: 1 (stored) -> '<absent>' (now)"]  # a key that went away is still named
