"""``bench run``: train and evaluate one task from a recipe, write metrics.json, log to MLflow."""

import argparse
from pathlib import Path

from molbridge.core.errors import MolbridgeError, unknown_name
from molbridge.core.identity import experiment_name
from molbridge.core.plugins import get_registry
from molbridge.core.recipe import load_recipe, packaged_recipes

DESCRIPTION = """\
Train and evaluate TASK as a recipe describes, through the one Lightning Fabric loop.

The recipe is the packaged recipe named TASK unless --recipe gives another (a packaged name or a
YAML path). --encoder/--projector/--llm swap a component: options it shares with the old one
(e.g. preset) carry over, the rest take its defaults. key=value changes any recipe key and ~key
resets one to its default
(`bench recipes show TASK` prints every key).

Every configuration has its own name and folder: {encoder}-{projector}-{llm}-s{seed}-{hash}, where the
hash covers every setting that differs from the task's packaged recipe (so train.lr=0.01 and
train.lr=0.5 are two runs, two folders and two MLflow runs). Checkpoints and metrics.json go to
--output, else to the recipe's output_dir, else runs/{experiment}/{name}. A run that finds its own
checkpoints there resumes from the newest intact one (train.resume=auto; train.resume=never starts over);
a folder holding another configuration is refused, naming the settings that differ (only step counts and
intervals may change on resume); --force-new sets the folder aside and starts afresh. A run already
completed there returns its stored result. Ctrl-C saves a checkpoint at the end of the current step and
stops; a second Ctrl-C aborts. Exit status: 0 completed, 130 interrupted, 2 a user error, 1 a failure.
"""

EPILOG = """\
examples:
  bench run retrieval --encoder schnet --seed 1
  bench run captioning --recipe my_recipe.yaml train.max_steps=200 train.lr=5e-5 tracking.enabled=false
  bench run retrieval train.strategy=ddp train.devices=2 train.accelerator=cpu
"""


class IntermixedParser(argparse.ArgumentParser):
    """Accepts overrides before and after options (`bench run T --seed 1 k=v`).

    Plain argparse takes positionals in one run only; the parent parser calls ``parse_known_args``,
    which we route once through ``parse_known_intermixed_args`` (that calls back into us).
    """

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def add_parser(sub):
    parser = sub.add_parser(
        "run",
        help="train and evaluate a task; write metrics.json",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.__class__ = IntermixedParser
    parser.add_argument("task", metavar="TASK", help="a registered task (see `bench plugins`)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value|~key",
        help="recipe overrides, keys as in `bench recipes show TASK`",
    )
    for kind in ("encoder", "projector", "llm"):
        parser.add_argument(f"--{kind}", metavar="NAME", help=f"use this {kind} instead of the recipe's")
    parser.add_argument("--recipe", metavar="R", help="packaged recipe name or YAML path (default: TASK)")
    parser.add_argument("--output", type=Path, metavar="DIR", help="output directory (checkpoints, metrics.json)")
    parser.add_argument("--seed", type=int, metavar="N", help="random seed (same as seed=N)")
    parser.add_argument(
        "--force-new",
        action="store_true",
        help="rename an existing folder of this run to NAME.set-aside-TIME and start afresh",
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow resuming a checkpoint of molbridge < 0.2 whose RNG file is a pickle "
        "(unpickling can run code: trusted files only)",
    )
    parser.set_defaults(func=run_command)


def _recipe_for(task: str, recipe: str | None, registry) -> str:
    if task not in registry.names("task"):
        raise unknown_name("task", task, registry.names("task"))
    if recipe:
        return recipe
    if task not in packaged_recipes():
        raise MolbridgeError(
            f"no packaged recipe is named '{task}'; pass --recipe NAME_OR_PATH "
            f"(packaged: {', '.join(sorted(packaged_recipes())) or 'none'})"
        )
    return task


def run_command(args) -> int:
    from molbridge.core.runner import run  # lazy: torch and Lightning are slow to import

    registry = get_registry()
    overrides = list(args.overrides) + ([f"seed={args.seed}"] if args.seed is not None else [])
    components = {"encoder": args.encoder, "projector": args.projector, "llm": args.llm}
    recipe = load_recipe(_recipe_for(args.task, args.recipe, registry), overrides, registry, components)
    if recipe.task.name != args.task:
        raise MolbridgeError(
            f"the recipe is for task '{recipe.task.name}', not '{args.task}'; "
            f"run `bench run {recipe.task.name} ...` or pick another --recipe"
        )
    result = run(recipe, registry, output=args.output, force_new=args.force_new, trust_pickle=args.trust_pickle)
    if result.get("reused"):
        print(f"already completed: {Path(result['path']).parent} (--force-new to run it again)\n")
    print(results_table(result))
    print(f"\nmetrics: {result['path']}")
    if result.get("tracking_run_id"):
        from molbridge.core.tracking import tracking_uri

        print(
            f"MLflow run: {result['tracking_run_id']} in experiment '{experiment_name(recipe)}' at "
            f"{tracking_uri(recipe.tracking.uri)} (browse: bench compare, mlflow ui)"
        )
    return 0 if result["status"] == "completed" else 130


def results_table(result: dict) -> str:
    """The final metrics as a markdown table; a task's ``baseline_NAME`` metrics get their own column."""
    metrics = result["metrics"]
    baseline = {name.replace("baseline_", "", 1): value for name, value in metrics.items() if "/baseline_" in name}
    lines = [f"status: {result['status']}, steps: {result['provenance']['steps']}", ""]
    if baseline:
        lines += ["| metric | model | baseline |", "|---|---|---|"]
        lines += [
            f"| {name} | {value:.4f} | {_cell(baseline.get(name))} |"
            for name, value in metrics.items()
            if "/baseline_" not in name
        ]
    else:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value:.4f} |" for name, value in metrics.items()]
    if result.get("best"):
        best = result["best"]
        lines += ["", f"best {best['metric']}: {best['value']:.4f} at step {best['step']}"]
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"
