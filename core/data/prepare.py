"""Preparation at scale: inputs -> 3D records in Parquet shards, on all cores, resumable, splittable.

Inputs are cut into fixed shards of ``shard_size`` molecules in input order. A job processes the
shards ``k`` with ``k % N == i`` (``--shard i/N``, for cluster array jobs), skips shards whose files
already exist (resume), and writes each shard atomically. Work is mapped with an ordered ``imap`` so
results are merged in input order whatever the scheduling: the output bytes do not depend on the
number of processes. When every shard exists, the job that notices writes the splits and
``dataset.json``; running the command again without ``--shard`` finishes a split-up build.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from molbridge.core.data import splits as splitting
from molbridge.core.data.conformers import (
    ConformerConfig,
    Failure,
    MoleculeInput,
    MoleculeRecord,
    make_record,
)
from molbridge.core.data.store import FORMAT_VERSION, records_table, write_failures, write_json, write_parquet
from molbridge.core.errors import MolbridgeError

log = logging.getLogger(__name__)

#: Called in the worker on each successful record (adds properties, texts...); a Failure rejects it.
Enrich = Callable[[MoleculeRecord], MoleculeRecord | Failure]

_worker_state: dict[str, Any] = {}


def _init_worker(config: ConformerConfig, enrich: Enrich | None) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # one core per process: tblite/numpy must not oversubscribe
    _worker_state.update(config=config, enrich=enrich)


def _work(item: MoleculeInput) -> MoleculeRecord | Failure:
    result = make_record(item, _worker_state["config"])
    enrich = _worker_state["enrich"]
    if isinstance(result, MoleculeRecord) and enrich is not None:
        try:
            result = enrich(result)
        except Exception as exc:  # noqa: BLE001 - one molecule's failure is reported, the build goes on
            result = Failure(
                item.index, item.id, item.source_text(), "enrich", "rdkit_error", f"{type(exc).__name__}: {exc}"
            )
    if isinstance(result, MoleculeRecord):
        result.mol = None  # the RDKit molecule is not stored; do not ship it back between processes
    return result


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> (i, N) with 0 <= i < N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise MolbridgeError(f"--shard '{text}': expected i/N, e.g. 0/8") from None
    if not 0 <= index < count:
        raise MolbridgeError(f"--shard '{text}': need 0 <= i < N")
    return index, count


def shard_paths(out: Path, k: int) -> tuple[Path, Path]:
    return out / "shards" / f"part-{k:05d}.parquet", out / "failures" / f"part-{k:05d}.jsonl"


def _map(items: Sequence[MoleculeInput], pool, desc: str, progress: bool) -> list:
    if pool is None:
        _init_worker(*_worker_state["init"])
        mapped = map(_work, items)
    else:
        mapped = pool.imap(_work, items, chunksize=max(1, min(16, len(items) // 64)))
    return list(tqdm(mapped, total=len(items), desc=desc, unit="mol", disable=not progress))


def prepare(
    inputs: Sequence[MoleculeInput],
    out: str | Path,
    *,
    name: str,
    config: ConformerConfig | None = None,
    enrich: Enrich | None = None,
    shard: tuple[int, int] = (0, 1),
    shard_size: int = 10_000,
    workers: int | None = None,
    split_seed: int = 0,
    progress: bool = True,
    extra_meta: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Prepare this job's shards; finish the dataset if all shards exist. Returns dataset.json or None."""
    out, config = Path(out), config or ConformerConfig()
    num_shards = max(1, -(-len(inputs) // shard_size))
    mine = [k for k in range(num_shards) if k % shard[1] == shard[0]]
    todo = [k for k in mine if not all(p.is_file() for p in shard_paths(out, k))]
    if len(todo) < len(mine):
        log.info("skipping %d finished shard(s) in %s", len(mine) - len(todo), out)
    workers = workers or os.cpu_count() or 1
    _worker_state["init"] = (config, enrich)
    pool = None
    if todo and workers > 1:
        pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (config, enrich))
    try:
        for k in todo:
            chunk = inputs[k * shard_size : (k + 1) * shard_size]
            results = _map(chunk, pool, f"shard {k + 1}/{num_shards}", progress)
            shard_file, failure_file = shard_paths(out, k)
            write_failures([r for r in results if isinstance(r, Failure)], failure_file)
            write_parquet(records_table(r for r in results if isinstance(r, MoleculeRecord)), shard_file)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    if not all(p.is_file() for k in range(num_shards) for p in shard_paths(out, k)):
        log.info("shards of other jobs are still missing; run again without --shard to finish %s", out)
        return None
    return finalize(
        out,
        name=name,
        num_shards=num_shards,
        inputs=len(inputs),
        config=config,
        split_seed=split_seed,
        extra_meta=extra_meta,
    )


def finalize(
    out: Path,
    *,
    name: str,
    num_shards: int,
    inputs: int,
    config: ConformerConfig,
    split_seed: int,
    extra_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write splits.parquet and dataset.json from the finished shards."""
    shards, smiles, reasons = [], [], Counter()
    for k in range(num_shards):
        shard_file, failure_file = shard_paths(out, k)
        table = pq.read_table(shard_file, columns=["smiles"])
        smiles += table["smiles"].to_pylist()
        failures = [line for line in failure_file.read_text(encoding="utf-8").splitlines() if line]
        reasons.update(json.loads(line)["reason"] for line in failures)
        shards.append(
            {
                "path": shard_file.relative_to(out).as_posix(),
                "failures": failure_file.relative_to(out).as_posix(),
                "molecules": table.num_rows,
                "failed": len(failures),
            }
        )
    labels = {
        "random": splitting.random_split(len(smiles), split_seed),
        "scaffold": splitting.scaffold_split(smiles, split_seed),
    }
    write_parquet(
        pa.table({kind: pa.array(values.tolist(), pa.string()).dictionary_encode() for kind, values in labels.items()}),
        out / "splits.parquet",
    )
    meta = {
        "name": name,
        "format_version": FORMAT_VERSION,
        "inputs": inputs,
        "molecules": len(smiles),
        "failed": sum(reasons.values()),
        "failure_reasons": dict(sorted(reasons.items())),
        "shards": shards,
        "conformers": dataclasses.asdict(config),
        "splits": {
            "kinds": sorted(labels),
            "seed": split_seed,
            "fractions": list(splitting.DEFAULT_FRACTIONS),
            "counts": {kind: dict(sorted(Counter(v.tolist()).items())) for kind, v in labels.items()},
        },
        **(extra_meta or {}),
    }
    if meta["molecules"] + meta["failed"] != inputs:
        raise MolbridgeError(
            f"{out}: {meta['molecules']} molecules + {meta['failed']} failures != "
            f"{inputs} inputs; shards come from a different input, delete the directory"
            " and prepare again"
        )
    write_json(meta, out / "dataset.json")
    return meta
