"""``bench sweep`` on the toy task: a grid under one MLflow parent, reruns, failures, validation, resume."""

import json
import os

import pytest
from mlflow import MlflowClient

from molbridge.core import sweep as sweeps
from molbridge.core import sweep_launch as launch
from molbridge.core.cli import main
from molbridge.core.compare import gather_runs
from molbridge.core.tracking import default_uri

TOY_RECIPE = """\
recipe: toy
task: {name: toy-regression, size: 32}
data: {batch_size: 8}
train: {max_steps: 2, accelerator: cpu, log_every: 1}
"""


@pytest.fixture
def toy_cli(toy_registry, tmp_cwd, monkeypatch):
    """``bench`` sees the toy task; the recipe file is toy.yaml in the test's working directory."""
    import molbridge.core.plugins as plugins

    monkeypatch.setattr(plugins, "default_plugins", lambda strict=None: type("L", (), {"registry": toy_registry}))
    (tmp_cwd / "toy.yaml").write_text(TOY_RECIPE)
    return tmp_cwd


def write_sweep(folder, name, grid, **extra):
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps({"recipe": "toy.yaml", "grid": grid, **extra}))  # JSON is YAML
    return path


def children_of(client, parent_id):
    return client.search_runs(
        [client.get_run(parent_id).info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'"
    )


def test_grid_runs_every_child_under_one_parent_and_a_rerun_skips_them(toy_cli, capsys):
    # encoder is a component swap (validated against the real encoders; the toy task ignores it)
    path = write_sweep(toy_cli, "grid", {"encoder": ["unimol", "schnet"], "train.lr": [0.01, 0.05]}, seeds=2)
    assert main(["sweep", str(path)]) == 0
    out = capsys.readouterr().out
    state = json.loads((toy_cli / "runs/sweep-grid/sweep.json").read_text())
    keys = [c["key"] for c in state["children"]]
    assert keys == [f"{enc}-lr{lr}-s{seed}" for enc in ("unimol", "schnet") for lr in (0.01, 0.05) for seed in (0, 1)]
    assert {c["status"] for c in state["children"]} == {"completed"} and state["status"] == "completed"
    for child in state["children"]:
        folder = toy_cli / child["output_dir"]
        assert folder.parent == toy_cli / "runs/sweep-grid" and folder.name.startswith(
            f"{child['assignment']['encoder']}-none-none-s{child['seed']}-"
        )  # the identity bench run gives: components, seed and the hash of what differs
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["provenance"]["seed"] == child["seed"]
        assert child["monitor"] == {"name": "test/mse", "value": metrics["metrics"]["test/mse"]}
        assert f"| {child['config']} | {child['seed']} | completed | {child['monitor']['value']:.4f} |" in out

    client = MlflowClient(default_uri())
    parent = client.get_run(state["parent_run_id"])
    assert parent.info.run_name == "sweep-grid" and parent.info.status == "FINISHED"
    assert json.loads(parent.data.tags["sweep.grid"]) == {"encoder": ["unimol", "schnet"], "train.lr": [0.01, 0.05]}
    children = children_of(client, parent.info.run_id)
    assert len(children) == 8 and {r.info.status for r in children} == {"FINISHED"}
    assert {r.info.run_id for r in children} == {c["run_id"] for c in state["children"]}
    by_name = {r.info.run_name: r for r in children}
    assert set(by_name) == {os.path.basename(c["output_dir"]) for c in state["children"]}
    for child in state["children"]:
        run = by_name[os.path.basename(child["output_dir"])]
        assert run.data.params["train.lr"] == str(child["assignment"]["train.lr"])
    hashes = {r.data.tags["molbridge.config"] for r in children}
    assert len(hashes) == 4  # 4 configurations, each shared by its 2 seeds

    assert main(["sweep", str(path)]) == 0  # the same sweep again: nothing runs, the parent is reused
    again = json.loads((toy_cli / "runs/sweep-grid/sweep.json").read_text())
    assert again["parent_run_id"] == parent.info.run_id
    assert {c["status"] for c in again["children"]} == {"skipped"}
    assert [c["monitor"] for c in again["children"]] == [c["monitor"] for c in state["children"]]
    assert len(client.search_runs([parent.info.experiment_id])) == 9
    compared = gather_runs(experiments=[client.get_experiment(parent.info.experiment_id).name])
    assert {r.run_id for r in compared} == {c["run_id"] for c in state["children"]}  # the parent is not a column


def test_a_failing_child_is_recorded_and_the_others_finish(toy_cli, capsys):
    # task.size=4 passes validation but the loop refuses 4 samples for batches of 8 (after MLflow opened
    # the run); a missing train.init_from fails before the run is opened, so the sweep records one.
    grid = {"task.size": [32, 4], "train.init_from": [None, "nowhere"]}
    path = write_sweep(toy_cli, "faulty", grid)
    assert main(["sweep", str(path)]) == 1
    out = capsys.readouterr().out
    state = json.loads((toy_cli / "runs/sweep-faulty/sweep.json").read_text())
    status = {c["key"]: c["status"] for c in state["children"]}
    assert status == {
        "size32-init_fromnull-s0": "completed",
        "size32-init_fromnowhere-s0": "failed",
        "size4-init_fromnull-s0": "failed",
        "size4-init_fromnowhere-s0": "failed",
    }
    assert state["status"] == "failed" and state["failures"] == [k for k, s in status.items() if s == "failed"]
    errors = {c["key"]: c["error"] for c in state["children"]}
    assert errors["size4-init_fromnull-s0"].startswith(
        "RecipeError: 1 problem(s) in recipe toy:\n  - data.batch_size=8"
    )
    assert "CheckpointError: train.init_from: nowhere does not exist" in errors["size32-init_fromnowhere-s0"]
    assert "3 failed:" in out
    assert "size4-init_fromnull-s0: RecipeError: 1 problem(s) in recipe toy: - data.batch_size=8 is larger" in out

    client = MlflowClient(default_uri())
    assert client.get_run(state["parent_run_id"]).info.status == "FAILED"
    runs = {r.data.tags["sweep.child"]: r for r in children_of(client, state["parent_run_id"])}
    assert set(runs) == set(status)
    for key, run in runs.items():
        assert run.info.status == ("FINISHED" if status[key] == "completed" else "FAILED")
        assert run.data.tags.get("error") == errors[key]

    assert main(["sweep", str(path)]) == 1  # a rerun retries only the failed children
    rerun = json.loads((toy_cli / "runs/sweep-faulty/sweep.json").read_text())["children"]
    assert {c["key"]: c["status"] for c in rerun} == status | {"size32-init_fromnull-s0": "skipped"}


def test_grid_points_that_would_share_a_run_are_refused_before_anything_runs(toy_cli, toy_registry):
    """Keys that cannot change a result (where a run goes, how often it logs) give one identity: not a grid."""
    sweep = sweeps.load_sweep(write_sweep(toy_cli, "same", {"train.log_every": [1, 2], "train.lr": [0.01, 0.02]}))
    with pytest.raises(sweeps.SweepError) as caught:
        sweeps.run_sweep(sweep, toy_registry)
    problems = caught.value.problems
    assert len(problems) == 2 and all("train.log_every does not change a run's result" in p for p in problems)
    assert not (toy_cli / "runs").exists() or not any((toy_cli / "runs").rglob("metrics.json"))


def test_every_bad_key_is_reported_before_anything_runs(toy_cli, toy_registry):
    grid = {"train.lrr": [0.1, 0.2], "task.hiden": [4], "encoder": ["unimol", "schnett"]}
    sweep = sweeps.load_sweep(write_sweep(toy_cli, "bad", grid, seeds=2))
    with pytest.raises(sweeps.SweepError) as caught:
        sweeps.run_sweep(sweep, toy_registry)
    lrr, hiden, encoder = caught.value.problems  # one problem per bad key, naming the configurations
    assert lrr.startswith("train.lrr (grid train.lrr): unknown key in the 'train' section (did you mean 'lr'?)")
    assert lrr.endswith("[in every configuration]")
    assert hiden.startswith("task.hiden (grid task.hiden): unknown key in the 'task' section (did you mean 'hidden'?)")
    assert encoder == (
        "encoder.name (grid encoder): unknown encoder 'schnett' (did you mean 'schnet'?); valid "
        "encoders: schnet, smiles, unimol [in lrr0.1-hiden4-schnett, lrr0.2-hiden4-schnett]"
    )
    assert not (toy_cli / "runs").exists() and not (toy_cli / "mlflow.db").exists()

    with pytest.raises(sweeps.SweepError) as caught:
        sweeps.load_sweep(write_sweep(toy_cli, "worse", {"seed": [1, 2], "train.lr": 0.1}, seeds=0, gird={}))
    problems = "\n".join(caught.value.problems)
    assert "gird: unknown key (did you mean 'grid'?)" in problems and "seed: set by the sweep (use seeds)" in problems
    assert "grid.train.lr: expected a non-empty list" in problems and "seeds: expected a positive count" in problems


def test_a_rerun_with_other_settings_is_refused(toy_cli, toy_registry):
    path = write_sweep(toy_cli, "twice", {"train.lr": [0.01]}, overrides={"tracking": {"enabled": False}})
    state = sweeps.run_sweep(sweeps.load_sweep(path), toy_registry)
    assert state["status"] == "completed" and state["parent_run_id"] is None  # no MLflow: sweep.json only
    assert not (toy_cli / "mlflow.db").exists()
    changed = sweeps.load_sweep(path)
    changed.overrides.append("train.max_steps=3")
    with pytest.raises(sweeps.SweepError, match=r"sweep twice was run with other settings \(overrides: "):
        sweeps.run_sweep(changed, toy_registry)
    # how often children save or log changes no result: the same experiment, its completed child kept
    saving = sweeps.load_sweep(path)
    saving.overrides += ["train.checkpoint_every=1", "train.log_every=1"]
    again = sweeps.run_sweep(saving, toy_registry)
    assert [child["status"] for child in again["children"]] == ["skipped"]  # completed before: not trained again
    assert [child["output_dir"] for child in again["children"]] == [c["output_dir"] for c in state["children"]]


def test_an_interrupted_sweep_resumes_its_child_from_the_checkpoint(toy_cli, toy_registry, test_module):
    sweep = sweeps.load_sweep(write_sweep(toy_cli, "stop", {"train.lr": [0.01, 0.05]}, overrides=["train.max_steps=4"]))
    # SIGINT after step 2 of the first child only: the loop saves a checkpoint and stops
    first = sweeps.run_sweep(sweep, toy_registry, callbacks=[test_module("test_resume").SignalAt(2, once=True)])
    assert first["status"] == "interrupted"
    assert [c["status"] for c in first["children"]] == ["interrupted", "pending"]
    client = MlflowClient(default_uri())
    assert client.get_run(first["parent_run_id"]).info.status == "KILLED"

    second = sweeps.run_sweep(sweep, toy_registry)
    assert second["status"] == "completed" and second["parent_run_id"] == first["parent_run_id"]
    resumed = json.loads((toy_cli / second["children"][0]["output_dir"] / "metrics.json").read_text())
    assert resumed["provenance"]["resumed_from"].endswith("step-000002") and resumed["provenance"]["steps"] == 4
    assert second["children"][0]["run_id"] == first["children"][0]["run_id"]  # the same MLflow child run
    assert len(children_of(client, first["parent_run_id"])) == 2


def test_inline_grid_on_the_command_line(toy_cli, capsys):
    argv = [
        "sweep",
        "toy-regression",
        "--recipe",
        "toy.yaml",
        "--encoder",
        "unimol,schnet",
        "--grid",
        "train.lr=1e-2,5e-2",
        "--seeds",
        "3,",
        "train.max_steps=1",
        "--dry-run",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("sweep toy-regression-encoder-lr: 4 children, all valid")
    assert "unimol-lr1e-2-s3" in out and "runs/sweep-toy-regression-encoder-lr/schnet-none-none-s3-" in out
    assert not (toy_cli / "runs").exists()
    assert main(["sweep", "toy-regresion", "--encoder", "unimol"]) == 2
    assert "unknown task 'toy-regresion' (did you mean 'toy-regression'?)" in capsys.readouterr().err


PARALLEL = [
    "sweep",
    "retrieval",
    "--encoder",
    "unimol,schnet",
    "encoder.preset=small",
    "projector.num_layers=1",
    "data.limit=16",
    "data.eval_limit=8",
    "data.batch_size=8",
    "train.max_steps=2",
    "train.warmup_steps=0",
    "task.baseline=false",
]


@pytest.mark.slow
def test_children_run_in_parallel_workers_with_the_cores_divided(tmp_cwd, capsys):
    assert main([*PARALLEL, "--jobs", "2"]) == 0
    state = json.loads((tmp_cwd / "runs/sweep-retrieval-encoder/sweep.json").read_text())
    assert [c["status"] for c in state["children"]] == ["completed", "completed"]
    client = MlflowClient(default_uri())
    children = children_of(client, state["parent_run_id"])
    assert {r.data.tags["encoder"] for r in children} == {"unimol", "schnet"}
    assert {r.info.status for r in children} == {"FINISHED"}
    for child in state["children"]:  # each child is the run bench run would make: its identity, its metrics
        metrics = json.loads((tmp_cwd / child["output_dir"] / "metrics.json").read_text())
        assert metrics["provenance"]["identity"]["name"] == os.path.basename(child["output_dir"])
        # forked from a server that loaded torch before the thread count was known: set in the worker anyway
        assert metrics["provenance"]["cpu_threads"] == max(1, launch.cores() // 2)
    assert main([*PARALLEL, "--jobs", "2"]) == 0  # again: both skipped, nothing runs
    again = json.loads((tmp_cwd / "runs/sweep-retrieval-encoder/sweep.json").read_text())
    assert [c["status"] for c in again["children"]] == ["skipped", "skipped"]


def test_the_worker_server_loads_the_plugins_with_the_workers_thread_settings(toy_registry, monkeypatch):
    """--jobs starts the server the workers fork from before planning: it imports the run machinery and every
    plugin's module with each worker's share of the cores in its environment; this process's stays as it was."""
    import multiprocessing.forkserver

    seen = {}

    class Context:
        def get_start_method(self):
            return "forkserver"

        def set_forkserver_preload(self, modules):
            seen["modules"] = modules

    def start():
        seen["environment"] = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}

    monkeypatch.setattr(launch, "_context", Context)
    monkeypatch.setattr(multiprocessing.forkserver, "ensure_running", start)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    launch.preload(2, toy_registry)
    threads = str(max(1, launch.cores() // 2))
    assert seen["environment"] == {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    assert os.environ["OMP_NUM_THREADS"] == "7" and "MKL_NUM_THREADS" not in os.environ
    assert {"molbridge.core.runner", "toy_plugin"} <= set(seen["modules"])


@pytest.mark.slow
def test_children_run_as_submitit_jobs(tmp_cwd):
    pytest.importorskip("submitit")
    assert (
        main(
            [
                *PARALLEL,
                "--name",
                "cluster",
                "--launcher",
                "submitit",
                "--launcher-arg",
                "cluster=local",
                "--launcher-arg",
                "timeout_min=20",
                "tracking.enabled=false",
            ]
        )
        == 0
    )
    state = json.loads((tmp_cwd / "runs/sweep-cluster/sweep.json").read_text())
    assert [c["status"] for c in state["children"]] == ["completed", "completed"]
    assert any((tmp_cwd / "runs/sweep-cluster/submitit").iterdir())  # submitit's own job folders


def test_callbacks_stay_in_this_process(toy_cli, toy_registry, test_module):
    sweep = sweeps.load_sweep(write_sweep(toy_cli, "cb", {"train.lr": [0.01, 0.02]}))
    with pytest.raises(sweeps.SweepError, match="callbacks run in this process only"):
        sweeps.run_sweep(sweep, toy_registry, callbacks=[test_module("test_resume").SignalAt(1)], jobs=2)
