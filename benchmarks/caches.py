"""What the feature caches and size bucketing save, each against recomputing in the same run.

    .venv/bin/python benchmarks/caches.py [--molecules 512] [--texts 2048] [--json F]

1. ``encoder``: the frozen encoder's part of a stage-2 epoch on molbridge-mini (the packaged captioning recipe's
   Uni-Mol small, its batches of 16 in a seeded random order): featurising, collating and running the encoder on
   every batch (what a run does every epoch without ``data.cache``) against assembling the same batches from the
   cache (every epoch after the first). The one-off cost of filling the cache is reported too.
2. ``text-tower``: the main job's text encoding (the packaged retrieval recipe's locked text tower, every text of
   the splits read) from a cold cache against a warm one.
3. ``bucketing``: the share of padded positions and of padded pairs (Uni-Mol's attention), and Uni-Mol's forward
   time over the same molecules, in random batches against size-bucketed batches (``data.bucketing``), on
   molbridge-mini's training molecules and on a long-tail sample (the 1,000 drug-like and natural-product
   molecules of core/data/samples.py: real atoms; coordinates random, which the forward's cost does not depend on).

Single process, the threads torch chooses; each timing is the best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def best_of(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def _items(molecules: int) -> list[dict]:
    from molbridge.core.data import MoleculeDataset

    data = MoleculeDataset.from_split("molbridge-mini", "train", "scaffold", augment=False, limit=molecules)
    return [data[i] for i in range(len(data))]


def _encoder(recipe: str, preset: str | None = None):
    from molbridge.core.plugins import get_registry
    from molbridge.core.recipe import load_recipe

    overrides = [f"encoder.preset={preset}"] if preset else []
    config = load_recipe(recipe, overrides).encoder
    return get_registry().build("encoder", config).eval(), config


@torch.no_grad()
def encoder_part(molecules: int, repeats: int) -> dict:
    from omegaconf import OmegaConf

    from molbridge.core.cache import EncoderCache

    encoder, config = _encoder("captioning")
    items = _items(molecules)
    order = np.random.default_rng(0).permutation(len(items))
    batches = [[items[i] for i in order[s : s + 16]] for s in range(0, len(items), 16)]

    def live():
        for batch in batches:
            encoder(encoder.collate([encoder.featurize_item(item) for item in batch]))

    with tempfile.TemporaryDirectory() as root:
        cache = EncoderCache(encoder, OmegaConf.to_container(config), base=Path(root))
        start = time.perf_counter()
        cache.fill(items, batch_size=64, progress=False)
        fill = time.perf_counter() - start

        def cached():
            for batch in batches:
                cache.encoded(batch)

        recompute, read = best_of(repeats, live), best_of(repeats, cached)
    return {
        "molecules": len(items),
        "batches": len(batches),
        "recompute_s": recompute,
        "cached_s": read,
        "fill_s": fill,
        "speedup": recompute / read,
    }


def text_tower(texts: int, repeats: int) -> dict:
    from molbridge.core.plugins import get_registry
    from molbridge.core.recipe import load_recipe
    from molbridge.core.registry import build_components

    registry = get_registry()
    recipe = load_recipe("retrieval", ["task.baseline=false", f"data.limit={texts}", f"data.eval_limit={texts // 8}"])
    task = registry.build("task", recipe.task, recipe=recipe, registry=registry)
    components = build_components(recipe, registry)
    model = task.assemble(recipe.task, components.encoder, components.projector, None)
    task.encoder, task.projector, task.text_side = components.encoder, components.projector, model.text
    previous = os.environ.get("MOLBRIDGE_CACHE")
    with tempfile.TemporaryDirectory() as root:
        os.environ["MOLBRIDGE_CACHE"] = root
        try:
            start = time.perf_counter()
            task._encode_texts()  # cold: every text through the tower, then stored
            cold = time.perf_counter() - start
            report = dict(task.text_cache_report)
            warm = best_of(repeats, task._encode_texts)
            assert task.text_cache_report["computed"] == 0
        finally:
            os.environ.pop("MOLBRIDGE_CACHE") if previous is None else os.environ.update(MOLBRIDGE_CACHE=previous)
    return {"texts": report["texts"], "cold_s": cold, "warm_s": warm, "speedup": cold / warm}


def _long_tail() -> list[dict]:
    from rdkit import Chem

    from molbridge.core import batch as keys
    from molbridge.core.data.samples import real_sample

    rng, items = np.random.default_rng(0), []
    for molecule in real_sample():
        mol = Chem.AddHs(Chem.MolFromSmiles(molecule.smiles))
        z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
        positions = rng.uniform(0, 2.0 * len(z) ** (1 / 3), size=(len(z), 3)).astype(np.float32)
        items.append(
            {keys.MOL_ID: molecule.id, keys.SMILES: molecule.smiles, keys.ATOMIC_NUMBERS: z, keys.POSITIONS: positions}
        )
    return items


@torch.no_grad()
def bucketing(items: list[dict], repeats: int, batch_size: int = 32) -> dict:
    from molbridge.core.data.batching import bucketed, padding_fraction

    sizes = [len(item["atomic_numbers"]) for item in items]  # what data.bucketing groups by (atoms with H)
    order = np.random.default_rng(0).permutation(len(items)).tolist()
    random_batches = [order[s : s + batch_size] for s in range(0, len(order) - batch_size + 1, batch_size)]
    grouped = bucketed(order, sizes, batch_size, seed=0)
    bucket_batches = [grouped[s : s + batch_size] for s in range(0, len(grouped) - batch_size + 1, batch_size)]
    result = {"molecules": len(items), "batch_size": batch_size}
    for preset in ("small", "base"):
        encoder, _ = _encoder("retrieval", preset)
        features = [encoder.featurize_item(item) for item in items]
        positions = [len(f["src_tokens"]) for f in features]  # what Uni-Mol sees: heavy atoms + [CLS], [SEP]
        for name, batches in (("random", random_batches), ("bucketed", bucket_batches)):
            inputs = [encoder.collate([features[i] for i in batch]) for batch in batches]
            seconds = best_of(repeats, lambda inputs=inputs, encoder=encoder: [encoder(x) for x in inputs])
            result[f"{preset}_{name}_s"] = seconds
            result[f"{name}_padding_positions"] = padding_fraction(batches, positions)
            result[f"{name}_padding_pairs"] = padding_fraction(batches, positions, power=2)
        result[f"{preset}_speedup"] = result[f"{preset}_random_s"] / result[f"{preset}_bucketed_s"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--molecules", type=int, default=512, help="molbridge-mini training molecules")
    parser.add_argument("--texts", type=int, default=2048, help="training texts for the text tower")
    parser.add_argument("--long-tail", type=int, default=1000, help="molecules of the long-tail sample (max 1000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    results = {
        "threads": torch.get_num_threads(),
        "encoder": encoder_part(args.molecules, args.repeats),
        "text_tower": text_tower(args.texts, args.repeats),
        "bucketing_mini": bucketing(_items(args.molecules), args.repeats),
        "bucketing_long_tail": bucketing(_long_tail()[: args.long_tail], args.repeats),
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
