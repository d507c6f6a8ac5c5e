"""Summary of a dataset: counts, splits, failure reasons, fields and property statistics."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from molbridge.core.data.store import MoleculeStore

#: Atoms one Uni-Mol input holds; larger molecules are cropped at featurisation (as the reference)
ENCODER_ATOMS = 256


def _stats(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    if not len(array):
        return {"count": 0}
    summary = {"mean": array.mean(), "std": array.std(), "min": array.min(), "max": array.max()}
    return {"count": int(len(array)), **{k: round(float(v), 4) for k, v in summary.items()}}


def dataset_info(store: MoleculeStore) -> dict[str, Any]:
    """Everything ``bench data info`` prints, as a JSON-ready dict."""
    meta = store.meta
    wanted = ["atomic_numbers", "num_conformers", "converged", "embedding", "texts", "properties", "instructions"]
    tables = []
    for shard in store.shards:
        names = pq.read_schema(shard).names
        tables.append(pq.read_table(shard, columns=[c for c in [*wanted, "forcefield"] if c in names], memory_map=True))
    props: dict[str, list[float]] = {}
    texts: Counter[str] = Counter()
    tasks: Counter[str] = Counter()
    subsets: Counter[str] = Counter()
    embedding: Counter[str] = Counter()
    forcefield: Counter[str] = Counter()
    atoms, heavy, conformers, converged, total_conformers = [], [], [], 0, 0
    for table in tables:
        for row in table["properties"].to_pylist():
            for key, value in row:
                props.setdefault(key, []).append(value)
        for row in table["texts"].to_pylist():
            texts.update(key for key, value in row if value)
        for row in table["instructions"].to_pylist():
            tasks.update(record["task"] for record in row)
            subsets.update(record["subset"] for record in row if record.get("subset"))
        embedding.update(table["embedding"].to_pylist())
        counts = table["num_conformers"].to_pylist()
        if "forcefield" in table.column_names:
            forcefield.update(pc.list_flatten(table["forcefield"]).to_pylist())
        else:  # format 1: MMFF94 everywhere (given coordinates were not optimised)
            for kind, count in zip(table["embedding"].to_pylist(), counts, strict=True):
                forcefield["none" if kind == "given" else "mmff"] += count
        atoms += pc.list_value_length(table["atomic_numbers"]).to_pylist()
        heavy += [sum(1 for z in row if z != 1) for row in table["atomic_numbers"].to_pylist()]
        conformers += counts
        flat = pc.list_flatten(table["converged"])
        converged += int(pc.sum(flat).as_py() or 0)
        total_conformers += len(flat)
    explained = meta["molecules"] + meta["failed"]
    return {
        "name": meta["name"],
        "path": str(store.root),
        "inputs": meta["inputs"],
        "molecules": len(store),
        "failed": meta["failed"],
        "failure_reasons": meta["failure_reasons"],
        "unexplained_drops": meta["inputs"] - explained,
        "splits": {kind: meta["splits"]["counts"][kind] for kind in store.split_kinds()},
        "split_seed": meta["splits"]["seed"],
        "fields": {
            "columns": sorted(pq.read_schema(store.shards[0]).names) if store.shards else [],
            "texts": dict(sorted(texts.items())),
            "properties": sorted(props),
            "instruction_tasks": dict(sorted(tasks.items())),
            "instruction_subsets": dict(sorted(subsets.items())),
        },
        "atoms": {
            **_stats(atoms),
            "heavy": _stats(heavy),
            # molecules an encoder input of 256 atoms crops (Uni-Mol: with hydrogens in all_h, without in no_h)
            f"over_{ENCODER_ATOMS}_with_h": sum(n > ENCODER_ATOMS for n in atoms),
            f"over_{ENCODER_ATOMS}_heavy": sum(n > ENCODER_ATOMS for n in heavy),
        },
        "conformers": {
            **_stats(conformers),
            "total": total_conformers,
            "converged_fraction": round(converged / max(total_conformers, 1), 4),
            "embedding": dict(sorted(embedding.items())),
            "forcefield": dict(sorted(forcefield.items())),
        },
        "properties": {key: _stats(values) for key, values in sorted(props.items())},
        "sources": meta.get("sources", []),
    }


def format_info(info: dict[str, Any]) -> str:
    """A readable multi-line summary."""
    lines = [
        f"{info['name']}  ({info['path']})",
        f"  molecules {info['molecules']} of {info['inputs']} inputs; failed {info['failed']}; "
        f"unexplained drops {info['unexplained_drops']}",
    ]
    for reason, count in info["failure_reasons"].items():
        lines.append(f"    {reason}: {count}")
    for kind, counts in info["splits"].items():
        lines.append(f"  split {kind}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    conf = info["conformers"]
    atoms = info["atoms"]
    lines.append(
        f"  atoms per molecule (with H): mean {atoms.get('mean')}, max {atoms.get('max')}; over "
        f"{ENCODER_ATOMS} (cropped by a {ENCODER_ATOMS}-atom encoder): {atoms[f'over_{ENCODER_ATOMS}_with_h']} "
        f"with H, {atoms[f'over_{ENCODER_ATOMS}_heavy']} without"
    )
    lines.append(
        f"  conformers: {conf['total']} ({conf.get('mean')} per molecule), converged "
        f"{conf['converged_fraction']:.2%}, embedding {conf['embedding']}, force field {conf['forcefield']}"
    )
    lines.append(f"  texts: {info['fields']['texts']}")
    lines.append(f"  instruction tasks: {info['fields']['instruction_tasks']}")
    if info["fields"]["instruction_subsets"]:
        lines.append(f"  instruction sub-datasets: {info['fields']['instruction_subsets']}")
    lines.append("  properties:")
    for key, s in info["properties"].items():
        lines.append(
            f"    {key:<20} n={s['count']:<6} mean={s.get('mean')} std={s.get('std')} "
            f"min={s.get('min')} max={s.get('max')}"
        )
    return "\n".join(lines)
