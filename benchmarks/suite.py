"""The performance suite: every benchmark in one command, results and the machine written to benchmarks/results/.

    .venv/bin/python benchmarks/suite.py [--quick | --tiny] [--device auto|cpu|cuda] [--only NAME ...] [--out DIR]

Runs each benchmark of this folder in a subprocess of its own (conformer preparation, encoder forward, caches
and size bucketing, stage-1 training step, a 2x2 sweep one child at a time and in parallel, full-set and
in-batch retrieval at 10k and 100k candidates, generation tokens/s, stage-3 step), each at the sizes of the
mode: default (the README's sizes; on the 2-core project machine the 100k full-set ranking alone takes about
17 minutes when the machine is quiet, and the other benchmarks took 30 minutes at a load average of 6 to 10),
``--quick`` (smaller) or ``--tiny`` (smoke test only, the figures mean nothing). Every figure is a ratio
against a baseline measured in the same run by the benchmark itself; the suite reads the measured numbers
from each benchmark's JSON and computes the ratios from them.

Writes ``DIR/<UTC date>-<host>/``: ``<benchmark>.json`` (its command, status, time, raw result and the
rows taken from it), ``summary.json``, ``summary.md`` (one table: benchmark, measurement, baseline, ratio,
peak memory) and ``machine.json`` (CPU, cores, RAM, OS, Python and library versions, the CUDA device,
the git commit and whether the tree was dirty, the load average at start and end, the exact command).
A benchmark that fails is recorded with the tail of its stderr and the others go on; the exit status
is then 1. CUDA is used when present (``--device auto``); ``--device cpu`` hides it from the benchmarks.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODES = ("tiny", "quick", "default")


@dataclass
class Row:
    """One figure: a measurement against the baseline measured in the same run (ratio > 1: better than it)."""

    benchmark: str
    measurement: str
    value: float
    unit: str
    baseline: str | None = None
    baseline_value: float | None = None
    higher_is_better: bool = True
    peak_mb: float | None = None
    note: str = ""
    error: str | None = None  # this part of the benchmark failed (the benchmark itself went on)
    ratio: float | None = field(init=False)

    def __post_init__(self):
        self.ratio = None
        if self.baseline_value and self.value:
            raw = self.value / self.baseline_value if self.higher_is_better else self.baseline_value / self.value
            self.ratio = round(raw, 3)


@dataclass
class Benchmark:
    """A benchmark: its command line per mode (after the interpreter; ``{json}`` is its output file) and a
    function turning its JSON into rows."""

    name: str
    args: dict[str, list[str]]
    rows: Callable[[object], list[Row]]
    cuda_args: dict[str, list[str]] = field(default_factory=dict)  # replaces args on a GPU

    def command(self, mode: str, cuda: bool, json_path: Path) -> list[str]:
        args = (self.cuda_args if cuda and mode in self.cuda_args else self.args)[mode]
        return [sys.executable, *(a.replace("{json}", str(json_path)) for a in args)]


# -- rows from each benchmark's JSON ------------------------------------------------------------------------
def conformer_rows(r: dict) -> list[Row]:
    base = dict(benchmark="conformers", unit="mol/s")
    rows = [
        Row(
            measurement=f"molbridge make_record, 1 process ({r['molecules']} real molecules)",
            value=r["molbridge_1proc_mol_per_s"],
            baseline="plain RDKit loop, same work, 1 process",
            baseline_value=r["plain_rdkit_mol_per_s"],
            peak_mb=r["peak_rss_mb"],
            note="peak: the process's absolute peak RSS",
            **base,
        ),
        Row(
            measurement=f"molbridge prepare, {r['workers']} processes",
            value=r["molbridge_pool_mol_per_s"],
            baseline=f"plain RDKit loop, same work, {r['workers']} processes",
            baseline_value=r.get("plain_rdkit_pool_mol_per_s", r["plain_rdkit_mol_per_s"]),
            peak_mb=r["pool_worker_peak_rss_mb"],
            note="peak: the largest worker's absolute peak RSS",
            **base,
        ),
    ]
    if "join_molbridge_s" in r:
        rows.append(
            Row(
                benchmark="conformers",
                measurement=f"3D-MoLM release join, {r['release_molecules']} molecules (synthetic)",
                value=r["join_molbridge_s"],
                unit="s",
                baseline="plain Python join (json + dict + LMDB reads)",
                baseline_value=r["join_plain_s"],
                higher_is_better=False,
                peak_mb=r["join_peak_rss_mb"],
                note="JSON, LMDB keys and every value read and unpickled; no conversion or writing",
            )
        )
    return rows


def encoder_rows(results: list[dict]) -> list[Row]:
    ref = next((r for r in results if r["model"] == "unimol-tools-base"), None)
    rows = []
    for r in results:
        if r is not ref:
            rows.append(
                Row(
                    "encoders",
                    f"{r['model']} forward ({r['params_m']} M, {r['precision']})",
                    r["mol_per_s"],
                    "mol/s",
                    "unimol-tools Uni-Mol base" if ref else None,
                    ref and ref["mol_per_s"],
                    peak_mb=r["peak_mb"],
                    note="; ".join(
                        ([] if ref else ["unimol-tools not installed: no baseline"])
                        + (
                            [f"max abs diff {r['max_abs_diff']:.1e} vs {r['diff_against']}"]
                            if "max_abs_diff" in r
                            else []
                        )
                    ),
                )
            )
    if ref:
        rows.append(
            Row("encoders", "unimol-tools Uni-Mol base (baseline)", ref["mol_per_s"], "mol/s", peak_mb=ref["peak_mb"])
        )
    return rows


def cache_rows(r: dict) -> list[Row]:
    """Caches against recomputing, bucketed against random batches (seconds: lower is better)."""
    encoder, text = r["encoder"], r["text_tower"]
    rows = [
        Row(
            "caches",
            f"stage-2 frozen encoder, an epoch of {encoder['batches']} batches from the cache",
            encoder["cached_s"],
            "s",
            "recomputed every epoch",
            encoder["recompute_s"],
            higher_is_better=False,
            note=f"filling the cache once: {encoder['fill_s']:.2f} s",
        ),
        Row(
            "caches",
            f"main job's text encoding ({text['texts']} texts), warm cache",
            text["warm_s"],
            "s",
            "cold cache (every text through the tower)",
            text["cold_s"],
            higher_is_better=False,
        ),
    ]
    for name, label in (("bucketing_mini", "molbridge-mini"), ("bucketing_long_tail", "long-tail sample")):
        b = r[name]
        note = (
            f"padded positions {b['random_padding_positions']:.0%} -> {b['bucketed_padding_positions']:.0%}, "
            f"padded pairs {b['random_padding_pairs']:.0%} -> {b['bucketed_padding_pairs']:.0%}"
        )
        rows += [
            Row(
                "caches",
                f"Uni-Mol {preset} forward, {b['molecules']} {label} molecules, size-bucketed batches",
                b[f"{preset}_bucketed_s"],
                "s",
                "random batches",
                b[f"{preset}_random_s"],
                higher_is_better=False,
                note=note,
            )
            for preset in ("small", "base")
        ]
    return rows


def _sweep_bound(r: dict, state: str) -> str:
    """The ratio the children's own run times allow (results from before sweep.py measured it have none)."""
    if f"{state}_bound" not in r:
        return ""
    return (
        f"ratio bound {r[f'{state}_bound']} (the children's own time {r[f'{state}_children_parallel_vs_sequential']}x "
        f"the sequential children's, shared by {r['jobs']} jobs); "
    )


