"""The bench command as a Unix tool: quiet on a closed pipe, an example in every --help, documented exit codes."""

import argparse
import json
import subprocess
import sys

import pytest

from molbridge.core.cli import build_parser, main

BENCH = [sys.executable, "-c", "from molbridge.core.cli import entry; entry()"]  # what the `bench` script runs


@pytest.mark.parametrize("command", [["plugins", "--json"], ["data", "info", "molbridge-mini", "--json"]])
def test_a_closed_pipe_ends_the_command_quietly(command):
    # the reader is gone before bench writes (it takes a second to start): every write meets a closed pipe, as
    # the rest of the output does after `| head -1` has read its line
    shell = f"{' '.join(repr(w) for w in BENCH + command)} | true"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr


def test_the_bench_script_keeps_mains_status_output_and_exit_functions():
    # `bench` exits without the interpreter's teardown: the status, every byte written and the atexit functions
    # (logging, MLflow) must still come out
    farewell = "import atexit; atexit.register(print, 'atexit ran'); "
    script = [BENCH[0], "-c", farewell + BENCH[2]]
    done = subprocess.run([*script, "plugins", "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    listing, _, tail = done.stdout.rpartition("}")
    assert json.loads(listing + "}")["components"]["encoder"] and tail.strip() == "atexit ran"
    bad = subprocess.run([*BENCH, "recipes", "validate", "retrieval", "trian.lr=1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "did you mean 'train'" in bad.stderr


def _subcommands(parser: argparse.ArgumentParser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path + (name,), sub
                yield from _subcommands(sub, path + (name,))


def test_every_subcommand_help_has_an_example():
    commands = dict(_subcommands(build_parser()))
    assert len(commands) >= 14
    lacking = [" ".join(path) for path, parser in commands.items() if "example" not in (parser.epilog or "")]
    assert lacking == []


def test_exit_codes_are_documented_and_kept(capsys):
    assert "Exit status: 0 success; 1 an unexpected failure" in build_parser().description
    assert main(["recipes", "validate", "retrieval", "--no-size"]) == 0
    assert main(["recipes", "validate", "retrieval", "trian.lr=1"]) == 2  # a user error, named
    assert "did you mean 'train'" in capsys.readouterr().err


def test_recipes_show_doc_and_validate_take_component_swaps(capsys):
    assert main(["recipes", "show", "retrieval", "--doc", "--encoder", "schnet"]) == 0
    out = capsys.readouterr().out
    assert "encoder:\n" in out and "  name: schnet" in out and "# encoder 'schnet':" in out
    assert "# Peak learning rate (AdamW).\n  # type float; default 0.0001; range > 0\n  lr: 0.0005" in out
    assert main(["recipes", "validate", "retrieval", "--no-size", "--encoder", "schnet"]) == 0
    assert "encoder schnet" in capsys.readouterr().out


def test_recipes_show_and_validate_take_overrides_after_options_and_name_per_component_settings(capsys):
    assert main(["recipes", "show", "captioning", "--encoder", "schnet", "train.lr=5e-4"]) == 0  # as --help shows
    assert "  lr: 0.0005" in capsys.readouterr().out
    assert main(["recipes", "validate", "conformer_qa", "--encoder", "schnet", "--no-size"]) == 0
    assert "per_component encoder schnet: encoder.cutoff=10.0\n" in capsys.readouterr().out
    assert main(["recipes", "validate", "conformer_qa", "--encoder", "schnet", "encoder.cutoff=5", "--no-size"]) == 0
    assert "encoder.cutoff=10.0 (not used: encoder.cutoff=5.0 is set on the command line)" in capsys.readouterr().out
    assert main(["recipes", "validate", "conformer_qa", "--encoder", "unimol", "--no-size"]) == 0
    assert "per_component" not in capsys.readouterr().out
