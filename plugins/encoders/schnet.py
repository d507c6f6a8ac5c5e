"""SchNet (Schütt et al., NeurIPS 2017, arXiv 1706.08566): continuous-filter convolutions over 3D atoms.

Our own implementation rather than torch_geometric's: PyG's radius graph needs ``pyg-lib``, which is
not on PyPI. Distances are computed densely per batch (cheap), but the filters and messages run over
the list of real atom pairs within the cutoff only, so padding and distant pairs cost nothing.
Distances only enter through a Gaussian basis and a cosine cutoff, so the output is invariant to
rotation and translation and follows any permutation of the atoms.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from molbridge.core import hookimpl
from molbridge.core.contracts import Encoder, EncoderOutput
from molbridge.core.errors import MolbridgeError, check_choice
from molbridge.plugins.encoders.presets import Preset, preset_metadata
from molbridge.plugins.encoders.weights import load_strict, read_state_dict


@dataclass(frozen=True)
class SchNetPreset(Preset):
    """The shape of a SchNet encoder; each field can also be set on its own (``encoder.<field>``)."""

    hidden: int
    """Width of the atom representations; the encoder's output_dim."""
    filters: int
    """Width of the continuous filters of each interaction block."""
    interactions: int
    """Interaction blocks (continuous-filter convolution + atom-wise MLP, residual)."""
    gaussians: int
    """Radial basis functions between 0 and the cutoff."""
    cutoff: float
    """Interaction cutoff in angstrom: atom pairs further apart exchange no messages."""


PRESETS = {
    "base": SchNetPreset(
        "the SchNet paper's QM9 shape", hidden=128, filters=128, interactions=6, gaussians=50, cutoff=10.0
    ),
    "small": SchNetPreset(
        "a CPU-friendly shape that trains in minutes", hidden=64, filters=64, interactions=3, gaussians=32, cutoff=5.0
    ),
}
MAX_ATOMIC_NUMBER = 100
HYDROGEN_POLICIES = ("all_h", "no_h")


@dataclass
class SchNetConfig:
    name: str = "schnet"
    preset: str = field(default="small", metadata=preset_metadata(PRESETS))
    """``base`` (the paper's shape) or ``small`` (CPU-friendly); explicit fields below override it."""
    hidden: int | None = None
    """Width of the atom embeddings and of the output (null: the preset's)."""
    filters: int | None = None
    """Width of the continuous filters in each interaction (null: the preset's)."""
    interactions: int | None = None
    """Number of interaction blocks (null: the preset's)."""
    gaussians: int | None = None
    """Gaussians expanding each interatomic distance up to ``cutoff`` (null: the preset's)."""
    cutoff: float | None = None
    """Interaction cutoff in angstrom."""
    hydrogens: str = field(default="all_h", metadata={"choices": HYDROGEN_POLICIES})
    """``all_h`` keeps hydrogens, ``no_h`` removes them before encoding."""
    checkpoint: str | None = None
    """Weights to load (a state dict, or {"model": state dict}); null keeps the random initialisation."""
    trust_checkpoint: bool = False
    """Allow full unpickling of the checkpoint (only for files you trust)."""


def shifted_softplus(x: Tensor) -> Tensor:
    return nn.functional.softplus(x) - math.log(2.0)


class Interaction(nn.Module):
    """One interaction block: atom-wise linear, continuous-filter convolution, atom-wise MLP (residual)."""

    def __init__(self, hidden: int, filters: int, gaussians: int):
        super().__init__()
        self.filter_net = nn.Sequential(nn.Linear(gaussians, filters), nn.Softplus(), nn.Linear(filters, filters))
        self.to_filters = nn.Linear(hidden, filters, bias=False)
        self.out1, self.out2 = nn.Linear(filters, hidden), nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, rbf: Tensor, envelope: Tensor, pairs: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """x (B, N, H); rbf (P, G) and envelope (P,) of the pairs (batch, i, j): j sends to i."""
        b, i, j = pairs
        w = self.filter_net(rbf) * envelope.unsqueeze(-1)  # (P, F)
        sent = w * self.to_filters(x)[b, j]
        # index_add_ over flat rows sums each row's messages in pair order: deterministic on CPU
        rows = b * x.shape[1] + i
        messages = sent.new_zeros(x.shape[0] * x.shape[1], sent.shape[-1]).index_add_(0, rows, sent)
        messages = messages.view(*x.shape[:2], -1)
        return x + self.out2(shifted_softplus(self.out1(messages)))


