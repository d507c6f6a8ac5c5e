"""Can an encoder, trained end to end on nothing but one conformer fact, tell which of two conformers of a molecule
has more of it? The ceiling of what a conformer task can teach that encoder on this data.

    .venv/bin/python benchmarks/conformer_order.py --encoder unimol --target relative_energy [--steps 800]
                                                   [--json out.json] [encoder.KEY=VALUE ...]

The encoder (any registered one, built from the ``conformer_retrieval`` recipe's ``encoder`` section with the
overrides given) gets a linear head on its mean-pooled atoms, and each step 16 training molecules (scaffold split
of molbridge-mini) with two of their conformers each; the loss is the logistic loss of the two scores' difference
against which conformer has the larger target (a ranking, so the molecule's own level cancels, as in conformer
QA's within-molecule error). Targets: the facts conformer QA asks (``radius_of_gyration``, ``max_distance``,
``relative_energy``, the MMFF94 energy above the molecule's lowest conformer, and on request ``surface_area``,
``intramolecular_hbonds`` and the GFN2-xTB ``xtb_dipole``, ``xtb_gap`` and ``xtb_relative_energy``;
:func:`molbridge.plugins.tasks.conformer_qa.conformer_values`). Reported on every pair
of conformers of each test molecule with two or more: the fraction ordered right (chance 0.5; ties in the target
are skipped there, and trained towards no order; molecules whose conformers all share the target's value are left
out), with a bootstrap 95% interval over test molecules, also for pairs whose target differs by more than
``--gap``. Losses are averaged over the first and the
last 100 steps: a loss that stays at ln 2 = 0.693 learned nothing.

A probe, outside the loop (plain AdamW, no schedule, nothing saved). The ``conformer_order`` task trains the same
objective through the loop and keeps its encoder for a later stage (``train.init_from=stage:conformer_order``);
both score pairs with :func:`molbridge.plugins.tasks.conformer_order.pairs_ordered_right`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np
import torch

TARGETS = (
    "radius_of_gyration",
    "max_distance",
    "relative_energy",
    "surface_area",
    "intramolecular_hbonds",
    "xtb_dipole",
    "xtb_gap",
    "xtb_relative_energy",
)
BATCH = 16


def molecules(split: str, target: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(atomic numbers, conformers, target per conformer) of each molecule of ``split`` whose conformers that
    have the target do not all share one value."""
    from molbridge.core.data.store import open_dataset
    from molbridge.plugins.tasks.conformer_qa import value_table

    dataset, found = open_dataset("molbridge-mini"), []
    for index in dataset.split(split):
        m = dataset[int(index)]
        values = value_table(dataset, int(index), [target])[:, 0]
        keep = np.isfinite(values)
        if len(set(values[keep])) >= 2:  # conformers that differ in it (a count such as H-bonds often does not)
            found.append((m.atomic_numbers, m.conformers[keep], values[keep]))
    return found


class Scorer(torch.nn.Module):
    """The encoder, mean-pooled over its real positions, and one linear score."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder, self.head = encoder, torch.nn.Linear(encoder.output_dim, 1)

    def forward(self, atoms_and_positions) -> torch.Tensor:
        features = [self.encoder.featurize(z, xyz) for z, xyz in atoms_and_positions]
        out = self.encoder(self.encoder.collate(features))
        real = (~out.padding_mask).unsqueeze(-1).float()
        return self.head((out.atom_embeddings * real).sum(1) / real.sum(1)).squeeze(-1)


def train(scorer: Scorer, data, steps: int, rng: np.random.Generator, lr: float) -> list[float]:
    optimizer = torch.optim.AdamW(scorer.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        first, second, larger = [], [], []
        for k in rng.choice(len(data), BATCH, replace=False):
            z, conformers, values = data[k]
            i, j = rng.choice(len(conformers), 2, replace=False)
            first.append((z, conformers[i]))
            second.append((z, conformers[j]))
            larger.append(0.5 if values[i] == values[j] else float(values[i] > values[j]))  # a tie: no order
        scores = scorer(first + second)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            scores[:BATCH] - scores[BATCH:], torch.tensor(larger)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def ordered(scorer: Scorer, data, gap: float) -> tuple[list[float], list[float]]:
    """Per test molecule, the fraction of its conformer pairs ordered right: all pairs, and pairs apart by > gap
    (NaN where it has none)."""
    from molbridge.plugins.tasks.conformer_order import pairs_ordered_right

    scorer.eval()
    every, wide = [], []
    for z, conformers, values in data:
        scores = scorer([(z, c) for c in conformers]).numpy()
        right = pairs_ordered_right(scores, values)  # the pairs whose values differ, in combinations' order
        pairs = [(i, j) for i, j in itertools.combinations(range(len(values)), 2) if values[i] != values[j]]
        apart = np.array([abs(values[i] - values[j]) > gap for i, j in pairs], dtype=bool)
        every.append(right.mean() if len(right) else np.nan)
        wide.append(right[apart].mean() if apart.any() else np.nan)
    return every, wide


def interval(values: list[float]) -> dict[str, float]:
    from molbridge.core import stats

    kept = np.array([v for v in values if np.isfinite(v)])
    estimate = stats.configuration([kept]).interval
    return {"ordered_right": estimate.estimate, "lo": estimate.lo, "hi": estimate.hi, "molecules": len(kept)}


def main(argv: list[str] | None = None) -> dict:
    from molbridge.core.plugins import get_registry
    from molbridge.core.recipe import load_recipe

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default="unimol")
    parser.add_argument("--target", choices=TARGETS, default="relative_energy")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--gap", type=float, default=1.0, help="also report pairs whose target differs by more")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the result here")
    parser.add_argument("overrides", nargs="*", help="encoder.KEY=VALUE settings of the encoder")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    registry = get_registry()
    config = load_recipe("conformer_retrieval", args.overrides, registry, {"encoder": args.encoder}).encoder
    scorer = Scorer(registry.build("encoder", config))
    train_set, test_set = molecules("train", args.target), molecules("test", args.target)
    start = time.perf_counter()
    losses = train(scorer, train_set, args.steps, np.random.default_rng(args.seed), args.lr)
    every, wide = ordered(scorer, test_set, args.gap)
    result = {
        "encoder": args.encoder,
        "overrides": args.overrides,
        "target": args.target,
        "steps": args.steps,
        "train_molecules": len(train_set),
        "loss_first_100": float(np.mean(losses[:100])),
        "loss_last_100": float(np.mean(losses[-100:])),
        "all_pairs": interval(every),
        f"pairs_apart_by_more_than_{args.gap:g}": interval(wide),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
