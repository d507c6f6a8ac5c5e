"""Molecule-text retrieval ranking at 10k and 100k candidates: molbridge's bounded-memory ranks vs the naive way.

    .venv/bin/python benchmarks/retrieval.py [--sizes 10000 100000] [--chunk 1024] [--batch 64] [--json F]

Features have 3D-MoLM's shapes: each molecule Q = 8 query-token features, each text one, all E = 256 wide
(the Q-Former's contrastive projection), random and L2-normalised; sim(mol i, text j) = max_q mol[i, q] . text[j].
Their components are rounded to multiples of 2^-11 so that every dot product is exact in fp32 whatever the
summation order: the two methods must then give identical ranks, and the run fails (exit 2) if they do not.

Two protocols, each against the naive way (the baseline, as the reference code does it):
- **full set**: every molecule ranked against all N texts and every text against all N molecules.
  molbridge: ``full_set_ranks`` (row chunks, running max over Q, counting instead of sorting; memory
  O(chunk x N)). Naive: the whole (N, Q, N) similarity, max over Q, then an argsort of every row and
  every column. Where the naive way would need more than 80% of the free memory it is skipped and the
  memory it would need is reported.
- **in batch** (batches of 64 in dataset order): ``in_batch_ranks`` vs a (64, Q, 64) similarity and
  argsort per batch; one CPU thread for both (with two threads on a busy 2-core machine, spin-waiting
  between the tiny per-batch operations made both several times slower).

Each measurement runs in a subprocess of its own so that its peak memory is its own: on CPU the growth
of peak RSS above the features (which are made in place), on GPU ``torch.cuda.max_memory_allocated``
above the features. Reported: seconds, queries/s (2N queries: both directions), peak memory, and the
speed and memory ratios against the naive way.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from molbridge.plugins.tasks.retrieval_metrics import full_set_ranks, in_batch_ranks

QUERY_TOKENS = 8  # 3D-MoLM's Q-Former queries
EMBED_DIM = 256  # its contrastive projection (TextTowerConfig.embed_dim)
GRID = 2.0**-11  # components on this grid: products on 2^-22, sums below 2 exact in fp32's 24-bit mantissa
PROTOCOLS = ("full", "inbatch")
METHODS = ("molbridge", "naive")


def make_features(n: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random L2-normalised (N, Q, E) molecule and (N, E) text features on GRID, made in place (no peak above them)."""
    generator = torch.Generator().manual_seed(seed)
    mol = torch.empty(n, QUERY_TOKENS, EMBED_DIM).normal_(generator=generator)
    text = torch.empty(n, EMBED_DIM).normal_(generator=generator)
    for x in (mol, text):
        x.div_(x.norm(dim=-1, keepdim=True)).div_(GRID).round_().mul_(GRID)
    return mol.to(device), text.to(device)


def _positions(order: torch.Tensor) -> torch.Tensor:
    """Where each row's own index (row r looks for r) sits in its sorted order."""
    rows = torch.arange(order.shape[0], device=order.device)
    return (order == rows[:, None]).int().argmax(dim=1)


