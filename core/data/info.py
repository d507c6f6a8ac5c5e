"""Summary of a dataset: counts, splits, failure reasons, fields and property statistics."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from molbridge.core.data.store import MoleculeStore


def _stats(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    if not len(array):
        return {"count": 0}
    values = {"mean": array.mean(), "std": array.std(), "min": array.min(), "max": array.max()}
    return {"count": int(len(array)), **{k: round(float(v), 4) for k, v in values.items()}}


def dataset_info(store: MoleculeStore) -> dict[str, Any]:
    """Everything ``bench data info`` prints, as a JSON-ready dict."""
    meta = store.meta
    tables = [
        pq.read_table(
            s,
            columns=[
                "atomic_numbers",
                "num_conformers",
                "converged",
                "embedding",
                "texts",
                "properties",
                "instructions",
            ],
            memory_map=True,
        )
        for s in store.shards
    ]
    props: dict[str, list[float]] = {}
    texts, tasks, embedding = Counter(), Counter(), Counter()
    atoms, conformers, converged, total_conformers = [], [], 0, 0
    for table in tables:
        for row in table["properties"].to_pylist():
            for key, value in row:
                props.setdefault(key, []).append(value)
        for row in table["texts"].to_pylist():
            texts.update(key for key, value in row if value)
        for row in table["instructions"].to_pylist():
            tasks.update(record["task"] for record in row)
        embedding.update(table["embedding"].to_pylist())
        atoms += pc.list_value_length(table["atomic_numbers"]).to_pylist()
        conformers += table["num_conformers"].to_pylist()
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
            "columns": sorted(tables[0].schema.names) if tables else [],
            "texts": dict(sorted(texts.items())),
            "properties": sorted(props),
            "instruction_tasks": dict(sorted(tasks.items())),
        },
        "atoms": _stats(atoms),
        "conformers": {
            **_stats(conformers),
            "total": total_conformers,
            "converged_fraction": round(converged / max(total_conformers, 1), 4),
            "embedding": dict(sorted(embedding.items())),
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
    lines.append(f"  atoms per molecule (with H): mean {atoms.get('mean')}, max {atoms.get('max')}")
    lines.append(
        f"  conformers: {conf['total']} ({conf.get('mean')} per molecule), converged "
        f"{conf['converged_fraction']:.2%}, embedding {conf['embedding']}"
    )
    lines.append(f"  texts: {info['fields']['texts']}")
    lines.append(f"  instruction tasks: {info['fields']['instruction_tasks']}")
    lines.append("  properties:")
    for key, s in info["properties"].items():
        lines.append(
            f"    {key:<20} n={s['count']:<6} mean={s.get('mean')} std={s.get('std')} "
            f"min={s.get('min')} max={s.get('max')}"
        )
    return "\n".join(lines)
