"""Score finished ``conformer_order`` runs on the test pairs of any dataset, paired with the first run: does an
encoder trained on more conformers per molecule order a fact better, on the same test pairs?

    .venv/bin/python benchmarks/conformer_order_transfer.py RUN[,RUN...] [RUN[,RUN...] ...] [--data NAME_OR_DIR ...]
                                                           [--json out.json]

Each argument is a configuration: its seeds' run folders, comma-separated. Each run (a finished
``conformer_order`` run folder) is rebuilt with the recipe it saved, from the checkpoint its own test figures came
from (its last, which its ``metrics.json`` names; not the best on validation that ``bench ask`` loads), and scored
by the task's own evaluation on the test split of each ``--data`` (the run's split kind; default: the run's own
dataset): per test molecule, the fraction of its conformer pairs ordered right (0.5 is chance). Scoring a run on
its own dataset reproduces its ``test/order_acc``. Each configuration gets its mean over seeds with a 95% bootstrap
interval over test molecules and seeds, and every later one is paired with the first on the same test molecules
(seeds paired; ``molbridge.core.stats``, as ``bench compare --aggregate``). So two datasets built from the same
molecules with different conformer counts (``bench data build-mini --conformers 10`` and the shipped copy)
compare on one set of pairs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def evaluated_state(run: Path) -> Path:
    """The state file of the checkpoint the run's test figures came from: the one its ``metrics.json`` names (the
    final weights: the run evaluates test after its last step), else its newest intact checkpoint."""
    from molbridge.core import checkpoint
    from molbridge.core.errors import CheckpointError

    root, metrics = run / checkpoint.CHECKPOINTS, run / "metrics.json"
    named = json.loads(metrics.read_text()).get("checkpoint") if metrics.is_file() else None
    # the name only: metrics.json holds the path as seen from the directory the run was started in
    folder = root / Path(named).name if named else checkpoint.latest_checkpoint(root)
    if folder is None or not (folder / checkpoint.STATE_FILE).is_file():
        raise CheckpointError(f"{run}: no checkpoint to score under {root}/ (is it a finished run folder?)")
    return folder / checkpoint.STATE_FILE


def rebuild(run: Path, data: str | None):
    """The run's task (reading ``data`` if given) and its model with the checkpoint's weights, in eval mode."""
    from molbridge.core.ask import checkpoint_recipe, rebuild_model
    from molbridge.core.errors import CheckpointError
    from molbridge.core.plugins import get_registry

    registry = get_registry()
    state = evaluated_state(run)
    recipe = checkpoint_recipe(state, registry)
    if recipe.task.name != "conformer_order":
        raise CheckpointError(f"{run}: a '{recipe.task.name}' run; this scores conformer_order runs")
    if data is not None:
        recipe.data.name = data
    task = registry.build("task", recipe.task, recipe=recipe, registry=registry)
    return task, rebuild_model(state, recipe, task, registry).eval()


def score(run: Path, data: str | None) -> dict:
    """``{"metrics": the task's test metrics, "ids": test molecule ids, "values": fact -> per-molecule value}``."""
    from lightning_fabric import Fabric

    task, model = rebuild(run, data)
    fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
    metrics = task.evaluate(model, fabric, "test")
    with tempfile.TemporaryDirectory() as folder:  # the per-molecule values, as the run itself writes them
        (path,) = task.write_outputs(Path(folder))
        items = json.loads(path.read_text())
    return {"metrics": metrics, "ids": items["ids"], "values": items["values"]}


def _column(found: dict, name: str) -> np.ndarray:
    return np.asarray(found["values"][name], dtype=float)  # a molecule without a value (None) becomes NaN


def compare(configurations: dict[str, list[dict]]) -> dict:
    """Per fact: each configuration's mean over its seeds with a 95% interval over test molecules and seeds, and
    every later configuration minus the first on the same molecules (seeds paired when both have as many)."""
    from molbridge.core import stats

    names = list(configurations)
    first = configurations[names[0]]
    ids = first[0]["ids"]
    if any(found["ids"] != ids for runs in configurations.values() for found in runs):
        raise SystemExit("the runs were scored on different test molecules: give them the same --data")
    out: dict = {}
    for fact in first[0]["values"]:
        reference = [_column(found, fact) for found in first]
        rows = {}
        for name in names:
            seeds = [_column(found, fact) for found in configurations[name]]
            estimate = stats.configuration(seeds)
            row = {
                "mean": estimate.estimate,
                "interval": [estimate.interval.lo, estimate.interval.hi],
                "per_seed": [float(np.nanmean(v)) for v in seeds],
            }
            if name != names[0]:
                diff = stats.paired(seeds, reference, higher=True, pair_seeds=len(seeds) == len(reference))
                row["minus_first"] = [diff.difference.estimate, diff.difference.lo, diff.difference.hi]
                row["verdict"], row["seeds"] = diff.verdict, diff.seeds
            rows[name] = row
        out[fact] = {"molecules": int(np.isfinite(reference[0]).sum()), "configurations": rows}
    return out


def _print(data: str | None, table: dict) -> None:
    print(f"test split of {data or 'the dataset of the runs'}:")
    for fact, result in table.items():
        print(f"  {fact} ({result['molecules']} molecules whose conformers differ)")
        for name, row in result["configurations"].items():
            seeds = ", ".join(f"{v:.3f}" for v in row["per_seed"])
            line = f"    {row['mean']:.3f} [{row['interval'][0]:.3f}, {row['interval'][1]:.3f}] ({seeds})"
            if "minus_first" in row:
                d = row["minus_first"]
                line += f"  minus first {d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}] {row['verdict']} ({row['seeds']})"
            print(f"{line}  {name}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "configurations",
        nargs="+",
        help="finished conformer_order run folders, one argument per configuration (its seeds comma-separated, "
        "in the same seed order for every configuration); the first is the reference",
    )
    parser.add_argument(
        "--data", nargs="+", default=[None], help="datasets to score on (names or folders; default: the runs' own)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    out: dict = {"configurations": args.configurations, "data": {}}
    for data in args.data:
        found = {name: [score(Path(run), data) for run in name.split(",") if run] for name in args.configurations}
        out["data"][str(data)] = table = compare(found)
        _print(data, table)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
