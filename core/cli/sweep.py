"""``bench sweep``: a grid of runs as one MLflow parent run with a child per configuration and seed."""

import argparse
from pathlib import Path

from molbridge.core.cli.run import IntermixedParser
from molbridge.core.errors import MolbridgeError, unknown_name

DESCRIPTION = """\
Run every configuration of a grid with every seed, one after another (or --jobs N at once), as children
of one MLflow parent run. SWEEP is a sweep file (YAML: task or recipe, overrides, grid, seeds; see below) or a
task name with the grid given inline. Every configuration is validated before the first run starts.

Each child trains in its own folder, ROOT/sweep-NAME/RUN (ROOT: --output, default runs; RUN its identity,
as bench run names it), so
running the same sweep again skips completed children, resumes an interrupted one from its last
checkpoint and reuses the parent run. A rerun may add settings that change no result (e.g.
train.checkpoint_every=200 to save an interrupted child's progress); any other change is refused.
A child that fails is recorded (MLflow status FAILED with its error) and the others go on; the command
then exits 1. A table of the results is printed at the end and everything is written to ROOT/sweep-NAME/sweep.json.

A sweep file:
  name: arch
  task: retrieval                     # or recipe: NAME_OR_PATH
  overrides: {train.max_steps: 200}
  grid: {encoder: [unimol, schnet], projector: [qformer, linear], train.lr: [1.0e-4, 5.0e-4]}
  seeds: 2                            # seeds 0 and 1; or a list [0, 7]
"""

EPILOG = """\
examples:
  bench sweep ablation.yaml
  bench sweep retrieval --encoder unimol,schnet --projector qformer,linear --seeds 2 train.max_steps=100
  bench sweep qa --grid train.lr=1e-4,5e-4 --grid task.sampling_power=0.25,1 --seeds 0,7 --dry-run
  bench sweep retrieval --encoder unimol,schnet --seeds 2 --jobs 2               (two at a time, a core each)
  bench sweep 3d-molm.yaml --launcher submitit --launcher-arg slurm_partition=gpu --launcher-arg gpus_per_node=4
"""


def add_parser(sub):
    parser = sub.add_parser(
        "sweep",
        help="run a grid of configurations x seeds (MLflow parent + children)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.__class__ = IntermixedParser  # overrides before and after options, as for bench run
    parser.add_argument("sweep", metavar="SWEEP", help="a sweep file (.yaml/.yml) or a registered task")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value|~key",
        help="recipe overrides for every child, keys as in `bench recipes show TASK`",
    )
    for kind in ("encoder", "projector", "llm"):
        parser.add_argument(f"--{kind}", metavar="A,B", help=f"grid over these {kind}s (comma-separated)")
    parser.add_argument(
        "--grid", action="append", default=[], metavar="KEY=V1,V2", help="grid over a recipe key (repeatable)"
    )
    parser.add_argument("--seeds", metavar="N|A,B", help="N: seeds 0..N-1; or a comma-separated list")
    parser.add_argument("--recipe", metavar="R", help="base recipe, packaged name or YAML path (default: TASK)")
    parser.add_argument("--name", help="sweep name (default: the file's stem, or TASK-GRIDKEYS)")
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("runs"),
        metavar="ROOT",
        help="children go to ROOT/sweep-NAME/ (default: %(default)s)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="run N children at once in worker processes, the cores divided between them (one GPU each where "
        "there are several); default 1: one after another in this process",
    )
    parser.add_argument(
        "--launcher",
        choices=("local", "submitit"),
        default="local",
        help="submitit: every child a submitit job (SLURM on a cluster; needs `pip install submitit`)",
    )
    parser.add_argument(
        "--launcher-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a submitit parameter, e.g. slurm_partition=gpu timeout_min=600 gpus_per_node=4 (repeatable)",
    )
    parser.add_argument("--dry-run", action="store_true", help="validate and list the children; run nothing")
    parser.set_defaults(func=sweep_command)


def sweep_command(args) -> int:
    from molbridge.core import sweep as sweeps
    from molbridge.core.plugins import get_registry

    registry = get_registry()
    sweep = sweep_from_args(args, registry)
    if args.dry_run:
        children = sweeps.plan(sweep, registry, args.output)
        print(f"sweep {sweep.name}: {len(children)} children, all valid")
        for child in children:
            done = sweeps.completed_metrics(child.output_dir) is not None
            print(f"  {child.key:<40} {'completed' if done else 'to run':<10} {child.output_dir}")
        return 0
    if args.jobs < 1:
        raise MolbridgeError(f"--jobs {args.jobs}: at least 1")
    state = sweeps.run_sweep(
        sweep,
        registry,
        root=args.output,
        jobs=args.jobs,
        launcher=args.launcher,
        launcher_options=_launcher_options(args.launcher_arg),
    )
    print(sweeps.summary_table(state))
    print(f"\nsweep.json: {state['path']}")
    if state["parent_run_id"]:
        print(
            f"MLflow parent run: {state['parent_run_id']} in experiment '{state['experiment']}' at "
            f"{state['tracking_uri']} (browse: bench compare, mlflow ui)"
        )
    return {"completed": 0, "failed": 1}.get(state["status"], 130)


def sweep_from_args(args, registry):
    """The sweep a command line describes: a file plus command-line additions, or a task with an inline grid."""
    from molbridge.core.sweep import Sweep, load_sweep, parse_seeds

    inline_grid = _inline_grid(args)
    problems: list[str] = []
    seeds = parse_seeds(_seeds(args.seeds), problems) if args.seeds is not None else None
    if problems:
        raise MolbridgeError(f"--seeds {args.seeds}: {problems[0]}")
    if args.sweep.endswith((".yaml", ".yml")):
        if args.recipe:
            raise MolbridgeError("--recipe goes with a task; a sweep file names its recipe")
        sweep = load_sweep(args.sweep)
        sweep.grid |= inline_grid  # the command line replaces the file's values for the same key
        sweep.overrides += args.overrides
        sweep.seeds = seeds if seeds is not None else sweep.seeds
        sweep.name = args.name or sweep.name
        return sweep
    if args.sweep not in registry.names("task"):
        raise unknown_name("task", args.sweep, registry.names("task"))
    name = args.name or "-".join([args.sweep, *(key.rpartition(".")[2] for key in inline_grid)])
    return Sweep(
        name=name,
        base=args.recipe or args.sweep,
        task=args.sweep,
        overrides=list(args.overrides),
        grid=inline_grid,
        seeds=seeds,
    )


def _launcher_options(items: list[str]) -> dict:
    """``--launcher-arg key=value``: values typed as YAML reads them (600 is an int, gpu a string)."""
    import yaml

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MolbridgeError(f"--launcher-arg {item}: expected KEY=VALUE")
        options[key] = yaml.safe_load(value)
    return options


def _inline_grid(args) -> dict[str, list[str]]:
    """``--encoder a,b`` and ``--grid key=a,b``: values stay text, the recipe schema types them."""
    grid = {kind: getattr(args, kind) for kind in ("encoder", "projector", "llm") if getattr(args, kind)}
    for item in args.grid:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise MolbridgeError(f"--grid {item}: expected KEY=V1,V2,...")
        grid[key] = values
    return {key: [v.strip() for v in values.split(",") if v.strip()] for key, values in grid.items()}


def _seeds(text: str):
    """``3`` is a count; ``0,7`` (or ``7,``) a list."""
    try:
        return [int(s) for s in text.split(",") if s.strip()] if "," in text else int(text)
    except ValueError:
        return text  # parse_seeds names it
