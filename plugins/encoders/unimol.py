"""Uni-Mol molecular encoder (Zhou et al., ICLR 2023) with parameter names of the released checkpoints.

``mol_pre_no_h_220816.pt`` / ``mol_pre_all_h_220816.pt`` load strictly into the ``base`` preset; their
pretraining heads (``lm_head``, ``pair2coord_proj``, ``dist_head``) are dropped. See
shared/reference/unimol.md for the input pipeline and forward pass this follows.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from molbridge.core import hookimpl
from molbridge.core.contracts import Encoder, EncoderOutput
from molbridge.core.errors import MolbridgeError, check_choice
from molbridge.core.recipe import bounded
from molbridge.plugins.encoders.presets import Preset, preset_metadata
from molbridge.plugins.encoders.weights import load_strict, read_state_dict

#: The Uni-Mol dictionary (mol.dict.txt) plus the appended [MASK]; index = token id.
DICTIONARY = (
    "[PAD] [CLS] [SEP] [UNK] C N O S H Cl F Br I Si P B Na K Al Ca Sn As Hg Fe Zn Cr Se Gd Au Li [MASK]"
).split()
PAD, CLS, SEP, UNK = 0, 1, 2, 3
MAX_ATOMS = 256
PRETRAINING_HEADS = ("lm_head.", "pair2coord_proj.", "dist_head.")
HYDROGEN_POLICIES = ("no_h", "all_h")
_ELEMENTS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br "
    "Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er "
    "Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg"
).split()
#: atomic number -> token id ([UNK] for elements outside the dictionary)
TOKEN_OF_Z = np.array(
    [PAD] + [DICTIONARY.index(s) if s in DICTIONARY else UNK for s in _ELEMENTS] + [UNK] * 40, dtype=np.int64
)


@dataclass(frozen=True)
class UniMolPreset(Preset):
    """The shape of a Uni-Mol encoder (names as in Uni-Mol's ``unimol_base_architecture``)."""

    layers: int
    """Transformer layers with pair-biased attention (``encoder_layers``)."""
    embed_dim: int
    """Width of the atom representations (``encoder_embed_dim``); the encoder's output_dim."""
    ffn_dim: int
    """Hidden width of each layer's feed-forward block (``encoder_ffn_embed_dim``)."""
    heads: int
    """Attention heads (``encoder_attention_heads``), also the width of the pair representation."""
    kernels: int
    """Gaussian basis functions per atom pair (``K`` of the GaussianLayer)."""


PRESETS = {
    "base": UniMolPreset(
        "the released checkpoints' shape, mol_pre_no_h/all_h_220816.pt, 3D-MoLM's encoder; 47.6 M parameters",
        layers=15,
        embed_dim=512,
        ffn_dim=2048,
        heads=64,
        kernels=128,
    ),
    "small": UniMolPreset(
        "a CPU-friendly shape that trains in minutes; 0.5 M parameters",
        layers=4,
        embed_dim=128,
        ffn_dim=256,
        heads=8,
        kernels=32,
    ),
}


@dataclass
class UniMolConfig:
    name: str = "unimol"
    preset: str = field(default="small", metadata=preset_metadata(PRESETS))
    """``base`` (the released checkpoints' shape) or ``small`` (CPU-friendly)."""
    hydrogens: str = field(default="no_h", metadata={"choices": HYDROGEN_POLICIES})
    """``no_h`` (removes hydrogens, like mol_pre_no_h) or ``all_h`` (keeps them, like mol_pre_all_h)."""
    checkpoint: str | None = None
    """Released Uni-Mol weights ({"model": state dict}); null keeps the random initialisation."""
    trust_checkpoint: bool = False
    """Allow full unpickling of the checkpoint (only for files you trust)."""
    dropout: float = bounded(0.0, ge=0, lt=1)
    """Dropout after each attention and feed-forward block, in training only (Uni-Mol base: 0.1; 3D-MoLM keeps its
    encoder frozen in eval mode, where no dropout acts)."""
    attention_dropout: float = bounded(0.0, ge=0, lt=1)
    """Dropout of the attention probabilities, in training only (Uni-Mol base: 0.1)."""
    emb_dropout: float = bounded(0.0, ge=0, lt=1)
    """Dropout of the embeddings after their LayerNorm, in training only (Uni-Mol base: 0.1)."""
    pad_to_multiple: int = bounded(1, ge=1)
    """Pad each batch to a multiple of this many positions (the reference: 8). Results do not change: padding is
    masked and skipped; it only changes the shape of the attention tensors."""


class Packing(NamedTuple):
    """Where the real (non-padding) positions of a padded batch are, as flat indices in order.

    Everything that acts on atoms one at a time (LayerNorms, projections, feed-forward blocks) and the
    Gaussian basis of atom pairs run on real positions only: padding is about half of the atoms and four
    fifths of the pairs in a batch of molbridge-mini molecules, and no real output depends on it.
    """

    batch: int
    length: int
    index: Tensor
    """(T,) flat index ``molecule * length + position`` of each real position, in order."""

    @classmethod
    def of(cls, padding: Tensor) -> "Packing":
        return cls(padding.shape[0], padding.shape[1], (~padding).flatten().nonzero().squeeze(1))

    def pad(self, x: Tensor) -> Tensor:
        """(T, ...) rows of real positions -> (B, N, ...) with zero rows at padding."""
        out = x.new_zeros(self.batch * self.length, *x.shape[1:]).index_copy_(0, self.index, x)
        return out.view(self.batch, self.length, *x.shape[1:])


def _no_graph(*tensors: Tensor) -> bool:
    """True when autograd records nothing here, so buffers may be overwritten in place."""
    return not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors)


