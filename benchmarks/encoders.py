"""Encoder forward throughput and peak memory, against unimol-tools' reference Uni-Mol in the same run.

    MOLBRIDGE_UNIMOL_TOOLS=DIR .venv/bin/python benchmarks/encoders.py [--molecules 256] [--batch 32]
        [--bf16 auto|on|off] [--json F]

All models see the same batches: molbridge-mini test molecules (scaffold split, conformer 0), featurized
once by molbridge (featurization is not timed; nor is the reference's conversion to its own token ids).
Each model runs in a subprocess of its own, so its peak memory is its own: on CPU the growth of peak RSS
during the forward passes (``ru_maxrss``), on GPU ``torch.cuda.max_memory_allocated``. On a GPU every
model runs in bf16 autocast. On a CPU the models run in fp32, and molbridge's Uni-Mol base runs once
more under CPU bf16 autocast (``--bf16 auto``: when the CPU has native bf16, avx512_bf16 or amx_bf16).
The reference is unimol-tools' UniMolModel at the base shape with random weights (see
tests/test_unimol_parity.py); the figure that matters is molbridge's Uni-Mol base against it.

Accuracy, in one more subprocess on the same batches: molbridge's Uni-Mol base loads the reference's
weights (released format, per-edge-type Gaussian affine maps randomised so that they matter) and the
largest absolute difference over real atoms and [CLS] is reported, fp32 against the reference, and bf16
autocast against molbridge's own fp32 (``max_abs_diff`` and ``diff_against`` in the JSON).
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
import types
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import Tensor

MODELS = ("schnet-small", "schnet-base", "unimol-small", "unimol-base", "unimol-tools-base")
BF16_MODELS = ("unimol-base",)  # also run under CPU bf16 autocast


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (avx512_bf16 or AMX); Linux only, else False."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _batches(encoder, molecules: int, batch: int) -> list[dict]:
    from molbridge.core.data import MoleculeDataset

    data = MoleculeDataset.from_split("molbridge-mini", "test", "scaffold", augment=False, limit=molecules)
    features = [encoder.featurize_item(data[i]) for i in range(len(data))]
    return [encoder.collate(features[i : i + batch]) for i in range(0, len(features), batch)]


def _molbridge(name: str):
    from molbridge.plugins.encoders.schnet import SchNetConfig, SchNetEncoder
    from molbridge.plugins.encoders.unimol import UniMolConfig, UniMolEncoder

    kind, preset = name.split("-")
    if kind == "schnet":
        return SchNetEncoder(OmegaConf.structured(SchNetConfig(preset=preset)))
    return UniMolEncoder(OmegaConf.structured(UniMolConfig(preset=preset)))


def _without_rdkit_drawing() -> bool:
    """Let unimol-tools import where RDKit's drawing cannot load (GPU images without X libraries:
    ``libXrender.so.1`` missing). unimol-tools' package imports ``rdkit.Chem.PandasTools`` (SDF reading and
    writing, which pulls in ``rdkit.Chem.Draw``) though its model never uses it; an empty module stands in.
    True when it had to."""
    try:
        import rdkit.Chem.PandasTools  # noqa: F401
    except ImportError:
        sys.modules["rdkit.Chem.PandasTools"] = types.ModuleType("rdkit.Chem.PandasTools")
        return True
    return False


def _reference():
    """unimol-tools' model (random weights, nothing downloaded), a conversion of molbridge's batches to
    its inputs (not timed) and its forward on converted batches."""
    sys.path.append(os.environ["MOLBRIDGE_UNIMOL_TOOLS"])
    _without_rdkit_drawing()
    from unimol_tools.models.unimol import UniMolModel

    from molbridge.plugins.encoders.unimol import DICTIONARY

    tmp = Path(tempfile.mkdtemp())
    (tmp / "dict.txt").write_text("\n".join(DICTIONARY[:-1]) + "\n")
    torch.save({"model": {}}, tmp / "empty.pt")
    model = UniMolModel(
        output_dim=1,
        data_type="molecule",
        remove_hs=True,
        pretrained_model_path=str(tmp / "empty.pt"),
        pretrained_dict_path=str(tmp / "dict.txt"),
    )
    ids = torch.tensor([model.dictionary.index(s) for s in DICTIONARY])  # its special-token ids differ from ours

    def convert(batch):
        tokens = ids.to(batch["src_tokens"].device)[batch["src_tokens"]]
        return {
            "src_tokens": tokens,
            "src_distance": batch["src_distance"],
            "src_coord": torch.zeros(*tokens.shape, 3, device=tokens.device),
            "src_edge_type": tokens[:, :, None] * len(DICTIONARY) + tokens[:, None, :],
        }

    def forward(batch):
        return model(**batch, return_repr=True)

    return model, ids, convert, forward


def _released_weights(reference, ids: Tensor) -> dict[str, Tensor]:
    """The reference's weights in the released checkpoints' format (our token ids), with random per-edge-type
    Gaussian affine maps (written back into the reference too), so that the edge-type lookup matters."""
    n = len(ids)
    edges = (ids[:, None] * n + ids[None, :]).reshape(-1)  # our edge type e is the reference's edges[e]
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, mean in (("gbf.mul.weight", 1.0), ("gbf.bias.weight", 0.0)):
            weight = reference.get_parameter(key)
            weight.copy_(mean + 0.1 * torch.randn(weight.shape, generator=generator))
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("classification_head.")}
    state["embed_tokens.weight"] = state["embed_tokens.weight"][ids]
    for key in ("gbf.mul.weight", "gbf.bias.weight"):
        state[key] = state[key][edges]
    heads = state["gbf_proj.linear2.weight"].shape[0]  # released files carry it; unimol-tools omits it
    state["encoder.final_head_layer_norm.weight"] = torch.ones(heads)
    state["encoder.final_head_layer_norm.bias"] = torch.zeros(heads)
    return state


def accuracy(molecules: int, batch: int) -> dict:
    """Largest absolute differences on the benchmark's batches: molbridge's Uni-Mol base (fp32) against
    unimol-tools (fp32) with the same weights, and molbridge in bf16 autocast against its own fp32."""
    from molbridge.plugins.encoders.unimol import UniMolConfig, UniMolEncoder

    torch.manual_seed(0)
    reference, ids, convert, _ = _reference()
    tmp = Path(tempfile.mkdtemp())
    torch.save({"model": _released_weights(reference, ids)}, tmp / "released.pt")
    ours = UniMolEncoder(OmegaConf.structured(UniMolConfig(preset="base", checkpoint=str(tmp / "released.pt"))))
    batches = _batches(ours, molecules, batch)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    reference, ours = reference.to(device).eval(), ours.to(device).eval()
    fp32_vs_reference = bf16_vs_fp32 = 0.0
    with torch.no_grad():
        for b in batches:
            b = {k: v.to(device) for k, v in b.items()}
            out = ours(b)
            theirs = reference(**convert(b), return_repr=True, return_atomic_reprs=True)
            real = ~out.padding_mask
            fp32_vs_reference = max(
                fp32_vs_reference,
                (out.pooled - theirs["cls_repr"]).abs().max().item(),
                *(
                    (out.atom_embeddings[i, 1 : len(a) + 1] - a).abs().max().item()
                    for i, a in enumerate(theirs["atomic_reprs"])
                ),
            )
            with torch.autocast(device.type, dtype=torch.bfloat16):
                low = ours(b).atom_embeddings.float()
            bf16_vs_fp32 = max(bf16_vs_fp32, (low - out.atom_embeddings)[real].abs().max().item())
    return {"fp32_vs_unimol_tools": fp32_vs_reference, "bf16_vs_fp32": bf16_vs_fp32}


def measure(name: str, molecules: int, batch: int, bf16: bool = False) -> dict:
    """Run one model on the shared batches; molecules/s and peak memory. On a GPU always in bf16 autocast;
    on a CPU in fp32, or in bf16 autocast with ``bf16``."""
    from molbridge.plugins.encoders.unimol import UniMolConfig, UniMolEncoder

    torch.manual_seed(0)
    if name == "unimol-tools-base":
        model, _, convert, forward = _reference()
        featurizer = UniMolEncoder(OmegaConf.structured(UniMolConfig(preset="small")))
    else:
        model = featurizer = forward = _molbridge(name)
        convert = None
    batches = _batches(featurizer, molecules, batch)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model = model.to(device).eval()
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    batches = [convert(b) for b in batches] if convert else batches
    count = sum(len(next(iter(b.values()))) for b in batches)
    bf16 = bf16 or cuda
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    with torch.no_grad(), autocast:
        forward(batches[0])  # warm-up
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        for b in batches:
            forward(b)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    peak_mb = (
        torch.cuda.max_memory_allocated() / 2**20
        if cuda
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    )
    return {
        "model": name,
        "molecules": count,
        "mol_per_s": round(count / seconds, 1),
        "peak_mb": round(peak_mb, 1),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "precision": "bf16" if bf16 else "fp32",
    }


def _run(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode != 0:  # the child's own error, not only its exit status
        sys.exit(f"{' '.join(args)} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--molecules", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--bf16",
        choices=("auto", "on", "off"),
        default="auto",
        help="CPU: also run Uni-Mol base in bf16 autocast (auto: when the CPU has native bf16)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model in this process
    parser.add_argument("--one-bf16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = ["--molecules", str(args.molecules), "--batch", str(args.batch)]
    if args.one == "accuracy":
        print(json.dumps(accuracy(args.molecules, args.batch)))
        return
    if args.one:
        print(json.dumps(measure(args.one, args.molecules, args.batch, bf16=args.one_bf16)))
        return
    torch.set_num_threads(os.cpu_count() or 1)
    has_reference = bool(os.environ.get("MOLBRIDGE_UNIMOL_TOOLS"))
    models = [m for m in MODELS if m != "unimol-tools-base" or has_reference]
    results = [_run("--one", name, *sizes) for name in models]
    cpu_bf16 = not torch.cuda.is_available() and (args.bf16 == "on" or (args.bf16 == "auto" and cpu_has_native_bf16()))
    if cpu_bf16:
        results += [_run("--one", name, "--one-bf16", *sizes) for name in BF16_MODELS]
    errors = _run("--one", "accuracy", *sizes) if has_reference else None
    for r in results:
        if errors and r["model"] == "unimol-base":
            fp32 = r["precision"] == "fp32" and not torch.cuda.is_available()
            r["max_abs_diff"] = errors["fp32_vs_unimol_tools" if fp32 else "bf16_vs_fp32"]
            r["diff_against"] = "unimol-tools-base fp32" if fp32 else "unimol-base fp32"
    reference = next((r for r in results if r["model"] == "unimol-tools-base"), None)
    print(
        f"{'model':<18} {'precision':<9} {'params M':>8} {'mol/s':>8} {'peak MB':>8} {'vs unimol-tools':>15} "
        f"{'max abs diff':>12}  against / device"
    )
    for r in results:
        ratio = f"{r['mol_per_s'] / reference['mol_per_s']:.2f}x" if reference else "n/a"
        diff = f"{r['max_abs_diff']:.2e}" if "max_abs_diff" in r else "-"
        against = f"{r['diff_against']} / " if "diff_against" in r else ""
        print(
            f"{r['model']:<18} {r['precision']:<9} {r['params_m']:>8} {r['mol_per_s']:>8} {r['peak_mb']:>8} "
            f"{ratio:>15} {diff:>12}  {against}{r['device']}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
