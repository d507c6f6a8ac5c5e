"""Does what the LLM receives still say how a molecule's conformers differ? A linear probe on a trained LLM-stage
run's encoder output and soft tokens, beside what its LLM answered.

    .venv/bin/python benchmarks/soft_token_probe.py RUN_DIR [--target relative_energy ...] [--json out.json]

The run's model is rebuilt from its checkpoint (as ``bench ask`` does), and every conformer of each molecule with
two or more that know the target (train, valid and test of the run's dataset and split) goes through its encoder
and projector. Two representations per conformer: the encoder's pooled output and the soft tokens (flattened).
Both the representation and the target are centred on the molecule's mean over its conformers, so what is left
is only how the conformers of one molecule differ, as in conformer QA's ``within_mae``; a ridge regression on
the train conformers (its strength picked on valid) then predicts the test conformers' centred targets.

Reported per target and representation, on the test conformers: the probe's within-molecule error against the
molecule-mean ceiling (the error of predicting no difference: what any 1D model scores), their paired difference
with a bootstrap 95% interval over conformers, and the fraction of each molecule's conformer pairs the probe
orders right (0.5 is chance). Where the run's ``items-test.json`` has the target's ``within_mae``, the LLM's own
answers are reported on the same scale. A probe well below the ceiling where the answers sit at it says the fact
reaches the LLM and the LLM does not read it; a probe at the ceiling says it is lost before.

A probe, not a model: nothing is trained in the run and nothing is saved.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

BATCH = 64
SPLITS = ("train", "valid", "test")
STRENGTHS = tuple(10.0**-k for k in range(0, 9))  # ridge strength, as a fraction of the largest squared singular value


def conformer_rows(
    store, rows: np.ndarray, target: str, limit: int | None = None
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(row, conformer indices, target values) of each molecule of ``rows`` with two or more conformers that know
    ``target``; the first ``limit`` such molecules where given."""
    from molbridge.plugins.tasks.conformer_qa import value_table

    found = []
    for row in rows:
        if limit is not None and len(found) == limit:
            break
        values = value_table(store, int(row), [target])[:, 0]
        known = np.flatnonzero(np.isfinite(values))
        if len(known) >= 2:
            found.append((int(row), known, values[known]))
    return found


@torch.no_grad()
def encode_rows(model, store, rows: list[int], cache: dict[int, dict[str, np.ndarray]]) -> None:
    """Add to ``cache``, for each of ``rows`` not in it yet, every conformer's encoder pooled output and flattened
    soft tokens (float64), so that probing several facts encodes each molecule once."""
    from molbridge.core import batch as keys

    todo = [row for row in dict.fromkeys(rows) if row not in cache]
    samples, owners = [], []
    for row in todo:
        m = store[row]
        for xyz in m.conformers:
            samples.append(
                {keys.ATOMIC_NUMBERS: m.atomic_numbers, keys.POSITIONS: xyz, keys.SMILES: m.smiles, keys.MOL_ID: m.id}
            )
            owners.append(row)
    if not samples:
        return
    pooled, tokens = [], []
    for start in range(0, len(samples), BATCH):
        chunk = samples[start : start + BATCH]
        encoded = model.encoder(model.encoder.collate([model.encoder.featurize_item(s) for s in chunk]))
        pooled.append(encoded.pooled.double())
        tokens.append(model.projector(encoded).flatten(1).double())
    found = {"encoder": torch.cat(pooled).numpy(), "soft_tokens": torch.cat(tokens).numpy()}
    owner = np.array(owners)
    for row in todo:
        cache[row] = {name: values[owner == row] for name, values in found.items()}


