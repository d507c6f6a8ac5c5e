"""Encoder forward throughput and peak memory, against unimol-tools' reference Uni-Mol in the same run.

    MOLBRIDGE_UNIMOL_TOOLS=DIR .venv/bin/python benchmarks/encoders.py [--molecules 256] [--batch 32] [--json F]

All models see the same batches: molbridge-mini test molecules (scaffold split, conformer 0), featurized
once by molbridge (featurization is not timed). Each model runs in a subprocess of its own, so its peak
memory is its own: on CPU the growth of peak RSS during the forward passes (``ru_maxrss``), on GPU
``torch.cuda.max_memory_allocated``. On a GPU every model also runs in bf16 autocast. The reference is
unimol-tools' UniMolModel at the base shape with random weights (see tests/test_unimol_parity.py);
the figure that matters is molbridge's Uni-Mol base against it.
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
from omegaconf import OmegaConf

MODELS = ("schnet-small", "schnet-base", "unimol-small", "unimol-base", "unimol-tools-base")


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


def _reference():
    """unimol-tools' model (random weights, nothing downloaded) and a call taking molbridge's batches."""
    sys.path.append(os.environ["MOLBRIDGE_UNIMOL_TOOLS"])
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

    def forward(batch):
        tokens = ids.to(batch["src_tokens"].device)[batch["src_tokens"]]
        edge = tokens[:, :, None] * len(DICTIONARY) + tokens[:, None, :]
        coords = torch.zeros(*tokens.shape, 3, device=tokens.device)
        return model(tokens, batch["src_distance"], coords, edge, return_repr=True)

    return model, forward


def measure(name: str, molecules: int, batch: int) -> dict:
    """Run one model on the shared batches; molecules/s and peak memory."""
    from molbridge.plugins.encoders.unimol import UniMolConfig, UniMolEncoder

    torch.manual_seed(0)
    if name == "unimol-tools-base":
        model, forward = _reference()
        featurizer = UniMolEncoder(OmegaConf.structured(UniMolConfig(preset="small")))
    else:
        model = featurizer = _molbridge(name)
        forward = model
    batches = _batches(featurizer, molecules, batch)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model = model.to(device).eval()
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
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
    count = sum(len(next(iter(b.values()))) for b in batches)
    return {
        "model": name,
        "molecules": count,
        "mol_per_s": round(count / seconds, 1),
        "peak_mb": round(peak_mb, 1),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "precision": "bf16" if cuda else "fp32",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--molecules", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.molecules, args.batch)))
        return
    torch.set_num_threads(os.cpu_count() or 1)
    models = [m for m in MODELS if m != "unimol-tools-base" or os.environ.get("MOLBRIDGE_UNIMOL_TOOLS")]
    results = []
    for name in models:
        out = subprocess.run(
            [sys.executable, __file__, "--one", name, "--molecules", str(args.molecules), "--batch", str(args.batch)],
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    reference = next((r for r in results if r["model"] == "unimol-tools-base"), None)
    print(f"{'model':<18} {'params M':>8} {'mol/s':>8} {'peak MB':>8} {'vs unimol-tools':>15}  device")
    for r in results:
        ratio = f"{r['mol_per_s'] / reference['mol_per_s']:.2f}x" if reference else "n/a"
        print(
            f"{r['model']:<18} {r['params_m']:>8} {r['mol_per_s']:>8} {r['peak_mb']:>8} {ratio:>15}  "
            f"{r['device']} {r['precision']}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
