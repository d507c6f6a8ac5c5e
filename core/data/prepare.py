"""Preparation at scale: inputs -> 3D records in Parquet shards, on all cores, resumable, splittable.

Inputs are cut into fixed shards of ``shard_size`` molecules in input order. A job processes the
shards ``k`` with ``k % N == i`` (``--shard i/N``, for cluster array jobs), skips shards whose files
already exist (resume), and writes each shard atomically. Work is mapped in input order whatever the
scheduling (:class:`~molbridge.core.data.pool.WorkerPool`: a crashing or hung worker costs one molecule,
named in the failures, not the build; Ctrl-C stops every worker), so the output bytes do not depend on
the number of processes. Memory is bounded by one shard being computed and one being written (in a
background thread, while the next shard runs); ``inputs`` may be a lazy sequence that materialises a
shard only when it is sliced. One progress bar covers every shard of the job, with its ETA. Inputs whose
coordinates are given (the 3D-MoLM release) need no embedding and are converted in this process. When every
shard exists, the job that notices writes the splits and ``dataset.json``; running the command again
without ``--shard`` finishes a split-up build.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
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
    time_limit,
)
from molbridge.core.data.pool import CRASHED, WorkerLost, WorkerPool
from molbridge.core.data.store import FORMAT_VERSION, records_table, write_failures, write_json, write_parquet
from molbridge.core.errors import MolbridgeError

log = logging.getLogger(__name__)

DESCRIPTIONS = ("description", "enriched_description")  # a molecule with one of these is "described"
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


def _from_lost(item: MoleculeInput, lost: WorkerLost) -> Failure:
    reason = "worker_crashed" if lost.kind == CRASHED else "timeout"
    return Failure(item.index, item.id, item.source_text(), "worker", reason, lost.detail)


def _write_shard(out: Path, k: int, results: list) -> None:
    shard_file, failure_file = shard_paths(out, k)
    write_failures([r for r in results if isinstance(r, Failure)], failure_file)
    write_parquet(records_table(r for r in results if isinstance(r, MoleculeRecord)), shard_file)


def hard_limit(config: ConformerConfig) -> float:
    """Seconds after which a worker still on one molecule is killed: a safety net far above the normal limit."""
    return 3 * time_limit(config.max_atoms, config) + 60


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
    hard_limit_s: float | None = None,
) -> dict[str, Any] | None:
    """Prepare this job's shards; finish the dataset if all shards exist. Returns dataset.json or None."""
    out, config = Path(out), config or ConformerConfig()
    num_shards = max(1, -(-len(inputs) // shard_size))
    mine = [k for k in range(num_shards) if k % shard[1] == shard[0]]
    todo = [k for k in mine if not all(p.is_file() for p in shard_paths(out, k))]
    if len(todo) < len(mine):
        log.info("skipping %d finished shard(s) in %s", len(mine) - len(todo), out)
    workers = workers or os.cpu_count() or 1
    total = sum(min(shard_size, len(inputs) - k * shard_size) for k in todo)
    bar = tqdm(total=total, desc=f"{name}: {len(todo)} shard(s)", unit="mol", disable=not progress, smoothing=0.05)
    pool: WorkerPool | None = None
    writer, writing = ThreadPoolExecutor(1, thread_name_prefix="shard-writer"), None
    interrupted = True
    try:
        for k in todo:
            chunk = inputs[k * shard_size : (k + 1) * shard_size]
            if workers > 1 and any(item.coordinates is None and item.failure is None for item in chunk):
                if pool is None:
                    limit = hard_limit_s or hard_limit(config)
                    size = max(1, min(8, len(chunk) // (workers * 16)))
                    pool = WorkerPool(
                        workers, _work, _init_worker, (config, enrich), hard_limit_s=limit, chunksize=size
                    )
                mapped = pool.map(chunk, on_result=lambda: bar.update())
                results = [
                    _from_lost(item, r) if isinstance(r, WorkerLost) else r
                    for item, r in zip(chunk, mapped, strict=True)
                ]
            else:
                _init_worker(config, enrich)
                results = []
                for item in chunk:
                    results.append(_work(item))
                    bar.update()
            if writing is not None:
                writing.result()
            writing = writer.submit(_write_shard, out, k, results)
        if writing is not None:
            writing.result()
        interrupted = False
    finally:
        if pool is not None:
            pool.close(kill=interrupted)
        writer.shutdown(wait=True)  # a shard being written is finished (atomically) even on Ctrl-C
        bar.close()
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
    shards, smiles, described = [], [], []
    given: list[str | None] = []
    reasons: Counter[str] = Counter()
    for k in range(num_shards):
        shard_file, failure_file = shard_paths(out, k)
        has_given = "given_split" in pq.read_schema(shard_file).names  # format-1 shards of a resumed build lack it
        table = pq.read_table(shard_file, columns=["smiles", "texts"] + (["given_split"] if has_given else []))
        smiles += table["smiles"].to_pylist()
        given += table["given_split"].to_pylist() if has_given else [None] * table.num_rows
        described += [any(k in DESCRIPTIONS and v.strip() for k, v in row) for row in table["texts"].to_pylist()]
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
        **splitting.given_kinds(given, described),
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
            "kinds": list(labels),
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
