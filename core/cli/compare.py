"""``bench compare``: runs side by side, read back from MLflow; aggregates over seeds, figures, MLflow artifacts."""

import shlex
import sys

from molbridge.core.cli.run import IntermixedParser
from molbridge.core.compare import DEFAULT_METRICS, gather_runs, group_runs, render, render_aggregate, select_metrics
from molbridge.core.errors import MolbridgeError
from molbridge.core.stats import RESAMPLES

EPILOG = """\
examples:
  bench compare --task retrieval                      every retrieval run, newest per run name
  bench compare --task retrieval projector=qformer    only Q-Former runs (filter on a tag or param)
  bench compare --experiment retrieval-molbridge-mini --metrics 'test/*acc*' --format csv
  bench compare --task retrieval --aggregate          mean ± std over seeds, one row per configuration,
                                                      bootstrap intervals and verdicts against the first row
  bench compare --task retrieval --aggregate --versus 'smiles-linear-none*'
                                                      verdicts against another configuration
  bench compare --sweep retrieval-encoder-projector --aggregate --plots plots
                                                      a sweep's children; figures logged to its parent run

--aggregate: runs whose names differ only in the seed suffix (unimol-qformer-none-s0, -s1) are one
configuration (within an experiment). The table has one row per configuration, a leaderboard to sort
on; each metric is mean ± sample std over seeds, n in the n column (and in a cell when fewer runs have
that metric). It is asked for, not automatic, so that the output of a command does not change shape
with the data a script reads it from.

Intervals and verdicts: where the runs' artifacts hold a metric's value per test item (retrieval's
ranks-SPLIT.json: full_m2t/t2m_acc and _rK, baseline_ too; QA's answers-SPLIT.jsonl: PROP/mae,
PROP/medae, PROP/valid_rate), a cell also shows [lo, hi], the 95% percentile bootstrap interval over
test items and seeds (one item resample shared by all seeds of a replicate; --resamples, default 2000,
generator seed 0: the same runs always give the same numbers). Each such metric gets a column
"METRIC vs REF": this configuration minus the reference one (the first configuration of its experiment,
or --versus CONFIG), a paired bootstrap over the same test items (seeds paired when both have the same
ones): "better" or "worse" when its interval excludes 0, by the metric's sense (higher is better for
acc, rK, recall, BLEU, ROUGE, METEOR, skill, *_rate; lower for mae, medae, mse, loss), else "not
distinguishable". Items are matched by id; runs scored on different items are refused, naming them.
A metric without per-item values keeps mean ± std and is listed under the table as having no interval;
a run whose artifact does not reproduce its logged value gets none either (a note on stderr says so).
CSV: METRIC mean / std / n / lo / hi, a reference column, and METRIC verdict / difference /
difference lo / difference hi; JSON: per metric ci, ci_over_items, ci_over_seeds, items and versus.

--plots DIR writes into DIR: the per-run and per-configuration tables (markdown and CSV), PNG figures
and README.md, an index of them with each figure's caption:
  bars-METRIC.png    a bar per configuration (mean, error bar = the bootstrap interval where there is
                     one, else sample std; a dot per seed; the caption says which), for each
                     metric of --plot-metrics (default: retrieval test/full_m2t_acc test/full_t2m_acc;
                     captioning test/bleu4 test/meteor test/rougeL test/shape_acc
                     test/rg_mae; qa test/*/mae; other tasks best/*)
  recall-SPLIT.png   retrieval: full-set Recall@k for k = 1..N, both directions, from each run's
                     ranks-SPLIT.json artifact; mean over seeds, band min..max, fingerprint baseline dashed
  parity-CONFIG-SPLIT.png  qa: predicted vs true per numeric property, one figure per configuration
                     (seeds pooled, coloured by seed), answers parsed as the qa task scores them
  curve-METRIC.png   train/loss and the monitored validation metric against step, one line per run
When every compared run is a child of one sweep (e.g. with --sweep NAME), DIR's files are logged to the
sweep's parent run under compare/ (--no-log: don't); --log-to RUN_ID logs them to another run.
"""


