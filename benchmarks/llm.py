"""LLM-stage speed and memory: batched generation and the stage-3 training step, against baselines in the same run.

    .venv/bin/python benchmarks/llm.py generation [--prompts 64] [--max-new-tokens 32] [--llm-path DIR] [--json F]
    .venv/bin/python benchmarks/llm.py step [--shape small|7b] [--batch 8] [--length 256] [--steps 3] [--json F]

**generation**: greedy answers to N prompts (molbridge-mini test molecules' instruction records in the
plugin's prompt, ``<mol>`` soft tokens from a random 768-wide input) by the demo LLM or a local checkpoint,
generated (a) as one left-padded batch with the KV cache, as ``SoftPromptLM.generate`` runs, and (b) one
prompt at a time (the baseline), with the same settings. Reported: answers/s and new tokens/s of both and
the speed-up. Both must give identical texts: any difference fails the run (exit 2), since it would mean
that padding or batching changes the answers.

**step**: one stage-3 optimizer step (forward, backward, AdamW) of a randomly initialised Llama of the given
shape (``7b``: Llama-2-7B's; ``small``: 512 wide, 4 layers, Llama-2's vocabulary) built in memory (no
weights read or written) and wrapped by ``SoftPromptLM`` with LoRA r 8 on the 7 projections; batch of B
sequences of L tokens with 8 soft tokens each, the loss on the second half. bf16 weights and autocast on
CUDA, float32 on CPU. Variants, each in its own subprocess so peak memory is its own: SDPA attention
(molbridge's default), SDPA with gradient checkpointing, and eager attention (the baseline). Memory: on GPU
``torch.cuda.max_memory_allocated`` (absolute, and above what the model held before the first step); on
CPU the growth of peak RSS from before the first step (the absolute peak is not measured). MFU: the
fewest FLOPs any variant counted for one step (``flops.py``; a checkpointed step counts its recompute too)
over each variant's step time, against the matrix-product rate measured in that variant's process. ``7b``
needs a CUDA GPU and refuses to run without one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from flops import matmul_rate, step_flops, utilisation

from molbridge.core.errors import MolbridgeError
from molbridge.plugins.llms.base import IGNORE_INDEX, SoftPromptLM
from molbridge.plugins.llms.llama import LlamaLMConfig
from molbridge.plugins.llms.sizing import LLAMA2_7B

MOL_DIM = 768  # the projector width that feeds llm_proj (3D-MoLM's Q-Former)
SHAPES = {
    "7b": LLAMA2_7B,
    "small": {
        "hidden_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "intermediate_size": 1376,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
    },
}
#: Step variants: attention implementation and gradient checkpointing; the last is the baseline.
VARIANTS = {"sdpa": ("sdpa", False), "sdpa+checkpointing": ("sdpa", True), "eager": ("eager", False)}
BASELINE = "eager"


# -- shared ---------------------------------------------------------------------------------------------
def device_name(cuda: bool) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo with the core count."""
    if cuda:
        return torch.cuda.get_device_name()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "cpu"
    return f"{model} ({os.cpu_count()} cores)"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