class SchNetEncoder(Encoder):
    def __init__(self, config: SchNetConfig):
        super().__init__()
        check_choice("encoder.preset", config.preset, PRESETS)
        check_choice("encoder.hydrogens", config.hydrogens, HYDROGEN_POLICIES)
        preset = PRESETS[config.preset].values()
        shape = {k: getattr(config, k) if getattr(config, k) is not None else v for k, v in preset.items()}
        self.keep_hydrogens, self.cutoff = config.hydrogens == "all_h", float(shape["cutoff"])
        self.output_dim = shape["hidden"]
        self.embedding = nn.Embedding(MAX_ATOMIC_NUMBER + 1, shape["hidden"], padding_idx=0)
        self.register_buffer("centres", torch.linspace(0.0, self.cutoff, shape["gaussians"]), persistent=False)
        self.gamma = 0.5 / float(self.centres[1] - self.centres[0]) ** 2
        self.interactions = nn.ModuleList(
            Interaction(shape["hidden"], shape["filters"], shape["gaussians"]) for _ in range(shape["interactions"])
        )
        if config.checkpoint:
            load_strict(self, read_state_dict(config.checkpoint, trust=config.trust_checkpoint), config.checkpoint)

    def featurize(self, atomic_numbers: np.ndarray, positions: np.ndarray) -> dict[str, Tensor]:
        z = np.asarray(atomic_numbers, dtype=np.int64)
        keep = (z != 1) if not self.keep_hydrogens else np.ones(len(z), dtype=bool)
        if z.max(initial=0) > MAX_ATOMIC_NUMBER or z.min(initial=1) < 1:
            raise MolbridgeError(f"SchNet embeds atomic numbers 1..{MAX_ATOMIC_NUMBER}; got {sorted(set(z.tolist()))}")
        return {"z": torch.from_numpy(z[keep]), "pos": torch.as_tensor(positions[keep], dtype=torch.float32)}

    def collate(self, features: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        return {
            "z": nn.utils.rnn.pad_sequence([f["z"] for f in features], batch_first=True),
            "pos": nn.utils.rnn.pad_sequence([f["pos"] for f in features], batch_first=True),
        }

    def forward(self, inputs: Mapping[str, Tensor]) -> EncoderOutput:
        z, pos = inputs["z"], inputs["pos"]
        padding = z == 0
        real = ~padding
        diff = pos.unsqueeze(2) - pos.unsqueeze(1)
        dist = diff.pow(2).sum(-1).clamp_min(1e-12).sqrt()  # clamp: finite gradient on the diagonal
        eye = torch.eye(z.shape[1], dtype=torch.bool, device=z.device)
        pairs = (real.unsqueeze(2) & real.unsqueeze(1) & ~eye & (dist < self.cutoff)).nonzero(as_tuple=True)
        d = dist[pairs]
        envelope = (0.5 * (torch.cos(d * math.pi / self.cutoff) + 1.0)).to(self.embedding.weight.dtype)
        rbf = torch.exp(-self.gamma * (d.unsqueeze(-1) - self.centres) ** 2).to(self.embedding.weight.dtype)
        x = self.embedding(z)
        for block in self.interactions:
            x = block(x, rbf.to(x.dtype), envelope.to(x.dtype), pairs)
        x = x * real.unsqueeze(-1)
        pooled = x.sum(1) / real.sum(1, keepdim=True).clamp(min=1)
        return EncoderOutput(atom_embeddings=x, padding_mask=padding, pooled=pooled)


@hookimpl
def molbridge_register_encoders(register):
    register(
        "schnet",
        SchNetEncoder,
        SchNetConfig,
        description="SchNet continuous-filter convolutions (Schütt et al. 2017); presets small, base",
    )