def naive_ranks(mol: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole (N, Q, N) similarity, max over Q, then a stable descending argsort of every row and column."""
    n = mol.shape[0]
    sim = (mol.reshape(n * QUERY_TOKENS, EMBED_DIM) @ text.T).view(n, QUERY_TOKENS, n).amax(dim=1)
    m2t = _positions(sim.argsort(dim=1, descending=True, stable=True))
    t2m = _positions(sim.T.argsort(dim=1, descending=True, stable=True))
    return m2t.cpu(), t2m.cpu()


def naive_in_batch(mol: torch.Tensor, text: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``naive_ranks`` on consecutive batches in dataset order."""
    parts = [naive_ranks(mol[s : s + batch], text[s : s + batch]) for s in range(0, mol.shape[0], batch)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def naive_bytes(n: int) -> int:
    """Peak memory of the naive full-set ranking: the (N, Q, N) fp32 scores and their (N, N) max, alive together
    (the argsorts after them need less: (N, N) int64 order and its comparison with the row index)."""
    return n * n * (QUERY_TOKENS * 4 + 4)


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info()[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(
    protocol: str, method: str, n: int, chunk: int, batch: int, device: torch.device, ranks_out: Path | None
) -> dict:
    """Time one (protocol, method) at N in this process; its ranks go to ``ranks_out`` for the identity check."""
    cuda = device.type == "cuda"
    if protocol == "inbatch":  # 64 x 64 blocks are too small to split; two threads on a busy CPU mostly spin-wait
        torch.set_num_threads(1)
    mol, text = make_features(n, device)
    run = {
        ("full", "molbridge"): lambda: full_set_ranks(mol, text, chunk_size=chunk),
        ("full", "naive"): lambda: naive_ranks(mol, text),
        ("inbatch", "molbridge"): lambda: in_batch_ranks(mol, text, batch_size=batch),
        ("inbatch", "naive"): lambda: naive_in_batch(mol, text, batch),
    }[protocol, method]
    with torch.no_grad():  # warm-up on a slice: thread pools, kernels, allocator
        {"full": full_set_ranks, "inbatch": in_batch_ranks}[protocol](mol[: 2 * batch], text[: 2 * batch])
        naive_ranks(mol[: 2 * batch], text[: 2 * batch])
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    held_mb = torch.cuda.memory_allocated() / 2**20 if cuda else _rss_mb()
    start = time.perf_counter()
    with torch.no_grad():
        m2t, t2m = run()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if cuda else _rss_mb()) - held_mb
    if ranks_out:
        torch.save({"m2t": m2t, "t2m": t2m}, ranks_out)
    return {
        "protocol": protocol,
        "method": method,
        "n": n,
        "seconds": round(seconds, 4),
        "queries_per_s": round(2 * n / seconds, 1),
        "peak_mb": round(peak_mb, 1),
        "threads": torch.get_num_threads(),
        "features_mb": round((mol.numel() + text.numel()) * 4 / 2**20, 1),
    }


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"


def _run_one(protocol: str, method: str, n: int, args, ranks_out: Path) -> dict:
    command = [
        sys.executable,
        __file__,
        "--one",
        protocol,
        method,
        "--sizes",
        str(n),
        "--chunk",
        str(args.chunk),
        "--batch",
        str(args.batch),
        "--device",
        args.device,
        "--ranks-out",
        str(ranks_out),
    ]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        why = "killed (out of memory?)" if out.returncode == -9 else (out.stderr.strip().splitlines() or ["?"])[-1]
        return {"protocol": protocol, "method": method, "n": n, "error": why}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _identical(ours: Path, theirs: Path) -> int:
    """Number of ranks (both directions) on which the two methods differ."""
    a, b = torch.load(ours), torch.load(theirs)
    return int((a["m2t"] != b["m2t"]).sum() + (a["t2m"] != b["t2m"]).sum())


def compare(protocol: str, n: int, args, device: torch.device, work: Path) -> dict:
    """Both methods at N (the naive full set skipped when it cannot fit), ratios and the identity check."""
    ranks = {m: work / f"{protocol}-{n}-{m}.pt" for m in METHODS}
    ours = _run_one(protocol, "molbridge", n, args, ranks["molbridge"])
    row = {"protocol": protocol, "n": n, "molbridge": ours}
    need = naive_bytes(n) if protocol == "full" else naive_bytes(min(n, args.batch))
    if need > 0.8 * free_bytes(device):
        row["naive"] = {
            "skipped": f"needs {need / 2**30:.1f} GiB, {free_bytes(device) / 2**30:.1f} GiB free",
            "needs_gib": round(need / 2**30, 1),
        }
        return row
    theirs = row["naive"] = _run_one(protocol, "naive", n, args, ranks["naive"])
    if "error" not in ours and "error" not in theirs:
        row["differing_ranks"] = _identical(ranks["molbridge"], ranks["naive"])
        row["speedup"] = round(theirs["seconds"] / ours["seconds"], 3)
        row["memory_ratio"] = round(ours["peak_mb"] / theirs["peak_mb"], 4) if theirs["peak_mb"] > 0 else None
    return row


def _print(result: dict) -> None:
    print(
        f"## retrieval ranking: Q={result['query_tokens']}, E={result['embed_dim']}, chunk {result['chunk']}, "
        f"in-batch {result['batch']}, {result['device']}"
    )
    print(
        "| protocol | N | molbridge s | queries/s | peak MB | naive s | naive peak MB | speed-up | memory | "
        "identical |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    for r in result["comparisons"]:
        ours, theirs = r["molbridge"], r["naive"]
        naive = (
            f"skipped: {theirs['skipped']} | -"
            if "skipped" in theirs
            else f"failed: {theirs['error']} | -"
            if "error" in theirs
            else f"{theirs['seconds']} | {theirs['peak_mb']}"
        )
        mine = (
            f"failed: {ours['error']} | - | -"
            if "error" in ours
            else f"{ours['seconds']} | {ours['queries_per_s']} | {ours['peak_mb']}"
        )
        same = (
            "-"
            if "differing_ranks" not in r
            else ("yes" if r["differing_ranks"] == 0 else f"NO ({r['differing_ranks']} differ)")
        )
        print(
            f"| {r['protocol']} | {r['n']} | {mine} | {naive} | {r.get('speedup', '-')} | "
            f"{r.get('memory_ratio', '-')} | {same} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="candidates N")
    parser.add_argument("--chunk", type=int, default=1024, help="full_set_ranks' chunk of query rows")
    parser.add_argument("--batch", type=int, default=64, help="in-batch protocol's batch (3D-MoLM: 64)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--one", nargs=2, metavar=("PROTOCOL", "METHOD"), help=argparse.SUPPRESS)  # internal
    parser.add_argument("--ranks-out", type=Path, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        sys.exit(2)
    device = torch.device(args.device)
    if args.one:
        protocol, method = args.one
        print(json.dumps(measure(protocol, method, args.sizes[0], args.chunk, args.batch, device, args.ranks_out)))
        return
    with tempfile.TemporaryDirectory() as work:
        comparisons = [compare(p, n, args, device, Path(work)) for n in args.sizes for p in PROTOCOLS]
    result = {
        "query_tokens": QUERY_TOKENS,
        "embed_dim": EMBED_DIM,
        "chunk": args.chunk,
        "batch": args.batch,
        "device": _device_name(device),
        "precision": "fp32",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "comparisons": comparisons,
    }
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    failed = [c for c in comparisons if c.get("differing_ranks") or "error" in c["molbridge"] or "error" in c["naive"]]
    if failed:
        print(f"error: {len(failed)} comparison(s) failed or gave different ranks", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