def sweep_rows(r: dict) -> list[Row]:
    """A 2x2 sweep with ``--jobs`` against one child at a time (seconds: lower is better), cold and warm cache."""
    return [
        Row(
            "sweep",
            f"2x2 retrieval sweep, {r['steps']} steps, --jobs {r['jobs']}, {state} cache",
            r[f"{state}_parallel_s"],
            "s",
            "one child at a time (--jobs 1)",
            r[f"{state}_sequential_s"],
            higher_is_better=False,
            note=_sweep_bound(r, state)
            + f"largest test/full_acc difference between the two ways {r[f'{state}_max_metric_diff']:.3f} "
            "(threads per child change float sums)",
        )
        for state in ("cold", "warm")
    ]


def stage1_rows(results: list[dict]) -> list[Row]:
    rows = []
    for r in results:
        if "error" in r:
            rows.append(Row("stage1", f"{r['shape']}: training step", 0, "mol/s", error=r["error"]))
            continue
        shape = f"{r['shape']} (batch {r['batch']})"
        rows.append(
            Row(
                "stage1",
                f"{shape}: training step",
                r["mol_per_s"],
                "mol/s",
                peak_mb=r["peak_mb"],
                note="whole step; transformers has no counterpart",
            )
        )
        if "utilisation" in r:
            rows.append(utilisation_row("stage1", f"{shape}: training step", r["utilisation"], r["precision"]))
        for part, v in r["vs_transformers"].items():
            rows.append(
                Row(
                    "stage1",
                    f"{shape}: {part}" if "baseline" in v else f"{shape}: {part} fwd+bwd",
                    v["ours_s"],
                    "s",
                    v.get("baseline", f"transformers {part}"),
                    v["transformers_s"],
                    higher_is_better=False,
                    note=f"max abs diff {v['max_abs_diff']:.1e} vs {v['diff_against']}" if "max_abs_diff" in v else "",
                )
            )
    return rows