def _lend(buffers: dict | None, name: str, make: Callable[[], Tensor]) -> Tensor:
    """``buffers[name]``, made by ``make`` on first use; a fresh ``make()`` without buffers (autograd)."""
    if buffers is None:
        return make()
    if name not in buffers:
        buffers[name] = make()
    return buffers[name]


class GaussianLayer(nn.Module):
    """Gaussian basis of pair distances, with an affine map per edge type (token_i, token_j)."""

    def __init__(self, kernels: int, edge_types: int):
        super().__init__()
        self.means, self.stds = nn.Embedding(1, kernels), nn.Embedding(1, kernels)
        self.mul, self.bias = nn.Embedding(edge_types, 1), nn.Embedding(edge_types, 1)
        nn.init.uniform_(self.means.weight, 0, 3)
        nn.init.uniform_(self.stds.weight, 0, 3)
        nn.init.constant_(self.bias.weight, 0)
        nn.init.constant_(self.mul.weight, 1)

    def forward(self, dist: Tensor, edge_type: Tensor) -> Tensor:
        """(..., K) basis of distances of any shape (molbridge passes the real pairs only, flat)."""
        x = self.mul(edge_type).float() * dist.unsqueeze(-1) + self.bias(edge_type).float()
        mean, std = self.means.weight.float().view(-1), self.stds.weight.float().view(-1).abs() + 1e-5
        pi = 3.14159  # the reference's constant, kept for bit-level parity
        if not _no_graph(x, mean, std):
            return torch.exp(-0.5 * ((x - mean) / std) ** 2) / ((2 * pi) ** 0.5 * std)
        # the same operations in the same order (bit-identical), in place: one (..., K) temporary, not five
        # (less memory; on real pairs only the basis is a small share of the time either way)
        return (x - mean).div_(std).square_().mul_(-0.5).exp_().div_((2 * pi) ** 0.5 * std)


