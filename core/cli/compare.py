"""``bench compare``: runs side by side, read back from MLflow."""

from molbridge.core.compare import DEFAULT_METRICS, gather_runs, render
from molbridge.core.errors import MolbridgeError

EPILOG = """\
examples:
  bench compare --task retrieval                      every retrieval run, newest per run name
  bench compare --task retrieval projector=qformer    only Q-Former runs (filter on a tag or param)
  bench compare --experiment retrieval-molbridge-mini --metrics 'test/*acc*' --format csv
"""


def add_parser(sub):
    import argparse

    parser = sub.add_parser(
        "compare", help="compare runs side by side (from MLflow)", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print runs as columns (one per run name) with their encoder, projector, LLM, seed and "
                    "metrics as rows. Reads the MLflow store the runs were logged to: ./mlflow.db by "
                    "default, or --uri / MLFLOW_TRACKING_URI.")
    parser.add_argument("filters", nargs="*", metavar="key=value",
                        help="keep runs whose tag or param KEY equals VALUE (e.g. encoder=unimol, train.lr=0.0001)")
    parser.add_argument("--experiment", action="append", help="experiment name (repeatable)")
    parser.add_argument("--task", help="all experiments of this task")
    parser.add_argument("--dataset", help="only experiments on this dataset")
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS), metavar="GLOB",
                        help="metric name patterns (default: %(default)s)")
    parser.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown")
    parser.add_argument("--latest", action=argparse.BooleanOptionalAction, default=True,
                        help="keep only the newest run of each run name (default); --no-latest keeps all")
    parser.add_argument("--uri", help="MLflow tracking URI")
    parser.set_defaults(func=compare)


def compare(args) -> int:
    filters = {}
    for item in args.filters:
        key, sep, value = item.partition("=")
        if not sep:
            raise MolbridgeError(f"filter '{item}' is not key=value")
        filters[key] = value
    rows = gather_runs(experiments=args.experiment, task=args.task, dataset=args.dataset, filters=filters,
                       metrics=tuple(args.metrics), latest=args.latest, uri=args.uri)
    print(render(rows, args.format), end="")
    return 0