def utilisation_row(benchmark: str, what: str, u: dict, precision: str) -> Row:
    """Achieved TFLOP/s of a step against the matrix-product rate measured in the same process: the ratio is
    the MFU."""
    matmul = "bf16" if "bf16" in precision else "fp32"
    return Row(
        benchmark,
        f"{what}: achieved TFLOP/s ({u['step_tflop']} TFLOP/step, counted)",
        u["achieved_tflops"],
        "TFLOP/s",
        f"{matmul} matrix product, same device",
        u["matmul_tflops"],
        note="ratio = MFU",
    )


def generation_rows(r: dict) -> list[Row]:
    return [
        Row(
            "generation",
            f"one left-padded batch of {r['prompts']}, {r['params_m']} M LLM",
            r["batched"]["tokens_per_s"],
            "new tokens/s",
            "one prompt at a time",
            r["one_at_a_time"]["tokens_per_s"],
            peak_mb=r.get("peak_mb"),
            note="identical texts",
        )
    ]  # llm.py fails the run when they differ


def _step_note(r: dict, base: dict | None) -> str:
    notes = [f"step memory vs eager {r.get('step_memory_vs_eager')}"] if base else []
    if r["peak_mb"]:  # GPU: the absolute peak too (peak MB is the step's growth above the weights)
        notes.append(f"absolute peak {r['peak_mb']} MB")
    return "; ".join(notes)


def step_rows(results: list[dict]) -> list[Row]:
    base = next((r for r in results if r.get("variant") == "eager" and "error" not in r), None)
    rows = []
    for r in results:
        if "error" in r:
            rows.append(Row("stage3-step", r["variant"], 0, "tokens/s", error=r["error"]))
        elif r is not base:
            rows.append(
                Row(
                    "stage3-step",
                    f"{r['variant']} ({r['params_m']} M, batch {r['batch']}x{r['length']})",
                    r["tokens_per_s"],
                    "tokens/s",
                    "eager attention" if base else None,
                    base and base["tokens_per_s"],
                    peak_mb=r["step_mb"],
                    note=_step_note(r, base),
                )
            )
        if "utilisation" in r:
            rows.append(utilisation_row("stage3-step", r["variant"], r["utilisation"], r["precision"]))
    if base:
        rows.append(
            Row(
                "stage3-step",
                "eager attention (baseline)",
                base["tokens_per_s"],
                "tokens/s",
                peak_mb=base["step_mb"],
                note=_step_note(base, None),
            )
        )
    return rows