def representations(molecules, cache: dict[int, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per conformer that knows the fact (molecule by molecule, in ``molecules``' order), from ``cache``."""
    return {
        name: np.concatenate([cache[row][name][conformers] for row, conformers, _ in molecules])
        for name in ("encoder", "soft_tokens")
    }


def centred(values: np.ndarray, sizes: list[int]) -> np.ndarray:
    """``values`` (rows grouped by molecule, ``sizes`` rows each) minus each molecule's mean."""
    out, start = values.astype(np.float64).copy(), 0
    for n in sizes:
        out[start : start + n] -= out[start : start + n].mean(0)
        start += n
    return out


def ridge_fits(x: np.ndarray, y: np.ndarray, strengths=STRENGTHS) -> list[np.ndarray]:
    """Ridge weights of y on x for each strength (times the largest squared singular value of x); no intercept,
    since both are centred. Features that never differ within a molecule (all zero once centred) get zero
    weights: the probe then predicts no difference, the ceiling."""
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    projected, scale = u.T @ y, float(s[0] ** 2) or 1.0
    return [vt.T @ (s / (s**2 + a * scale) * projected) for a in strengths]


def probe(features: dict[str, np.ndarray], targets: dict[str, np.ndarray], sizes: dict[str, list[int]]) -> dict:
    """Fit on train, pick the strength on valid, predict test: per-conformer errors of the probe and of the
    ceiling (centred target), and the per-molecule fraction of pairs ordered right."""
    from molbridge.plugins.tasks.conformer_order import pairs_ordered_right

    x = {split: centred(features[split], sizes[split]) for split in SPLITS}
    y = {split: centred(targets[split], sizes[split]) for split in SPLITS}
    fits = ridge_fits(x["train"], y["train"])
    valid = [float(np.mean(np.abs(x["valid"] @ w - y["valid"]))) for w in fits]
    best = int(np.argmin(valid))
    predicted = x["test"] @ fits[best]
    ordered, start = [], 0
    for n in sizes["test"]:
        right = pairs_ordered_right(predicted[start : start + n], targets["test"][start : start + n])
        if right.size:
            ordered.append(float(right.mean()))
        start += n
    return {
        "strength": STRENGTHS[best],
        "valid_within_mae": valid[best],
        "errors": np.abs(predicted - y["test"]),
        "ceiling": np.abs(y["test"]),
        "ordered": np.array(ordered),
    }


def answers_within(run: Path, target: str) -> np.ndarray | None:
    """The run's own per-question within-molecule errors of ``target`` on test, where it recorded them."""
    path = run / "items-test.json"
    if not path.is_file():
        return None
    values = json.loads(path.read_text()).get("values", {})
    found = values.get(f"{target}/within_mae")
    return None if found is None else np.array([np.nan if v is None else v for v in found], dtype=float)


def _bounds(interval) -> list[float]:
    return [interval.lo, interval.hi]


def report(
    run: Path, target: str, model, store, kind: str, limit: int | None = None, cache: dict | None = None
) -> dict:
    from molbridge.core import stats

    cache = {} if cache is None else cache
    per_split = {split: conformer_rows(store, store.split(split, kind), target, limit) for split in SPLITS}
    sizes = {split: [len(c) for _, c, _ in found] for split, found in per_split.items()}
    targets = {split: np.concatenate([v for _, _, v in found]) for split, found in per_split.items()}
    encode_rows(model, store, [row for found in per_split.values() for row, _, _ in found], cache)
    features = {split: representations(found, cache) for split, found in per_split.items()}
    result: dict = {"test_molecules": len(sizes["test"]), "test_conformers": int(sum(sizes["test"]))}
    for name in ("encoder", "soft_tokens"):
        found = probe({s: features[s][name] for s in SPLITS}, targets, sizes)
        difference = stats.paired([found["errors"]], [found["ceiling"]], higher=False)
        result[name] = {
            "within_mae": float(found["errors"].mean()),
            "interval": _bounds(stats.bootstrap(found["errors"])),
            "ceiling": float(found["ceiling"].mean()),
            "minus_ceiling": [difference.difference.estimate, *_bounds(difference.difference)],
            "verdict": difference.verdict,
            "pairs_ordered_right": float(found["ordered"].mean()),
            "pairs_interval": _bounds(stats.bootstrap(found["ordered"])),
            "ridge_strength": found["strength"],
            "valid_within_mae": found["valid_within_mae"],  # the error that picked the strength
            "dimensions": int(features["test"][name].shape[1]),
        }
    answered = None if limit is not None else answers_within(run, target)  # all test questions: the same conformers
    if answered is not None:
        result["answers_within_mae"] = float(np.nanmean(answered))
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished LLM-stage run's folder (e.g. a conformer_qa run)")
    parser.add_argument(
        "--target", nargs="+", default=["relative_energy"], help="conformer facts to probe (conformer QA's names)"
    )
    parser.add_argument("--molecules", type=int, help="the first N molecules of each split only (a quick look)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    from molbridge.core.ask import Asker
    from molbridge.core.data.store import open_dataset

    asker = Asker(args.run)
    model = asker.load_model(device="cpu", precision="32-true")
    store = open_dataset(asker.recipe.data.name)
    out, cache = {"run": str(args.run), "targets": {}}, {}
    for target in args.target:
        found = report(args.run, target, model, store, asker.recipe.data.split, args.molecules, cache)
        out["targets"][target] = found
        print(f"{target}: {found['test_conformers']} test conformers of {found['test_molecules']} molecules")
        for name in ("encoder", "soft_tokens"):
            r = found[name]
            print(
                f"  {name:11s} probe within {r['within_mae']:.3f} vs ceiling {r['ceiling']:.3f}: "
                f"{r['minus_ceiling'][0]:+.3f} [{r['minus_ceiling'][1]:+.3f}, {r['minus_ceiling'][2]:+.3f}] "
                f"{r['verdict']}; pairs ordered right {r['pairs_ordered_right']:.3f} "
                f"[{r['pairs_interval'][0]:.3f}, {r['pairs_interval'][1]:.3f}] ({r['dimensions']} dims)"
            )
        if "answers_within_mae" in found:
            print(f"  the LLM's answers: within {found['answers_within_mae']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