@contextmanager
def _default_dtype(dtype: torch.dtype):
    """Create parameters in ``dtype`` directly (what ``from_pretrained(dtype=...)`` does), no float32 copy first."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _mol_tokens(rows: int, lm: SoftPromptLM, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, lm.num_mol_tokens, MOL_DIM, generator=generator)


# -- generation -----------------------------------------------------------------------------------------
def benchmark_prompts(lm: SoftPromptLM, count: int) -> list[str]:
    """``count`` prompts: molbridge-mini test molecules (scaffold split), one instruction record each in turn."""
    from molbridge.core.data import open_dataset

    store = open_dataset("molbridge-mini")
    prompts = []
    for n, row in enumerate(store.split("test", "scaffold")):
        mol = store[int(row)]
        if mol.instructions:
            prompts.append(lm.format_prompt(mol.instructions[n % len(mol.instructions)]["instruction"], mol.smiles))
        if len(prompts) == count:
            return prompts
    raise MolbridgeError(
        f"molbridge-mini's test split has only {len(prompts)} molecules with instructions; asked for {count} prompts"
    )


def build_generation_lm(llm_path: str | None, dtype: str) -> SoftPromptLM:
    """The ``llama`` plugin on ``llm_path`` (the demo model when None), without LoRA, in eval mode."""
    from molbridge.plugins.llms.llama import build

    torch.manual_seed(0)  # llm_proj
    return build(LlamaLMConfig(path=llm_path, lora=False, dtype=dtype), input_dim=MOL_DIM).eval()


def answer_lengths(ids: torch.Tensor, eos: int) -> list[int]:
    """New tokens per row, up to and including the first EOS (what follows it is padding)."""
    lengths = []
    for row in ids.tolist():
        lengths.append(row.index(eos) + 1 if eos in row else len(row))
    return lengths


def _generate(lm: SoftPromptLM, prompts: list[str], mol: torch.Tensor, max_new_tokens: int):
    """(texts, new-token counts) of one left-padded batch, decoded as ``SoftPromptLM.generate`` does."""
    device = lm.llm_proj.weight.device
    batch = {k: v.to(device) for k, v in lm.tokenize_prompts(prompts).items()}
    ids = lm.generate_ids(
        batch["input_ids"],
        batch["attention_mask"],
        mol.to(device),
        max_new_tokens=max_new_tokens,
        num_beams=1,
        do_sample=False,
        repetition_penalty=1.0,
    )
    texts = [t.strip() for t in lm.tokenizer.batch_decode(ids, skip_special_tokens=True)]
    return texts, answer_lengths(ids, lm.tokenizer.eos_token_id)


def _timed(cuda: bool, run):
    _sync(cuda)
    start = time.perf_counter()
    result = run()
    _sync(cuda)
    return result, time.perf_counter() - start


def measure_generation(lm: SoftPromptLM, prompts: list[str], max_new_tokens: int) -> dict:
    """Batched vs one-at-a-time greedy generation; raises MolbridgeError if their texts differ."""
    cuda = lm.llm_proj.weight.is_cuda
    mol = _mol_tokens(len(prompts), lm)
    _generate(lm, prompts[:2], mol[:2], 2)  # warm-up (kernels, allocator) for both paths
    _generate(lm, prompts[:1], mol[:1], 2)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    held_mb = torch.cuda.memory_allocated() / 2**20 if cuda else _peak_rss_mb()
    (batched, batched_tokens), batched_s = _timed(cuda, lambda: _generate(lm, prompts, mol, max_new_tokens))
    peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mb()) - held_mb

    def one_at_a_time():
        answers = [_generate(lm, [p], mol[i : i + 1], max_new_tokens) for i, p in enumerate(prompts)]
        return [a[0][0] for a in answers], [a[1][0] for a in answers]

    (single, single_tokens), single_s = _timed(cuda, one_at_a_time)
    differ = [i for i in range(len(prompts)) if (batched[i], batched_tokens[i]) != (single[i], single_tokens[i])]
    if differ:
        i = differ[0]
        raise MolbridgeError(
            f"batched and one-at-a-time generation differ for {len(differ)} of {len(prompts)} "
            f"prompts {differ[:10]}; prompt {i}: batched {batched[i]!r} vs alone {single[i]!r}"
            + (" (bf16 rounds padded and unpadded batches differently)" if lm.model.dtype == torch.bfloat16 else "")
        )
    tokens = sum(batched_tokens)
    return {
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "new_tokens": tokens,
        "identical_texts": True,
        "batched": {
            "seconds": round(batched_s, 3),
            "answers_per_s": round(len(prompts) / batched_s, 2),
            "tokens_per_s": round(tokens / batched_s, 1),
        },
        "one_at_a_time": {
            "seconds": round(single_s, 3),
            "answers_per_s": round(len(prompts) / single_s, 2),
            "tokens_per_s": round(sum(single_tokens) / single_s, 1),
        },
        "speedup": round(single_s / batched_s, 2),
        "peak_mb": round(peak_mb, 1),  # growth during the batched run (GPU: allocated; CPU: peak RSS)
        "params_m": round(sum(p.numel() for p in lm.parameters()) / 1e6, 2),
        "dtype": str(lm.model.dtype).removeprefix("torch."),
        "device": device_name(cuda),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


# -- stage-3 training step ------------------------------------------------------------------------------
def _tokenizer():
    """A small BPE tokenizer with BOS, EOS, pad and ``<mol>``: SoftPromptLM needs one; the ids are synthetic."""
    from molbridge.plugins.llms.demo import train_tokenizer

    return train_tokenizer(["a molecule with a benzene ring and two hydroxyl groups"] * 4, vocab_size=300)


def build_step_lm(
    shape: dict, attention: str, checkpointing: bool, device: torch.device, dtype: torch.dtype
) -> SoftPromptLM:
    """A random Llama of ``shape`` made on ``device`` in ``dtype``, wrapped with LoRA r 8 (7 modules), training."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = _tokenizer()
    config = LlamaConfig(
        **shape,
        attn_implementation=attention,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with device, _default_dtype(dtype):
        model = LlamaForCausalLM(config)
    options = LlamaLMConfig(
        lora=True,
        lora_r=8,
        gradient_checkpointing=checkpointing,
        dtype=str(dtype).removeprefix("torch."),
        max_length=shape["max_position_embeddings"],
    )
    return SoftPromptLM(options, model, tokenizer, MOL_DIM).to(device).train()


def check_length(positions: int, length: int, mol_tokens: int = LlamaLMConfig.num_mol_tokens) -> None:
    """BOS and the ``<mol>`` placeholders must fit the unlabelled first half, the whole row the model's positions."""
    shortest = 2 * (mol_tokens + 1)
    if not shortest <= length <= positions:
        raise MolbridgeError(
            f"--length {length}: needs {shortest} to {positions} tokens (BOS and {mol_tokens} "
            "<mol> in the unlabelled first half; the model's positions)"
        )


def step_batch(lm: SoftPromptLM, batch: int, length: int, device: torch.device) -> dict:
    """B full-length rows: BOS, the ``<mol>`` placeholders, random ordinary tokens; loss on the second half."""
    check_length(lm.model.config.max_position_embeddings, length, lm.num_mol_tokens)
    generator = torch.Generator().manual_seed(0)
    first_ordinary = len(lm.tokenizer)  # above every special and BPE id, so no stray <mol>
    ids = torch.randint(first_ordinary, lm.model.config.vocab_size, (batch, length), generator=generator)
    ids[:, 0] = lm.tokenizer.bos_token_id
    ids[:, 1 : 1 + lm.num_mol_tokens] = lm.mol_token_id
    labels = ids.clone()
    labels[:, : length // 2] = IGNORE_INDEX
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "mol_tokens": _mol_tokens(batch, lm).to(device),
        "labels": labels.to(device),
    }


def _train_step(lm: SoftPromptLM, batch: dict, optimizer: torch.optim.Optimizer, cuda: bool) -> float:
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    with autocast:
        loss = lm(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def measure_step(shape: dict, variant: str, batch: int, length: int, steps: int) -> dict:
    """Tokens/s and memory of ``steps`` stage-3 steps (after one warm-up step) for one variant, in this process."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    attention, checkpointing = VARIANTS[variant]
    lm = build_step_lm(shape, attention, checkpointing, device, torch.bfloat16 if cuda else torch.float32)
    data = step_batch(lm, batch, length, device)
    optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-4)
    _sync(cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    held_mb = torch.cuda.memory_allocated() / 2**20 if cuda else None
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loss = _train_step(lm, data, optimizer, cuda)  # warm-up: kernels, optimizer state
    flops = step_flops(lambda: _train_step(lm, data, optimizer, cuda))  # checkpointing: its recompute counts too
    _sync(cuda)
    start = time.perf_counter()
    for _ in range(steps):
        loss = _train_step(lm, data, optimizer, cuda)
    _sync(cuda)
    step_s = (time.perf_counter() - start) / steps
    if cuda:
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
        step_mb = peak_mb - held_mb
    else:  # ru_maxrss is in KiB on Linux
        peak_mb, step_mb = None, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    trainable = sum(p.numel() for p in lm.parameters() if p.requires_grad)
    return {
        "step_flops": flops,
        "matmul_flops_per_s": matmul_rate(device, torch.bfloat16 if cuda else torch.float32),
        "variant": variant,
        "attention": attention,
        "gradient_checkpointing": checkpointing,
        "batch": batch,
        "length": length,
        "steps": steps,
        "loss": round(loss, 4),
        "step_s": round(step_s, 4),
        "tokens_per_s": round(batch * length / step_s, 1),
        "peak_mb": None if peak_mb is None else round(peak_mb, 1),
        "step_mb": round(step_mb, 1),
        "params_m": round(sum(p.numel() for p in lm.parameters()) / 1e6, 2),
        "trainable_m": round(trainable / 1e6, 3),
        "precision": "bf16 weights + bf16 autocast" if cuda else "fp32",
        "device": device_name(cuda),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def with_ratios(results: list[dict]) -> list[dict]:
    """Add speed and memory ratios against the baseline variant (when it ran), and each variant's MFU: the
    model's FLOPs are the fewest any variant counted (a checkpointed step also counts its recompute)."""
    base = next((r for r in results if r.get("variant") == BASELINE and "error" not in r), None)
    ran = [r for r in results if "error" not in r]
    for r in ran:
        r["model_flops"] = min(v["step_flops"] for v in ran)
        r["utilisation"] = utilisation(r["model_flops"], r["step_s"], r["matmul_flops_per_s"])

    def ratio(r: dict, key: str) -> float | None:
        return round(r[key] / base[key], 2) if r[key] is not None and base[key] else None

    for r in results:
        if base and "error" not in r:
            r["speed_vs_eager"] = ratio(r, "tokens_per_s")
            r["peak_memory_vs_eager"], r["step_memory_vs_eager"] = ratio(r, "peak_mb"), ratio(r, "step_mb")
    return results


def run_step_variants(shape: str, batch: int, length: int, steps: int, threads: int | None = None) -> list[dict]:
    """Each variant in a subprocess of its own (its own peak memory); a failure is reported, not fatal."""
    results = []
    for variant in VARIANTS:
        command = [
            sys.executable,
            __file__,
            "step",
            "--one",
            variant,
            "--shape",
            shape,
            "--batch",
            str(batch),
            "--length",
            str(length),
            "--steps",
            str(steps),
        ] + (["--threads", str(threads)] if threads else [])
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode == 0:
            results.append({"shape": shape} | json.loads(out.stdout.strip().splitlines()[-1]))
        else:  # e.g. out of memory: say so and go on with the other variants
            why = "killed (out of memory?)" if out.returncode == -9 else (out.stderr.strip().splitlines() or ["?"])[-1]
            results.append({"shape": shape, "variant": variant, "error": why})
    return with_ratios(results)


# -- output ---------------------------------------------------------------------------------------------
def _print_generation(r: dict) -> None:
    print(
        f"## generation: {r['prompts']} prompts, greedy, max {r['max_new_tokens']} new tokens, "
        f"{r['params_m']} M parameters, {r['dtype']}, {r['device']}, {r['threads']} threads"
    )
    print("| path | s | answers/s | tokens/s |\n|---|---|---|---|")
    for key, label in (("one_at_a_time", "one prompt at a time (baseline)"), ("batched", "one left-padded batch")):
        v = r[key]
        print(f"| {label} | {v['seconds']} | {v['answers_per_s']} | {v['tokens_per_s']} |")
    print(f"speed-up {r['speedup']}x; identical texts: {r['identical_texts']}; {r['new_tokens']} new tokens")


def _print_step(shape: str, results: list[dict]) -> None:
    ok = [r for r in results if "error" not in r]
    if ok:
        h = ok[0]
        print(
            f"## stage-3 step: shape {shape}, {h['params_m']} M parameters ({h['trainable_m']} M trained), "
            f"batch {h['batch']} x {h['length']} tokens, {h['precision']}, {h['device']}, {h['threads']} threads"
        )
    else:
        print(f"## stage-3 step: shape {shape}: no variant ran")
    print(
        "| variant | s/step | tokens/s | MFU | peak MB | step MB | speed vs eager | peak vs eager | step MB vs eager |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['variant']} | not measured: {r['error']} |||||||")
            continue
        na = "n/a"
        print(
            f"| {r['variant']} | {r['step_s']} | {r['tokens_per_s']} | {r['utilisation']['mfu']:.1%} | "
            f"{r['peak_mb'] or 'n/a (CPU)'} | "
            f"{r['step_mb']} | {r.get('speed_vs_eager') or na} | {r.get('peak_memory_vs_eager') or na} | "
            f"{r.get('step_memory_vs_eager') or na} |"
        )
    print("step MB: growth of peak memory from before the first step (GPU: allocated; CPU: RSS)")
    if ok:
        u = ok[0]["utilisation"]
        print(f"MFU: {u['step_tflop']} TFLOP/step (counted) against {u['matmul_tflops']} TFLOP/s (measured matmul)")


def _refuse_7b_without_gpu(shape: str) -> None:
    if shape == "7b" and not torch.cuda.is_available():
        raise MolbridgeError(
            "--shape 7b needs a CUDA GPU (13 GB of bf16 weights, built on the device); "
            "this machine has none. Use --shape small on CPU."
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    gen = sub.add_parser("generation", help="batched vs one-at-a-time generation")
    gen.add_argument("--prompts", type=int, default=64)
    gen.add_argument("--max-new-tokens", type=int, default=32)
    gen.add_argument("--llm-path", help="local HuggingFace folder (default: the demo LLM)")
    gen.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="weights; float32 keeps the identity check exact",
    )
    step = sub.add_parser("step", help="stage-3 training step: SDPA vs eager, gradient checkpointing")
    step.add_argument("--shape", choices=tuple(SHAPES), default="small")
    step.add_argument("--batch", type=int, default=8, help="3D-MoLM stage 3: 8")
    step.add_argument("--length", type=int, default=256, help="tokens per sequence")
    step.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up)")
    step.add_argument("--one", choices=tuple(VARIANTS), help=argparse.SUPPRESS)  # internal: one variant in-process
    for p in (gen, step):
        p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
        p.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.bench == "generation":
            lm = build_generation_lm(args.llm_path, args.dtype)
            if torch.cuda.is_available():
                lm = lm.cuda()
            result = measure_generation(lm, benchmark_prompts(lm, args.prompts), args.max_new_tokens)
            _print_generation(result)
        else:
            _refuse_7b_without_gpu(args.shape)
            check_length(SHAPES[args.shape]["max_position_embeddings"], args.length)
            if args.one:
                print(json.dumps(measure_step(SHAPES[args.shape], args.one, args.batch, args.length, args.steps)))
                return
            result = run_step_variants(args.shape, args.batch, args.length, args.steps, args.threads)
            _print_step(args.shape, result)
    except MolbridgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