class PairHead(nn.Module):
    """Linear -> GELU -> Linear (Uni-Mol's NonLinearHead; names linear1/linear2 match the checkpoint)."""

    def __init__(self, dim: int, out: int):
        super().__init__()
        self.linear1, self.linear2 = nn.Linear(dim, dim), nn.Linear(dim, out)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(nn.functional.gelu(self.linear1(x)))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, attention_dropout: float = 0.0):
        super().__init__()
        self.heads, self.scale, self.attention_dropout = heads, (dim // heads) ** -0.5, attention_dropout
        self.in_proj, self.out_proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor, bias: Tensor, packing: Packing, buffers: dict | None = None) -> tuple[Tensor, Tensor]:
        """x: (T, D) real positions; bias: (B * heads, N, N) fp32, -inf at padded keys.

        Returns the output (T, D) and the pre-softmax logits (B * heads, N, N), which become the next
        layer's pair bias. The logits are computed explicitly rather than through SDPA: Uni-Mol feeds them
        to the next layer, and SDPA does not return them (recomputing them would double the work).

        The attention core (logits, softmax, weighted sum) runs in fp32 even under autocast: the logits
        accumulate over the layers as the pair representation, and with 8-wide heads it is a small
        share of the work. ``buffers`` (inference only: ``bias`` is then overwritten) lends its tensors to
        every layer in turn: allocating the (B * heads, N, N) tensors afresh per layer (page faults on
        new memory) cost about 10% of the forward pass.
        """
        b, n, h = packing.batch, packing.length, self.heads
        t, d = x.shape
        qkv = self.in_proj(x)
        qkv[:, :d] *= self.scale  # q * scale before q k^T, as the reference does (bit parity)
        # real rows into a padded (B*N, 3D) buffer, then one copy into the heads-first layout bmm reads
        # (faster than scattering into the permuted layout directly); padded rows are never written: 0
        rows = _lend(buffers, "rows", lambda: x.new_zeros(b * n, 3 * d, dtype=torch.float32))
        rows.index_copy_(0, packing.index, qkv.float())
        layout = rows.view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
        heads = _lend(buffers, "heads", lambda: rows.new_empty(layout.shape)).copy_(layout)
        q, k, v = heads.view(3, b * h, n, d // h).unbind(0)
        with torch.autocast(x.device.type, enabled=False):
            if buffers is None:
                logits = torch.baddbmm(bias, q, k.transpose(1, 2))  # q k^T + bias in one pass
                probs = torch.softmax(logits, dim=-1)
            else:  # the bias is dead once the logits exist: they overwrite it (baddbmm with out= would
                # first copy the bias into out), and the probabilities go to one buffer for all layers
                logits = bias.baddbmm_(q, k.transpose(1, 2))
                probs = torch.softmax(logits, dim=-1, out=_lend(buffers, "probs", lambda: torch.empty_like(bias)))
            if self.training and self.attention_dropout:
                probs = nn.functional.dropout(probs, self.attention_dropout)
            out = torch.bmm(probs, v).view(b, h, n, d // h).transpose(1, 2).reshape(b * n, d)
        return self.out_proj(out.index_select(0, packing.index).to(qkv.dtype)), logits


class Layer(nn.Module):
    """Pre-LayerNorm transformer layer with pair-biased attention."""

    def __init__(self, dim: int, ffn: int, heads: int, dropout: float = 0.0, attention_dropout: float = 0.0):
        super().__init__()
        self.self_attn = SelfAttention(dim, heads, attention_dropout)
        self.self_attn_layer_norm, self.final_layer_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, bias: Tensor, packing: Packing, buffers: dict | None = None) -> tuple[Tensor, Tensor]:
        attended, logits = self.self_attn(self.self_attn_layer_norm(x), bias, packing, buffers)
        x = x + self.dropout(attended)
        return x + self.dropout(self.fc2(nn.functional.gelu(self.fc1(self.final_layer_norm(x))))), logits


class PairEncoder(nn.Module):
    def __init__(self, layers: int, dim: int, ffn: int, heads: int, dropouts: tuple[float, float, float] = (0, 0, 0)):
        super().__init__()
        dropout, attention_dropout, emb_dropout = dropouts
        self.emb_layer_norm, self.final_layer_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.final_head_layer_norm = nn.LayerNorm(heads)  # used by pretraining heads only; in the checkpoint
        self.final_head_layer_norm.requires_grad_(False)  # so it gets no gradient, which DDP would reject
        self.layers = nn.ModuleList(Layer(dim, ffn, heads, dropout, attention_dropout) for _ in range(layers))
        self.emb_dropout = nn.Dropout(emb_dropout)

    def forward(self, x: Tensor, bias: Tensor, packing: Packing) -> Tensor:
        """x: (T, D) embeddings of the real positions; bias: (B * heads, N, N), -inf at padded keys."""
        x = self.emb_dropout(self.emb_layer_norm(x))
        buffers = {} if _no_graph(x, bias, *self.parameters()) else None
        for layer in self.layers:
            x, bias = layer(x, bias, packing, buffers)
        return self.final_layer_norm(x)


class UniMolEncoder(Encoder):
    def __init__(self, config: UniMolConfig):
        super().__init__()
        check_choice("encoder.preset", config.preset, PRESETS)
        check_choice("encoder.hydrogens", config.hydrogens, HYDROGEN_POLICIES)
        shape = PRESETS[config.preset]
        dim, heads = shape.embed_dim, shape.heads
        self.keep_hydrogens, self.output_dim, self.heads = config.hydrogens == "all_h", dim, heads
        vocab = len(DICTIONARY)
        self.embed_tokens = nn.Embedding(vocab, dim, padding_idx=PAD)
        self.gbf = GaussianLayer(shape.kernels, vocab * vocab)
        self.gbf_proj = PairHead(shape.kernels, heads)
        dropouts = (config.dropout, config.attention_dropout, config.emb_dropout)
        self.encoder = PairEncoder(shape.layers, dim, shape.ffn_dim, heads, dropouts)
        self.pad_to_multiple = config.pad_to_multiple
        if config.checkpoint:
            state = read_state_dict(config.checkpoint, trust=config.trust_checkpoint)
            load_strict(self, state, config.checkpoint, ignore_prefixes=PRETRAINING_HEADS)

    def featurize(self, atomic_numbers: np.ndarray, positions: np.ndarray) -> dict[str, Tensor]:
        """Tokens [CLS] atoms [SEP], pair distances and edge types, after the hydrogen policy and cropping.

        Above 256 atoms, the atoms closest to the centroid are kept (deterministic, unlike the
        reference's random crop); order among the kept atoms is preserved.
        """
        z = np.asarray(atomic_numbers, dtype=np.int64)
        pos = np.asarray(positions, dtype=np.float64)
        if z.min(initial=1) < 1 or z.max(initial=1) >= len(TOKEN_OF_Z):
            raise MolbridgeError(
                f"Uni-Mol featurize: atomic numbers must be 1..{len(TOKEN_OF_Z) - 1}; got {sorted(set(z.tolist()))}"
            )
        if not self.keep_hydrogens:
            z, pos = z[z != 1], pos[z != 1]
        if len(z) > MAX_ATOMS:
            nearest = np.argsort(np.linalg.norm(pos - pos.mean(0), axis=1), kind="stable")[:MAX_ATOMS]
            keep = np.sort(nearest)
            z, pos = z[keep], pos[keep]
        pos = np.concatenate([np.zeros((1, 3)), pos - pos.mean(0) if len(pos) else pos, np.zeros((1, 3))])
        tokens = torch.from_numpy(np.concatenate([[CLS], TOKEN_OF_Z[z], [SEP]]))
        # exact pairwise differences (torch.cdist's matmul shortcut loses precision above 25 atoms)
        dist = torch.as_tensor(np.linalg.norm(pos[:, None] - pos[None, :], axis=-1), dtype=torch.float32)
        return {
            "src_tokens": tokens,
            "src_distance": dist,
            "src_edge_type": tokens[:, None] * len(DICTIONARY) + tokens[None, :],
        }

    def collate(self, features: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        longest, multiple = max(len(f["src_tokens"]) for f in features), self.pad_to_multiple
        n = -(-longest // multiple) * multiple  # encoder.pad_to_multiple (the reference: 8)

        def pad2(t: Tensor) -> Tensor:
            return nn.functional.pad(t, (0, n - t.shape[1], 0, n - t.shape[0]))

        def pad1(t: Tensor) -> Tensor:
            return nn.functional.pad(t, (0, n - t.shape[0]))

        return {
            "src_tokens": torch.stack([pad1(f["src_tokens"]) for f in features]),
            "src_distance": torch.stack([pad2(f["src_distance"]) for f in features]),
            "src_edge_type": torch.stack([pad2(f["src_edge_type"]) for f in features]),
        }

    def forward(self, inputs: Mapping[str, Tensor]) -> EncoderOutput:
        tokens = inputs["src_tokens"]
        padding = tokens == PAD
        packing = Packing.of(padding)
        b, n = tokens.shape
        # the pair bias is computed for pairs of real atoms only; padded keys get -inf, and the pairs of a
        # padded query with real keys 0 (finite, so padded rows stay finite; no real output reads them)
        pairs = (~padding[:, :, None] & ~padding[:, None, :]).nonzero(as_tuple=True)
        gaussians = self.gbf(inputs["src_distance"][pairs], inputs["src_edge_type"][pairs])
        pair = self.gbf_proj(gaussians.to(self.gbf.means.weight.dtype))  # (P, heads)
        bias = torch.zeros(b, self.heads, n, n, device=tokens.device).masked_fill_(
            padding[:, None, None, :], float("-inf")
        )
        bias = bias.permute(0, 2, 3, 1).index_put_(pairs, pair.float()).permute(0, 3, 1, 2)
        x = self.embed_tokens(tokens.flatten()[packing.index])
        x = packing.pad(self.encoder(x, bias.reshape(b * self.heads, n, n), packing))
        return EncoderOutput(atom_embeddings=x, padding_mask=padding, pooled=x[:, 0])


@hookimpl
def molbridge_register_encoders(register):
    register(
        "unimol",
        UniMolEncoder,
        UniMolConfig,
        description="Uni-Mol 3D transformer with pair bias (Zhou et al. 2023); loads the released weights",
    )