def retrieval_rows(r: dict) -> list[Row]:
    rows = []
    for c in r["comparisons"]:
        ours, naive = c["molbridge"], c["naive"]
        what = f"{'full set' if c['protocol'] == 'full' else 'in batch of ' + str(r['batch'])}, N={c['n']}"
        if "error" in ours:
            rows.append(Row("retrieval", what, 0, "queries/s", error=ours["error"]))
            continue
        if "skipped" in naive or "error" in naive:
            rows.append(
                Row(
                    "retrieval",
                    what,
                    ours["queries_per_s"],
                    "queries/s",
                    peak_mb=ours["peak_mb"],
                    note=f"naive way skipped: {naive['skipped']}" if "skipped" in naive else "",
                    error=naive.get("error") and f"naive way: {naive['error']}",
                )
            )
            continue
        rows.append(
            Row(
                "retrieval",
                what,
                ours["queries_per_s"],
                "queries/s",
                "naive: whole similarity + argsort",
                naive["queries_per_s"],
                peak_mb=ours["peak_mb"],
                note=f"identical ranks; naive peak {naive['peak_mb']} MB",
                error=f"{c['differing_ranks']} ranks differ from naive" if c["differing_ranks"] else None,
            )
        )
    return rows


def _mode_args(script: str, tiny: list[str], quick: list[str], default: list[str], common=()) -> dict:
    path = str(HERE / script)
    return {
        mode: [path, *common, *extra, "--json", "{json}"]
        for mode, extra in zip(MODES, (tiny, quick, default), strict=True)
    }


def benchmarks() -> list[Benchmark]:
    """The suite, in running order, with each benchmark's sizes per mode (tiny, quick, default)."""
    stage1 = ["--steps", "1", "--compare-steps", "1"], ["--steps", "1", "--compare-steps", "3"], ["--steps", "3"]
    return [
        Benchmark(
            "conformers",
            _mode_args(
                "conformers.py",
                ["--molecules", "10", "--release-molecules", "1000"],
                ["--molecules", "200", "--release-molecules", "30000"],
                ["--molecules", "1000", "--release-molecules", "300000"],
                ["--workers", "0"],  # all cores
            ),
            conformer_rows,
        ),
        Benchmark(
            "encoders",
            _mode_args(
                "encoders.py",
                ["--molecules", "8", "--batch", "4"],
                ["--molecules", "32"],
                ["--molecules", "256"],
                ["--batch", "32"],
            ),
            encoder_rows,
        ),
        Benchmark(
            "caches",
            _mode_args(
                "caches.py",
                ["--molecules", "32", "--texts", "64", "--long-tail", "64", "--repeats", "1"],
                ["--molecules", "256", "--texts", "1024", "--long-tail", "256"],
                ["--molecules", "1024", "--texts", "4096", "--long-tail", "1000"],
            ),
            cache_rows,
        ),
        Benchmark("stage1-default", _mode_args("stage1.py", *stage1, ["--shape", "default"]), stage1_rows),
        Benchmark(
            "stage1-all-losses", _mode_args("stage1.py", *stage1, ["--shape", "default-all-losses"]), stage1_rows
        ),
        # The paper's batch of 64 does not fit a 24 GiB CPU machine: batch 8 there, 64 on a GPU.
        Benchmark(
            "stage1-paper",
            _mode_args(
                "stage1.py",
                ["--steps", "1", "--batch", "2", "--compare-steps", "1"],
                ["--steps", "1", "--batch", "4", "--compare-steps", "3"],
                ["--steps", "2", "--batch", "8", "--compare-steps", "5"],
                ["--shape", "paper"],
            ),
            stage1_rows,
            cuda_args=_mode_args(
                "stage1.py", ["--steps", "1", "--batch", "2"], ["--steps", "1"], ["--steps", "3"], ["--shape", "paper"]
            ),
        ),
        Benchmark(
            "generation",
            _mode_args(
                "llm.py",
                ["--prompts", "4", "--max-new-tokens", "4"],
                ["--prompts", "16", "--max-new-tokens", "16"],
                ["--prompts", "64", "--max-new-tokens", "32"],
                ["generation"],
            ),
            generation_rows,
        ),
        Benchmark(
            "stage3-step",
            _mode_args(
                "llm.py",
                ["--batch", "1", "--length", "32", "--steps", "1"],
                ["--batch", "4", "--steps", "1"],
                ["--steps", "3"],
                ["step", "--shape", "small"],
            ),
            step_rows,
            cuda_args=_mode_args(
                "llm.py",
                ["--batch", "1", "--length", "32", "--steps", "1"],
                ["--steps", "1"],
                ["--steps", "3"],
                ["step", "--shape", "7b"],
            ),
        ),
        Benchmark(
            "sweep",
            _mode_args("sweep.py", ["--steps", "2"], ["--steps", "50"], ["--steps", "150"]),
            sweep_rows,
        ),
        # Last, the 100k ranking apart: it is most of the suite's time, and the rest is saved if it is cut short.
        Benchmark(
            "retrieval",
            _mode_args("retrieval.py", ["--sizes", "300", "--chunk", "128"], ["--sizes", "2000"], ["--sizes", "10000"]),
            retrieval_rows,
        ),
        Benchmark(
            "retrieval-large",
            _mode_args(
                "retrieval.py", ["--sizes", "600", "--chunk", "128"], ["--sizes", "5000"], ["--sizes", "100000"]
            ),
            retrieval_rows,
        ),
    ]