def add_parser(sub):
    import argparse

    parser = sub.add_parser(
        "compare",
        help="compare runs side by side (from MLflow); aggregate seeds, draw figures",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print runs as columns (one per run name) with their encoder, projector, LLM, seed and "
        "metrics as rows, or with --aggregate one row per configuration over seeds. Reads the "
        "MLflow store the runs were logged to: ./mlflow.db by default, or --uri / MLFLOW_TRACKING_URI.",
    )
    parser.__class__ = IntermixedParser  # filters before and after options, as for bench run
    parser.add_argument(
        "filters",
        nargs="*",
        metavar="key=value",
        help="keep runs whose tag or param KEY equals VALUE (e.g. encoder=unimol, train.lr=0.0001)",
    )
    parser.add_argument("--experiment", action="append", help="experiment name (repeatable)")
    parser.add_argument("--task", help="all experiments of this task")
    parser.add_argument("--dataset", help="only experiments on this dataset")
    parser.add_argument("--sweep", metavar="NAME", help="only the children of sweep NAME (its sweep.name tag)")
    parser.add_argument(
        "--metrics",
        nargs="+",
        metavar="GLOB",
        help=f"metric name patterns for the tables (default: {' '.join(DEFAULT_METRICS)}); "
        f"one that matches no metric is an error",
    )
    parser.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown")
    parser.add_argument(
        "--aggregate",
        action="store_true",
        help="one row per configuration: mean ± sample std over seeds, bootstrap intervals and paired verdicts "
        "(see below)",
    )
    parser.add_argument(
        "--versus",
        metavar="CONFIG",
        help="with --aggregate or --plots: the configuration the others are compared with (its name or a glob; "
        "default: the first of each experiment)",
    )
    parser.add_argument(
        "--resamples",
        type=_positive,
        default=RESAMPLES,
        metavar="N",
        help=f"bootstrap resamples for intervals and verdicts (default {RESAMPLES})",
    )
    parser.add_argument(
        "--latest",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep only the newest run of each run name (default); --no-latest keeps all",
    )
    parser.add_argument("--plots", metavar="DIR", help="write tables, figures and README.md into DIR (see below)")
    parser.add_argument(
        "--plot-metrics", nargs="+", metavar="GLOB", help="metrics drawn as bars (default: a few per task, see below)"
    )
    parser.add_argument("--log-to", metavar="RUN_ID", help="log DIR's files to this MLflow run under compare/")
    parser.add_argument("--no-log", action="store_true", help="do not log DIR's files to a sweep's parent run")
    parser.add_argument("--uri", help="MLflow tracking URI")
    parser.set_defaults(func=compare)


def compare(args) -> int:
    filters = _filters(args.filters)
    if args.sweep:
        filters["sweep.name"] = args.sweep
    if (args.log_to or args.plot_metrics) and not args.plots:
        raise MolbridgeError("--log-to and --plot-metrics go with --plots DIR")
    if (args.versus or args.resamples != RESAMPLES) and not (args.aggregate or args.plots):
        raise MolbridgeError("--versus and --resamples go with --aggregate or --plots DIR")
    rows = gather_runs(
        experiments=args.experiment,
        task=args.task,
        dataset=args.dataset,
        filters=filters,
        metrics=("*",),
        latest=args.latest,
        uri=args.uri,
    )
    shown = select_metrics(rows, tuple(args.metrics or DEFAULT_METRICS), strict=bool(args.metrics))
    table = None
    if args.aggregate or args.plots:
        from molbridge.core.compare_report import interval_table

        # with --plots, every metric's intervals (the bars may show metrics the table does not): computed once
        table = interval_table(
            group_runs(rows if args.plots else shown), uri=args.uri, versus=args.versus, resamples=args.resamples
        )
    if args.aggregate:
        print(render_aggregate(group_runs(shown), args.format, table), end="")
        for note in table.notes if table else ():
            print(f"note: {note}", file=sys.stderr)
    else:
        print(render(shown, args.format), end="")
    if args.plots:
        _plots(args, rows, table)
    return 0


def _positive(text: str) -> int:
    import argparse

    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def _filters(items: list[str]) -> dict[str, str]:
    filters = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise MolbridgeError(f"filter '{item}' is not key=value")
        filters[key] = value
    return filters


def _plots(args, rows, table) -> None:
    from molbridge.core.compare_report import log_report, sweep_parent, write_report

    report = write_report(
        rows,
        args.plots,
        table_metrics=tuple(args.metrics or DEFAULT_METRICS),
        plot_metrics=tuple(args.plot_metrics) if args.plot_metrics else None,
        uri=args.uri,
        command=_command(args),
        table=table,
    )
    print(
        f"{len(report.figures)} figures and {len(report.tables)} tables in {report.folder}; index: "
        f"{report.folder / 'README.md'}",
        file=sys.stderr,
    )
    for note in report.notes:
        if not (args.aggregate and note in table.notes):  # printed with the table already
            print(f"note: {note}", file=sys.stderr)
    target = args.log_to or (None if args.no_log else sweep_parent(rows))
    if target:
        log_report(report, target, args.uri)
        what = "the run" if args.log_to else "the sweep's parent run"
        print(f"logged to {what} {target} under compare/", file=sys.stderr)


def _command(args) -> str:
    """The selection as a command line, for the report's title."""
    words = ["bench", "compare", *args.filters]
    for option in ("experiment", "task", "dataset", "sweep"):
        value = getattr(args, option)
        for item in value if isinstance(value, list) else [value] if value else []:
            words += [f"--{option}", item]
    words += ["--no-latest"] if not args.latest else []
    words += ["--versus", args.versus] if args.versus else []
    words += ["--resamples", str(args.resamples)] if args.resamples != RESAMPLES else []
    return shlex.join(words)
