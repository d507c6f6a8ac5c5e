"""Stage-1 training throughput, time per part and peak memory, at the default and the paper's shapes.

    .venv/bin/python benchmarks/stage1.py [--shape default|default-all-losses|paper|all] [--steps 3]
        [--compare-steps 10] [--bf16 auto|on|off] [--compile] [--json F]

Shapes, as overrides of the packaged ``retrieval`` recipe:
- ``default``: the recipe as shipped (Uni-Mol small, Q-Former on 2 MiniLM layers, locked text tower with
  the texts' states cached, contrastive loss, batch 32).
- ``default-all-losses``: the same sizes with the text tower trained and all three losses on.
- ``paper``: 3D-MoLM stage 1 (Uni-Mol base, frozen; BERT-base-shaped Q-Former: 12 layers, 768 wide,
  8 queries, cross-attention every 2nd layer, [CLS] text features; batch 64; all three losses). Random
  weights. Batch 64 does not fit a 24 GiB CPU machine (the run reports it and goes on); ``--batch``
  sets a smaller one.

One optimizer step is timed part by part (forward parts in order, then backward and the optimizer step;
CUDA is synchronised at each boundary). The baseline, measured in the same process on the same inputs,
is transformers' own code for the parts it has, holding our weights: ``Blip2QFormerModel`` for the query
pass (after a copy of our ``ln_graph`` LayerNorm, which our query pass applies to the encoder output too)
and ``BertModel`` for the text pass, forward + backward each, one step of ours and one of theirs in turn
(``--compare-steps`` of each; the speed-up is the median of the per-step ratios). Beside each speed-up, the
largest absolute difference between our outputs and transformers' (eval mode, fp32) shows that both compute
the same thing. On a GPU everything runs in bf16 autocast. On a CPU with native bf16 (avx512_bf16 or AMX;
``--bf16``), both query passes run once more under CPU bf16 autocast, reported with the largest absolute
difference of our bf16 output from our fp32 output.
Each shape runs in its own subprocess so peak memory is its own (CPU: growth of peak RSS; GPU:
``torch.cuda.max_memory_allocated``). MFU: one more step's FLOPs as ``flops.py`` counts them, over the timed
step (whose parts are synchronised, so on a GPU it is a slight underestimate), against the matrix-product
rate measured in the same process.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from flops import matmul_rate, step_flops, utilisation

from molbridge.core.loop import build_optimizer

PASSES = ("query pass", "text pass")
ALL_LOSSES = ["task.lock_text_tower=false", "task.matching_weight=1", "task.captioning_weight=1"]
PAPER_BERT = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
SHAPES = {
    "default": [],
    "default-all-losses": ALL_LOSSES,
    "paper": ALL_LOSSES
    + [
        "encoder.preset=base",
        "projector.pretrained=false",
        "~projector.num_layers",
        "projector.text_pooling=cls",
        "~projector.dropout",
        "data.batch_size=64",
    ],
}


def _bert_folder(shape: dict) -> Path:
    """A BERT folder of the given shape (config + MiniLM's tokenizer), for shape-only models."""
    from molbridge.plugins.projectors.stage1 import default_bert

    folder = Path(tempfile.mkdtemp())
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(default_bert() / name, folder / name)
    config = json.loads((default_bert() / "config.json").read_text()) | shape
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _build(shape: str, batch_size: int | None):
    from molbridge.core.plugins import get_registry
    from molbridge.core.recipe import load_recipe
    from molbridge.plugins.tasks.stage1 import Stage1Model, text_side_for

    overrides = SHAPES[shape] + ([f"data.batch_size={batch_size}"] if batch_size else [])
    if shape == "paper":
        overrides.append(f"projector.bert={_bert_folder(PAPER_BERT)}")
    registry = get_registry()
    recipe = load_recipe("retrieval", overrides, registry)
    encoder = registry.build("encoder", recipe.encoder)
    projector = registry.build("projector", recipe.projector, input_dim=encoder.output_dim)
    if shape == "paper":
        encoder.requires_grad_(False)  # 3D-MoLM's stage 1 keeps Uni-Mol frozen
    return Stage1Model(encoder, projector, text_side_for(projector, recipe.task), recipe.task), recipe.data.batch_size


def _batch(model, size: int) -> dict:
    from molbridge.core import batch as keys
    from molbridge.core.data import MoleculeDataset
    from molbridge.plugins.tasks.stage1 import CACHED_TEXT

    data = MoleculeDataset.from_split("molbridge-mini", "train", augment=False)
    items = [data[i] for i in range(size)]
    encoder, projector = model.encoder, model.projector
    ids, mask = projector.tokenize([item[keys.TEXT] for item in items])
    features = [encoder.featurize_item(item) for item in items]
    batch = {keys.ENCODER_INPUT: encoder.collate(features), keys.TEXT_INPUT_IDS: ids, keys.TEXT_ATTENTION_MASK: mask}
    if model.options.lock_text_tower:  # what the task's text cache holds, computed once before training
        with torch.no_grad():
            batch[CACHED_TEXT] = projector.pooled_text(ids, mask)
    return batch


class Timer:
    def __init__(self, cuda: bool):
        self.cuda, self.parts = cuda, {}

    @contextmanager
    def part(self, name: str):
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - start


def _step(model, batch, optimizer, timer: Timer) -> None:
    """One stage-1 step, timed per part (the computation of ``Stage1Model.forward``, unrolled)."""
    from molbridge.core import batch as keys
    from molbridge.plugins.tasks.stage1 import CACHED_TEXT, contrastive_loss, matching_loss

    projector, options = model.projector, model.options
    ids, mask = batch[keys.TEXT_INPUT_IDS], batch[keys.TEXT_ATTENTION_MASK]
    with timer.part("encoder"):
        encoded = model.encoder(batch[keys.ENCODER_INPUT])
    with timer.part("query pass"):
        mol = projector.molecule_features(encoded)
    if CACHED_TEXT in batch:
        with timer.part("text projection (cached states)"):
            text = projector.project_text(batch[CACHED_TEXT])
    else:
        with timer.part("text pass"):
            text = projector.text_features(ids, mask)
    with timer.part("contrastive"):
        loss, sim, _ = contrastive_loss(mol, text, mol, text, 0, model.temperature)
    if options.matching_weight:
        with timer.part("matching"):
            loss = loss + matching_loss(projector, encoded, ids, mask, sim.detach() / model.temperature)
    if options.captioning_weight:
        with timer.part("captioning"):
            loss = loss + projector.caption_loss(encoded, ids, mask)
    with timer.part("backward"):
        loss.backward()
    with timer.part("optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _baseline_models(model):
    """transformers' ``Blip2QFormerModel`` and ``BertModel`` at our shapes, holding our weights (names mapped),
    and a copy of our molecule LayerNorm (``ln_graph``), which the query pass applies to the encoder output
    before cross-attention: the baseline does the same work (and its backward reaches the LayerNorm)."""
    from transformers import BertConfig, BertModel, Blip2QFormerConfig, Blip2QFormerModel

    projector = model.projector
    shape = projector.bert.shape
    common = dict(
        vocab_size=projector.bert.embeddings.word_embeddings.num_embeddings,  # [DEC] included
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        intermediate_size=shape.intermediate_size,
        hidden_dropout_prob=shape.hidden_dropout_prob,
        attention_probs_dropout_prob=shape.attention_probs_dropout_prob,
        layer_norm_eps=shape.layer_norm_eps,
    )
    device = next(model.parameters()).device
    ours = projector.bert.state_dict()
    qformer = Blip2QFormerModel(
        Blip2QFormerConfig(**common, encoder_hidden_size=model.encoder.output_dim, cross_attention_frequency=2)
    )

    def our_name(name: str) -> str:  # theirs -> ours (bert.py keeps BERT's/LAVIS's "self")
        if name.startswith("layernorm."):
            return "embeddings.LayerNorm." + name.removeprefix("layernorm.")
        return name.replace(".attention.attention.", ".attention.self.").replace(
            ".crossattention.attention.", ".crossattention.self."
        )

    qformer.load_state_dict({name: ours[our_name(name)] for name in qformer.state_dict()})
    bert = BertModel(BertConfig(**common), add_pooling_layer=False)
    text = {k: v for k, v in ours.items() if k in bert.state_dict()}
    text["embeddings.token_type_embeddings.weight"] = torch.zeros_like(bert.embeddings.token_type_embeddings.weight)
    bert.load_state_dict(text)  # token type 0 is folded into our word embeddings, so a zero row is the same
    norm = copy.deepcopy(projector.encoder_norm)
    return qformer.to(device).train(), bert.to(device).train(), norm.to(device)


def _bf16_error(model, batch) -> float:
    """Largest absolute difference of our query pass under CPU bf16 autocast from the same pass in fp32 (eval)."""
    from molbridge.core import batch as keys

    was_training = model.training
    model.eval()
    with torch.no_grad():
        encoded = model.encoder(batch[keys.ENCODER_INPUT])
        fp32 = model.projector(encoded)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model.projector(encoded).float()
    model.train(was_training)
    return (bf16 - fp32).abs().max().item()


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (avx512_bf16 or AMX); Linux only, else False."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _agreement(model, batch) -> dict[str, float]:
    """Largest absolute differences between our passes and transformers' on the same weights and inputs
    (eval mode, no dropout, fp32 even on a GPU): the query pass on real queries, the text pass on real tokens."""
    from molbridge.core import batch as keys

    qformer, bert, norm = _baseline_models(model)
    projector = model.projector
    was_training = model.training
    for module in (model, qformer, bert):
        module.eval()
    ids, mask = batch[keys.TEXT_INPUT_IDS], batch[keys.TEXT_ATTENTION_MASK]
    with torch.no_grad(), torch.autocast(ids.device.type, enabled=False):
        encoded = model.encoder(batch[keys.ENCODER_INPUT])
        ours = projector(encoded)
        queries = projector.query_tokens.expand(len(ours), -1, -1)
        theirs = qformer(
            query_embeds=queries,
            encoder_hidden_states=norm(encoded.atom_embeddings),
            encoder_attention_mask=(~encoded.padding_mask).long(),
        ).last_hidden_state
        real = mask.bool()
        text = (projector.text_states(ids, mask) - bert(input_ids=ids, attention_mask=mask).last_hidden_state)[real]
    model.train(was_training)
    return {"query pass": (ours - theirs).abs().max().item(), "text pass": text.abs().max().item()}


def _baseline(models, model, encoded, batch, timer: Timer, parts=PASSES) -> None:
    """One step of transformers' Q-Former query pass and BERT text pass at the same shapes, forward + backward,
    with ``models`` from :func:`_baseline_models` on the encoder output ``encoded``."""
    from molbridge.core import batch as keys

    qformer, bert, norm = models
    memory = encoded.atom_embeddings.detach()
    queries = model.projector.query_tokens.detach().expand(memory.shape[0], -1, -1).clone().requires_grad_()
    qformer.zero_grad(set_to_none=True)  # as ours: from empty gradients (see _ours_forward_backward)
    norm.zero_grad(set_to_none=True)
    with timer.part("query pass"):
        out = qformer(
            query_embeds=queries,
            encoder_hidden_states=norm(memory),
            encoder_attention_mask=(~encoded.padding_mask).long(),
        ).last_hidden_state
        out.float().sum().backward()
    if "text pass" in parts:
        bert.zero_grad(set_to_none=True)
        with timer.part("text pass"):
            bert(
                input_ids=batch[keys.TEXT_INPUT_IDS], attention_mask=batch[keys.TEXT_ATTENTION_MASK]
            ).last_hidden_state.float().sum().backward()


def _ours_forward_backward(model, encoded, batch, timer: Timer, parts=PASSES) -> None:
    """One step of our query and text passes alone, forward + backward: the counterpart of the baseline."""
    from molbridge.core import batch as keys

    projector = model.projector
    # Gradients start empty, as after a training step's zero_grad and as in the baseline: accumulating into the
    # last step's .grad adds an add_ over every parameter that the baseline never pays.
    projector.zero_grad(set_to_none=True)
    with timer.part("query pass"):
        projector(encoded).float().sum().backward()
    if "text pass" in parts:
        projector.zero_grad(set_to_none=True)
        with timer.part("text pass"):
            projector.text_states(batch[keys.TEXT_INPUT_IDS], batch[keys.TEXT_ATTENTION_MASK]).float().sum().backward()


def _encoded(model, batch):
    """The encoder's output on the batch (no gradient): both sides' passes read it, untimed."""
    from molbridge.core import batch as keys

    with torch.no_grad():
        return model.encoder(batch[keys.ENCODER_INPUT])


def _compare(model, batch, steps: int, cuda: bool, parts) -> dict[str, dict]:
    """Our passes against transformers', one step of each in turn, ``steps`` times after a warm-up of each:
    interleaved so that a machine slowing down or speeding up mid-measurement weighs on both sides alike
    (timed in two blocks, the same query pass measured 0.935x and 1.062x in two runs of one suite). The
    speed-up is the median over steps of transformers' time over ours. The baseline's models are built once:
    built for each step, their weights were fresh in the CPU's cache where ours were not (measured: the
    default shape's query pass 0.91x that way, against 1.13x with both built before the steps)."""
    models, encoded = _baseline_models(model), _encoded(model, batch)
    _ours_forward_backward(model, encoded, batch, Timer(cuda), parts)  # warm-up
    _baseline(models, model, encoded, batch, Timer(cuda), parts)
    ours, theirs = [], []
    for _ in range(steps):
        ours.append(Timer(cuda))
        _ours_forward_backward(model, encoded, batch, ours[-1], parts)
        theirs.append(Timer(cuda))
        _baseline(models, model, encoded, batch, theirs[-1], parts)
    return {
        part: {
            "ours_s": round(statistics.median(t.parts[part] for t in ours), 4),
            "transformers_s": round(statistics.median(t.parts[part] for t in theirs), 4),
            "speedup": round(statistics.median(b.parts[part] / a.parts[part] for a, b in zip(ours, theirs)), 3),
            "timed_steps": steps,
        }
        for part in parts
    }


def _optimizer_speed(model, steps: int) -> dict:
    """The loop's AdamW step (``build_optimizer``) against torch's default AdamW over the same trainable
    parameters and gradients, alternating (median of per-step ratios), and the largest difference between the
    parameters after one step of each from the same state."""
    copies = [copy.deepcopy(model) for _ in range(2)]
    for copied in copies:
        for param in copied.parameters():
            seeded = torch.Generator().manual_seed(param.numel())  # a CPU generator: the same draw on any device
            param.grad = torch.randn(param.shape, generator=seeded).to(param)
    ours = build_optimizer(copies[0], 1e-5, 0.05)
    groups = [
        {k: v for k, v in group.items() if k != "fused"}
        for group in build_optimizer(copies[1], 1e-5, 0.05).param_groups
    ]
    theirs = torch.optim.AdamW(groups, lr=1e-5)
    ours.step(), theirs.step()
    pairs = zip(copies[0].parameters(), copies[1].parameters(), strict=True)
    diff = max(float((a - b).detach().abs().max()) for a, b in pairs)
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for _ in range(steps):
        for name, optimizer in (("ours", ours), ("theirs", theirs)):
            start = time.perf_counter()
            optimizer.step()
            times[name].append(time.perf_counter() - start)
    ratios = [t / o for o, t in zip(times["ours"], times["theirs"], strict=True)]
    return {
        "ours_s": statistics.median(times["ours"]),
        "transformers_s": statistics.median(times["theirs"]),
        "speedup": statistics.median(ratios),
        "max_abs_diff": diff,
        "diff_against": "torch default AdamW",
        "baseline": "torch's default AdamW step",
    }


def _compiled_speed(model, batch, optimizer, steps: int, cuda: bool) -> dict:
    """The whole step with the encoder and the projector under ``torch.compile`` (in place, default backend)
    against the same step eager (``steps`` of each, eager first: the compiled model cannot go back; the
    speed-up is the ratio of the medians), with the time the first compiled training step took (its compilation
    included) and the largest difference of the molecule features, eval, from the same weights. One fixed batch:
    compilation's best case, since training batches of other sizes recompile or run dynamic kernels. Last in
    ``measure``: the model stays compiled."""
    from molbridge.core import batch as keys

    def features():
        model.eval()
        with torch.no_grad():
            out = model.projector.molecule_features(model.encoder(batch[keys.ENCODER_INPUT]))
        model.train()
        return out

    def timed() -> float:
        timer = Timer(cuda)
        _step(model, batch, optimizer, timer)
        return sum(timer.parts.values())

    eager = [timed() for _ in range(steps)]
    eager_features = features()
    model.encoder.compile()
    model.projector.compile()
    difference = float((features() - eager_features).abs().max())  # the same weights, compiled
    start = time.perf_counter()
    _step(model, batch, optimizer, Timer(cuda))
    compile_s = time.perf_counter() - start
    compiled = [timed() for _ in range(steps)]
    return {
        "ours_s": round(statistics.median(compiled), 4),
        "transformers_s": round(statistics.median(eager), 4),
        "speedup": round(statistics.median(eager) / statistics.median(compiled), 3),
        "max_abs_diff": difference,
        "diff_against": "molbridge eager",
        "baseline": "the same step eager",
        "first_step_s": round(compile_s, 1),
        "timed_steps": steps,
    }


def measure(
    shape: str,
    steps: int,
    batch_size: int | None,
    bf16: str = "auto",
    compare_steps: int = 10,
    compile_step: bool = False,
) -> dict:
    """One shape: the training step part by part, then our passes against transformers'; on a CPU the query
    pass once more under bf16 autocast (``bf16``: ``auto`` when the CPU has native bf16, ``on``, ``off``);
    with ``compile_step``, last, the whole step under ``torch.compile`` against eager."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    model, size = _build(shape, batch_size)
    model = model.to(device).train()
    batch = _batch(model, size)
    batch = {
        k: ({n: t.to(device) for n, t in v.items()} if isinstance(v, dict) else v.to(device)) for k, v in batch.items()
    }
    optimizer = build_optimizer(model, 1e-5, 0.05)  # the loop's: fused where torch has the kernel
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    with autocast:
        _step(model, batch, optimizer, Timer(cuda))  # warm-up
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        timer = Timer(cuda)
        for _ in range(steps):
            _step(model, batch, optimizer, timer)
        peak_mb = (
            torch.cuda.max_memory_allocated() / 2**20
            if cuda
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
        )
        flops = step_flops(lambda: _step(model, batch, optimizer, Timer(cuda)))
        optimizer_step = _optimizer_speed(model, compare_steps)
        model.projector.requires_grad_(True)  # like for like with transformers: the whole tower trains
        agreement = _agreement(model, batch)
        comparisons = {
            part: {**speed, "max_abs_diff": agreement[part], "diff_against": "transformers"}
            for part, speed in _compare(model, batch, compare_steps, cuda, PASSES).items()
        }
    comparisons["optimizer step"] = optimizer_step
    if not cuda and (
        bf16 == "on" or (bf16 == "auto" and cpu_has_native_bf16())
    ):  # the query pass again, both sides under CPU bf16 autocast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            speed = _compare(model, batch, compare_steps, cuda, ("query pass",))["query pass"]
        comparisons["query pass, bf16 autocast"] = {
            **speed,
            "max_abs_diff": _bf16_error(model, batch),
            "diff_against": "molbridge fp32",
        }
    if compile_step:
        with autocast:
            comparisons["step, torch.compile"] = _compiled_speed(model, batch, optimizer, compare_steps, cuda)
    step_s = sum(timer.parts.values()) / steps
    rate = matmul_rate(device, torch.bfloat16 if cuda else torch.float32)
    return {
        "shape": shape,
        "batch": size,
        "steps": steps,
        "mol_per_s": round(size / step_s, 2),
        "step_s": round(step_s, 3),
        "parts_s": {k: round(v / steps, 4) for k, v in timer.parts.items()},
        "peak_mb": round(peak_mb, 1),
        "utilisation": utilisation(flops, step_s, rate),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "trainable_m": round(trainable / 1e6, 2),
        "vs_transformers": comparisons,
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores)",
        "precision": "bf16-autocast" if cuda else "fp32",
        "torch": torch.__version__,
    }


def _print(results: list[dict]) -> None:
    for r in results:
        if "error" in r:
            print(f"\n## {r['shape']}: not measured: {r['error']}")
            continue
        print(
            f"\n## {r['shape']}: batch {r['batch']}, {r['params_m']} M parameters ({r['trainable_m']} M trained), "
            f"{r['device']}, {r['precision']}"
        )
        print(f"{r['mol_per_s']} molecules/s ({r['step_s']} s/step), peak memory growth {r['peak_mb']} MB")
        u = r["utilisation"]
        print(
            f"{u['step_tflop']} TFLOP/step: {u['achieved_tflops']} TFLOP/s, MFU {u['mfu']:.1%} of the measured "
            f"{u['matmul_tflops']} TFLOP/s matrix-product rate\n"
        )
        print("| part | s/step | share |\n|---|---|---|")
        for part, seconds in r["parts_s"].items():
            print(f"| {part} | {seconds:.4f} | {seconds / r['step_s']:.0%} |")
        print(
            "\n| part (forward+backward) | molbridge s | baseline s | speed-up | max abs diff (eval) | against |"
            "\n|---|---|---|---|---|---|"
        )
        for part, v in r["vs_transformers"].items():
            print(
                f"| {part} | {v['ours_s']:.4f} | {v['transformers_s']:.4f} | {v['speedup']:.2f}x "
                f"| {v['max_abs_diff']:.1e} | {v['diff_against']} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=[*SHAPES, "all"], default="all")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per shape (after one warm-up)")
    parser.add_argument(
        "--compare-steps",
        type=int,
        default=10,
        help="steps of our passes and transformers', interleaved, for the speed-ups (median over steps)",
    )
    parser.add_argument("--batch", type=int, help="override the shape's batch size")
    parser.add_argument(
        "--bf16",
        choices=("auto", "on", "off"),
        default="auto",
        help="CPU: also time the query pass under bf16 autocast (auto: when the CPU has native bf16)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time the step with the encoder and projector under torch.compile against eager "
        "(compilation takes minutes on a small CPU)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: measure in-process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.shape, args.steps, args.batch, args.bf16, args.compare_steps, args.compile)))
        return
    results = []
    for shape in SHAPES if args.shape == "all" else [args.shape]:
        command = [sys.executable, __file__, "--one", "--shape", shape, "--steps", str(args.steps), "--bf16", args.bf16]
        command += ["--compare-steps", str(args.compare_steps)] + (["--compile"] if args.compile else [])
        out = subprocess.run(
            command + (["--batch", str(args.batch)] if args.batch else []), capture_output=True, text=True
        )
        if out.returncode == 0:
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        else:  # e.g. the paper's shape on a small machine: say so and go on with the other shapes
            why = "killed (out of memory?)" if out.returncode == -9 else out.stderr.strip().splitlines()[-1]
            results.append({"shape": shape, "error": why})
    _print(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