# -- the machine ----------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        return None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def _os_name() -> str:
    release = Path("/etc/os-release")
    if release.exists():
        for line in release.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return f"{line.split('=', 1)[1].strip(chr(34))} ({platform.platform()})"
    return platform.platform()


def machine(cuda: bool, command: list[str]) -> dict:
    """What the figures were measured on; the caller adds the load average at the end."""
    import torch

    gpu = None
    if cuda:
        props = torch.cuda.get_device_properties(0)
        gpu = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
        }
    status = _git("status", "--porcelain")
    return {
        "host": socket.gethostname(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gib": _ram_gib(),
        "os": _os_name(),
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in ("torch", "transformers", "rdkit", "numpy", "molbridge")},
        "torch_threads": torch.get_num_threads(),
        "device": gpu["name"] if gpu else "cpu",
        "gpu": gpu,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "command": shlex.join(command),
    }


# -- running ----------------------------------------------------------------------------------------------------
def _env(cuda: bool) -> dict:
    env = dict(os.environ)
    if not cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""  # --device cpu on a GPU machine: the benchmarks pick CUDA when they see it
    parity = REPO / ".venv" / "unimol-tools-parity"  # where .ci/run installs the encoder baseline
    if "MOLBRIDGE_UNIMOL_TOOLS" not in env and parity.is_dir():
        env["MOLBRIDGE_UNIMOL_TOOLS"] = str(parity)
    return env


