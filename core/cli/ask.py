"""``bench ask``: ask a trained captioning or qa model about a molecule (SMILES or SDF)."""

from __future__ import annotations

import argparse

from molbridge.core.recipe import PRECISIONS

DESCRIPTION = """\
Ask a trained stage-2/3 model (a captioning or qa run) a question about a molecule and print its answer.

--checkpoint is a run directory (its best checkpoint per checkpoints/best.json, else the latest) or one
checkpoint folder (checkpoints/step-NNNNNN). The model is rebuilt from the recipe.yaml saved there, with
the run's weights, in eval mode; decoding is greedy unless --num-beams says otherwise, so the same
question gives the same answer.

The molecule is a SMILES (a 3D conformer is embedded with ETKDG + MMFF, with the settings of the run's
dataset) or an SDF file whose 3D coordinates are used as they are (hydrogens the file lacks are added
at computed positions; 2D records are embedded). With several SDF records, each answer is labelled
[index] name. Without a QUESTION, questions are read interactively (question> ) until an empty line,
"exit" or end of input.
"""

EPILOG = """\
examples:
  bench ask --checkpoint runs/captioning-molbridge-mini/unimol-qformer-llama-s0 \\
      --smiles "CC(=O)Oc1ccccc1C(=O)O" "Describe this molecule."
  bench ask --checkpoint runs/qa-molbridge-mini/unimol-qformer-llama-s0 --sdf ligands.sdf \\
      "What is the LogP of this molecule?"
  bench ask --checkpoint runs/qa-molbridge-mini/unimol-qformer-llama-s0/checkpoints/step-000800 \\
      --smiles c1ccccc1O                                     (interactive)
"""

STOP_WORDS = {"exit", "quit"}


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "ask",
        help="ask a trained captioning/qa model about a molecule",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "question",
        nargs="?",
        metavar="QUESTION",
        help="the question (the instruction of the prompt); omit it to ask interactively",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="DIR",
        help="a captioning/qa run directory, one of its checkpoint folders or a state file",
    )
    molecule = parser.add_mutually_exclusive_group(required=True)
    molecule.add_argument("--smiles", help="the molecule as a SMILES string")
    molecule.add_argument("--sdf", metavar="FILE", help="an SDF file (.sdf or .sdf.gz): every record, or --record")
    parser.add_argument("--record", type=int, metavar="N", help="only record N of the SDF (0-based)")
    parser.add_argument(
        "--max-new-tokens",
        type=_positive,
        metavar="N",
        help="longest answer in tokens (default: the run's llm.max_new_tokens)",
    )
    parser.add_argument(
        "--num-beams",
        type=_positive,
        metavar="N",
        help="beam search with N beams (default: the run's llm.num_beams; 1 is greedy)",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda when available)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        metavar="PRECISION",
        help="Lightning Fabric precision, e.g. bf16-mixed (default: the run's train.precision)",
    )
    parser.set_defaults(func=_ask)


def _ask(args: argparse.Namespace) -> int:
    from molbridge.core.ask import Asker, AskError

    if args.record is not None and args.sdf is None:
        raise AskError("--record needs --sdf")
    asker = Asker(args.checkpoint)
    molecules = asker.molecules(smiles=args.smiles, sdf=args.sdf, record=args.record)
    asker.load_model(device=args.device, precision=args.precision)
    settings = {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams}
    labels = [f"[{m.index}] {m.id}" for m in molecules] if len(molecules) > 1 else None
    for question in [args.question] if args.question is not None else _interactive():
        for i, text in enumerate(asker.answer(question, molecules, **settings)):
            print(f"{labels[i]}: {text}" if labels else text, flush=True)
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def _interactive():
    """Questions typed at ``question> `` until an empty line, exit/quit or end of input."""
    while True:
        try:
            line = input("question> ").strip()
        except EOFError:
            print()
            return
        if not line or line.lower() in STOP_WORDS:
            return
        yield line
