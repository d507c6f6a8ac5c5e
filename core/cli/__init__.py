"""The ``bench`` command. Each sub-command lives in its own module with ``add_parser(subparsers)``."""

import argparse
import atexit
import importlib
import logging
import os
import sys
import warnings

from molbridge.core.errors import MolbridgeError

# OpenMP threads that finish a parallel region wait for the next one by spinning, by default: two jobs on the
# same cores (sweep children, data workers, two users) then spin each other down. Passive waiting costs a lone
# job little and keeps parallel ones apart; set before torch is imported (the first command that needs it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: Sub-command modules, in the order ``bench --help`` lists them.
COMMANDS = ("run", "sweep", "plugins", "recipes", "compare", "data", "ask", "cache")

DESCRIPTION = """\
molbridge: train and evaluate language models that understand molecules in 3D.

Every run is assembled from a recipe (YAML), trains through one Lightning Fabric loop and logs to
MLflow. Components (encoders, projectors, LLMs, tasks) come from plugins; swap one with a flag:

  bench run retrieval --encoder schnet          train and evaluate, write metrics.json
  bench recipes show retrieval                  the recipe a run starts from
  bench compare --task retrieval                runs side by side, from MLflow
  bench plugins                                 what is installed, by kind

Every command's --help has examples. Exit status: 0 success; 1 an unexpected failure (with a traceback,
worth a bug report); 2 a user error (bad recipe, input or checkpoint: the message names it); 130 interrupted
(a run saved a checkpoint first). Output into a closed pipe (bench plugins --json | head -1) stops quietly.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--strict-plugins", action="store_true", help="fail when a plugin cannot be loaded (default: warn and skip it)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"molbridge.core.cli.{name}").add_parser(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    warnings.showwarning = _show_warning
    if args.strict_plugins:
        from molbridge.core.plugins import ENV_STRICT

        os.environ[ENV_STRICT] = "1"
    try:
        return int(args.func(args) or 0)
    except MolbridgeError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (| head): stop quietly, and not again when stdout is flushed
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def entry() -> None:
    """The ``bench`` script: :func:`main`, then exit without the interpreter's teardown, which spends seconds freeing
    what torch, MLflow and the plugins loaded (2.6 s after a sweep on the 2-core machine) and the OS reclaims at
    once. What an ordinary exit would run still runs: the atexit functions (logging, MLflow,
    multiprocessing) and the flush of stdout and stderr. An exception out of main exits the ordinary way."""
    code = main()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # a reader gone, a stream closed: nothing left to write
            pass
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