def run_one(bench: Benchmark, mode: str, cuda: bool, folder: Path) -> dict:
    """Run one benchmark; its record (written to ``folder/<name>.json``) whether it worked or not."""
    json_path = folder / f"{bench.name}.raw.json"
    command = bench.command(mode, cuda, json_path)
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, env=_env(cuda), cwd=REPO)
    record = {
        "benchmark": bench.name,
        "command": shlex.join(command),
        "returncode": out.returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "ok": out.returncode == 0,
    }
    result = json.loads(json_path.read_text()) if json_path.exists() else None
    json_path.unlink(missing_ok=True)
    try:
        rows = [vars(r) for r in bench.rows(result)] if result is not None else []
    except (KeyError, TypeError, ValueError) as exc:  # the benchmark's JSON is not what its reader expects
        record["ok"], rows = False, []
        record["error"] = f"cannot read its JSON: {type(exc).__name__}: {exc}"
    broken = [f"{r['measurement']}: {r['error']}" for r in rows if r["error"]]
    if broken:
        record["ok"], record["error"] = False, "; ".join(broken)
    if out.returncode != 0:
        why = "killed (out of memory?)" if out.returncode == -9 else f"exit status {out.returncode}"
        record["error"] = why
        record["stderr_tail"] = out.stderr[-3000:]
    elif result is None:
        record["ok"], record["error"] = False, "wrote no JSON"
        record["stderr_tail"] = out.stderr[-3000:]
    record["stdout"], record["result"], record["rows"] = out.stdout[-6000:], result, rows
    (folder / f"{bench.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _fmt(x) -> str:
    return "-" if x is None else f"{x:g}" if isinstance(x, float) else str(x)


def summary_markdown(info: dict, records: list[dict]) -> str:
    """One table over every benchmark's rows; failed benchmarks listed under it."""
    gpu = info["gpu"]
    lines = [
        f"# Performance suite, {info['started_utc']} ({info['mode']} sizes)",
        "",
        f"{info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM"
        + (f"; GPU {gpu['name']} (compute capability {gpu['capability']})" if gpu else "; no GPU")
        + f"; torch {info['versions']['torch']}; commit {(info['git_commit'] or '?')[:10]}"
        + (" (dirty)" if info["git_dirty"] else "")
        + f"; load average {info['load_average_start']} at start, {info['load_average_end']} at end.",
        "",
        "Ratio: speed against the baseline measured in the same run (>1: faster than it). Peak memory: growth "
        "of peak RSS on CPU, max allocated on GPU, as each benchmark measures it.",
        "",
        "| benchmark | measurement | value | baseline | baseline value | ratio | peak MB | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rec in records:
        for r in rec["rows"]:
            lines.append(
                f"| {r['benchmark']} | {r['measurement']} | {_fmt(r['value'])} {r['unit']} | "
                f"{_fmt(r['baseline'])} | {_fmt(r['baseline_value'])} | {_fmt(r['ratio'])} | "
                f"{_fmt(r['peak_mb'])} | {'FAILED: ' + r['error'] if r['error'] else r['note']} |"
            )
    failed = [rec for rec in records if not rec["ok"]]
    if failed:
        lines += ["", "## Failed", ""]
        lines += [f"- {rec['benchmark']}: {rec['error']} (`{rec['command']}`)" for rec in failed]
    lines += ["", "| benchmark | seconds | status |", "|---|---|---|"]
    lines += [f"| {rec['benchmark']} | {rec['seconds']} | {'ok' if rec['ok'] else 'FAILED'} |" for rec in records]
    return "\n".join(lines) + "\n"


def _folder(out: Path, host: str) -> Path:
    """``out/<UTC date>-<host>``; a second run the same day gets ``-2``, ``-3``... instead of overwriting."""
    base = out / f"{datetime.now(UTC):%Y-%m-%d}-{host}"
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    folder.mkdir(parents=True)
    return folder


def run_suite(selected: list[Benchmark], mode: str, cuda: bool, out: Path, command: list[str]) -> tuple[Path, bool]:
    """Run ``selected`` in order, write every file; (the results folder, whether all succeeded)."""
    info = machine(cuda, command) | {"mode": mode}
    folder = _folder(out, info["host"])
    (folder / "machine.json").write_text(json.dumps(info, indent=2) + "\n")
    print(
        f"results: {folder}\nmachine: {info['cpu']}, {info['cores']} cores, device {info['device']}, "
        f"load average {info['load_average_start']}",
        flush=True,
    )
    records = []
    for i, bench in enumerate(selected, 1):
        print(f"[{i}/{len(selected)}] {bench.name} ...", end=" ", flush=True)
        rec = run_one(bench, mode, cuda, folder)
        records.append(rec)
        print(f"{'ok' if rec['ok'] else 'FAILED: ' + rec['error']} in {rec['seconds']} s", flush=True)
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    info["finished_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
    (folder / "machine.json").write_text(json.dumps(info, indent=2) + "\n")
    ok = all(rec["ok"] for rec in records)
    summary = {
        "machine": info,
        "ok": ok,
        "benchmarks": [{k: rec.get(k) for k in ("benchmark", "ok", "seconds", "error", "rows")} for rec in records],
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (folder / "summary.md").write_text(summary_markdown(info, records))
    return folder, ok


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the suite; 0 if every benchmark worked, 1 if one failed, 2 on bad usage."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="mode", const="quick", help="small sizes, minutes")
    size.add_argument("--tiny", action="store_const", dest="mode", const="tiny", help="smoke-test sizes, seconds")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    import torch

    available = torch.cuda.is_available()
    if args.device == "cuda" and not available:
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    selected = benchmarks()
    names = [b.name for b in selected]
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        print(f"error: unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(names)}", file=sys.stderr)
        return 2
    selected = [b for b in selected if not args.only or b.name in args.only]
    command = [sys.executable, *sys.argv] if argv is None else [sys.executable, __file__, *argv]
    folder, ok = run_suite(selected, args.mode or "default", args.device != "cpu" and available, args.out, command)
    print(f"\n{(folder / 'summary.md').read_text()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
