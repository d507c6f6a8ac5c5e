"""A 2x2 sweep run one child at a time against ``--jobs N`` at once, in the same run.

    .venv/bin/python benchmarks/sweep.py [--steps 150] [--jobs 2] [--json F]

The sweep: the packaged retrieval recipe, grid encoder {unimol, schnet} x projector {qformer, linear}, seed 0,
``--steps`` training steps, no evaluation during training (the test evaluation at the end is included). Both
ways run ``bench sweep`` as a user would, each in a fresh working directory, so the wall time covers process
start, data loading, training, evaluation and MLflow. Each way runs twice: first with a cold feature cache (the
sweep's children share it as any runs do: they encode the texts of the locked text tower once, together), then
again in another fresh directory with that cache warm, as any sweep after the first run of the main job finds it.

Reported per cache state: the two wall times and their ratio (parallel / sequential; below 1 is faster); the
children's own run times summed each way (``provenance.wall_time_s``: one thread beside another child against all
cores alone) and the bound they set on the ratio (that sum for ``--jobs`` divided by the jobs, over the sequential
sum: what the parallel sweep would take with no parent and no idle worker); and the
largest difference between the two ways in any child's test metric: ``--jobs`` gives each child fewer threads,
which changes the order of float sums, not the computation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(sys.executable).with_name("bench")


def run_sweep(steps: int, jobs: int, cache: Path) -> tuple[float, dict[str, float], float]:
    """Wall seconds of one ``bench sweep``, each child's test/full_acc and the children's own run times summed
    (each run's ``provenance.wall_time_s``: not the wait for a free worker), in a fresh directory, with ``cache``."""
    with tempfile.TemporaryDirectory() as work:
        env = {**os.environ, "MOLBRIDGE_CACHE": str(cache)}
        command = [
            str(BENCH),
            "sweep",
            "retrieval",
            "--encoder",
            "unimol,schnet",
            "--projector",
            "qformer,linear",
            "--seeds",
            "1",
            "--name",
            "bench",
            "--jobs",
            str(jobs),
            f"train.max_steps={steps}",
            "train.eval_every=0",
        ]
        start = time.perf_counter()
        subprocess.run(command, cwd=work, env=env, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        summary = json.loads((Path(work) / "runs" / "sweep-bench" / "sweep.json").read_text())
        children_s = sum(
            json.loads((Path(work) / child["output_dir"] / "metrics.json").read_text())["provenance"]["wall_time_s"]
            for child in summary["children"]
        )
    return seconds, _child_metrics(summary), children_s


def _child_metrics(summary: dict) -> dict[str, float]:
    """Each child's key -> its test/full_acc, from sweep.json."""
    return {child["key"]: child["metrics"]["test/full_acc"] for child in summary["children"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150, help="training steps of each child")
    parser.add_argument("--jobs", type=int, default=2, help="children at once in the parallel way")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    result: dict = {"children": 4, "steps": args.steps, "jobs": args.jobs}
    with tempfile.TemporaryDirectory() as caches:
        sequential_cache, parallel_cache = Path(caches) / "sequential", Path(caches) / "parallel"
        for state in ("cold", "warm"):
            sequential, metrics_sequential, children_sequential = run_sweep(args.steps, 1, sequential_cache)
            parallel, metrics_parallel, children_parallel = run_sweep(args.steps, args.jobs, parallel_cache)
            result |= {
                f"{state}_sequential_s": round(sequential, 1),
                f"{state}_parallel_s": round(parallel, 1),
                f"{state}_parallel_vs_sequential": round(parallel / sequential, 3),
                # The best --jobs can do: its children's own run time shared out over the jobs, against the
                # sequential children's. A child alone on all cores is s times faster than on a share of them
                # beside the others, so the parallel sweep cannot go below about s / jobs of the sequential one.
                f"{state}_children_parallel_vs_sequential": round(children_parallel / children_sequential, 3),
                f"{state}_bound": round(children_parallel / args.jobs / children_sequential, 3),
                f"{state}_max_metric_diff": max(
                    abs(metrics_sequential[k] - metrics_parallel[k]) for k in metrics_parallel
                ),
            }
    for key, value in result.items():
        print(f"{key:<28} {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
