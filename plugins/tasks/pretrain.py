"""The ``pretrain`` task: Uni-Mol-style self-supervised pre-training of an encoder on any prepared dataset's conformers.

Uni-Mol (Zhou et al., ICLR 2023) pre-trains with masked atom types, coordinate denoising and pair-distance
prediction. Here the same three objectives run through the one training loop on any encoder with a
:class:`~molbridge.plugins.tasks.pretrain_views.EncoderView` (Uni-Mol all three; SchNet, which has no [MASK]
atom, the two geometric ones), so stage 1 can start from a pre-trained encoder by ``train.init_from``. The
model is the encoder (``encoder.*``, as stage 1 names it) plus task-owned heads (``pretrain_heads.*``).

Per molecule (one conformer: a seeded draw per epoch in training, conformer 0 in evaluation):

1. **Noise** (item level, any encoder): every atom's position gets isotropic Gaussian noise of ``noise_std`` Å
   per coordinate. The encoder sees the noisy conformer.
2. **Masked atoms** (encoders that can represent a masked atom): ``int(mask_rate * n + u)`` of the n atom
   tokens (u ~ U(0, 1)) are chosen; 90% of them become [MASK], 5% a random element, 5% stay (Uni-Mol's
   MaskPointsDataset). Loss: cross-entropy of the original token at the chosen atoms, mean over them.
3. **Denoising**: for every pair of atoms (i < j) a head reads the two atom embeddings and the noisy distance
   d~_ij and predicts the noise's effect on it, target (d_ij - d~_ij) / noise_std, where d is the clean
   distance. Loss: smooth L1 (beta 1), mean over pairs. Reported in Å: ``denoise_mae`` = |d~ + prediction - d|
   against ``baseline_denoise_mae`` = |d~ - d| (leaving the noisy distance as it is).
4. **Pair distances**: for every pair (i < j) a head reads only the two atom embeddings and predicts the clean
   distance, target (d_ij - 6.3126) / 3.3899 (Uni-Mol's normalisation). Loss: smooth L1 (beta 1), mean over
   pairs; ``dist_mae`` in Å.

Loss = ``mask_weight`` * (2) + ``denoise_weight`` * (3) + ``distance_weight`` * (4). Distances d and d~ are
read from the encoder's own featurisation of the clean and of the noisy conformer, so they are aligned with
the encoder's output rows ([CLS]/[SEP] excluded, hydrogens as the encoder keeps them). Noise and masks are
seeded by (seed, epoch, molecule): identical after a resume, and fixed per molecule in evaluation.

Differences from Uni-Mol, on purpose: noise on every atom, Gaussian (Uni-Mol: uniform ±1 Å on the masked atoms
only), so that an encoder without masking has something to denoise; the geometric heads read pairs of atom
embeddings instead of Uni-Mol's pair representation, which molbridge's encoders do not expose, and predict
distances instead of coordinates (invariant targets need no equivariant head); no x-norm or pair-norm
regularisers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from molbridge.core import batch as keys
from molbridge.core import distributed, hookimpl
from molbridge.core.contracts import Components, StepOutput, Task
from molbridge.core.data import MoleculeDataset
from molbridge.core.errors import MolbridgeError
from molbridge.core.recipe import bounded
from molbridge.plugins.tasks.pretrain_views import EncoderView, view_for

SPLITS = ("train", "valid", "test")
#: Uni-Mol's pair-distance normalisation (mean and std of its pre-training set's distances, in Å).
DIST_MEAN, DIST_STD = 6.312581655060595, 3.3899264663911888
#: Batch key of the pre-training targets (a dict of tensors).
TARGETS = "pretrain_targets"
CLEAN_POSITIONS = "clean_positions"
#: Item key of the per-item seed (seed, epoch, dataset row) that draws its noise and its mask.
DRAW = "pretrain_draw"
_NOISE, _MASK = 0, 1  # salts of the two draws


@dataclass
class PretrainConfig:
    name: str = "pretrain"
    noise_std: float = bounded(0.2, ge=0)
    """Gaussian noise on every atom's coordinates, in Å (standard deviation per coordinate); 0: no noise (then
    ``denoise_weight`` must be 0)."""
    mask_rate: float = bounded(0.15, ge=0, lt=1)
    """Share of atom tokens chosen for masking (Uni-Mol: 0.15), on encoders that can mask an atom."""
    mask_weight: float = bounded(1.0, ge=0)
    """Weight of the masked-atom-type loss; ignored (and reported so) for an encoder that cannot mask an atom."""
    denoise_weight: float = bounded(1.0, ge=0)
    """Weight of the denoising loss (the noise's effect on each pair distance, from the noisy input)."""
    distance_weight: float = bounded(1.0, ge=0)
    """Weight of the pair-distance loss (each clean pair distance from the two atom embeddings alone)."""
    head_dim: int = bounded(64, ge=1)
    """Hidden width of the pair heads (and of nothing else: the token head has the encoder's width)."""

    def problems(self) -> list[str]:
        found = []
        if not (self.mask_weight or self.denoise_weight or self.distance_weight):
            found.append("task: mask_weight, denoise_weight and distance_weight are all 0: nothing to train")
        if self.denoise_weight and not self.noise_std:
            found.append(f"task.denoise_weight={self.denoise_weight} needs task.noise_std > 0 (nothing to denoise)")
        if self.mask_weight and not self.mask_rate:
            found.append(f"task.mask_weight={self.mask_weight} needs task.mask_rate > 0 (nothing is masked)")
        return found


# --- data ------------------------------------------------------------------------------------------------------


def _rng(draw: tuple[int, int, int], salt: int) -> np.random.Generator:
    seed, epoch, row = draw
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, row, salt])


class NoisyConformers(Dataset):
    """A split's items with seeded Gaussian noise on the positions (``POSITIONS`` noisy, ``clean_positions`` clean).

    The noise is drawn from (seed, epoch, dataset row), as the conformer is: independent of workers and batch
    order, the same after a resume, and fixed per molecule for evaluation splits (their epoch stays 0).
    """

    def __init__(self, base: MoleculeDataset, noise_std: float, seed: int):
        self.base, self.noise_std, self.seed = base, noise_std, seed

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def sizes(self):
        return self.base.sizes()

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.base[i]
        draw = (self.seed, self.base.epoch, int(self.base.indices[i]))
        clean = np.asarray(item[keys.POSITIONS], dtype=np.float32)
        noise = _rng(draw, _NOISE).normal(0.0, self.noise_std, clean.shape) if self.noise_std else 0.0
        return item | {keys.POSITIONS: (clean + noise).astype(np.float32), CLEAN_POSITIONS: clean, DRAW: draw}


# --- model -----------------------------------------------------------------------------------------------------


def gaussian_basis(d: Tensor, kernels: int = 32, cutoff: float = 12.0) -> Tensor:
    """(..., K) Gaussians of distances on K centres from 0 to ``cutoff`` Å, width the centres' spacing."""
    centres = torch.linspace(0.0, cutoff, kernels, device=d.device, dtype=d.dtype)
    width = cutoff / (kernels - 1)
    return torch.exp(-0.5 * ((d.unsqueeze(-1) - centres) / width) ** 2)


class PairHead(nn.Module):
    """A scalar per atom pair, symmetric in (i, j), from the two atom embeddings (and a distance basis if given)."""

    def __init__(self, dim: int, hidden: int, kernels: int = 0):
        super().__init__()
        self.atom = nn.Linear(dim, hidden)
        self.pair = nn.Linear(2 * hidden, hidden)
        self.distance = nn.Linear(kernels, hidden) if kernels else None
        self.hidden, self.out = nn.Linear(hidden, hidden), nn.Linear(hidden, 1)

    def forward(self, h: Tensor, pairs: tuple[Tensor, Tensor, Tensor], distance: Tensor | None = None) -> Tensor:
        b, i, j = pairs
        a = self.atom(h)
        ai, aj = a[b, i], a[b, j]
        x = self.pair(torch.cat([ai + aj, ai * aj], dim=-1))
        if self.distance is not None:
            x = x + self.distance(gaussian_basis(distance, self.distance.in_features).to(x.dtype))
        return self.out(F.gelu(self.hidden(F.gelu(x)))).squeeze(-1)


class TokenHead(nn.Module):
    """Dense -> GELU -> LayerNorm -> logits over the atom vocabulary (the shape of Uni-Mol's masked-LM head)."""

    def __init__(self, dim: int, vocab: int):
        super().__init__()
        self.dense, self.norm, self.out = nn.Linear(dim, dim), nn.LayerNorm(dim), nn.Linear(dim, vocab)

    def forward(self, h: Tensor) -> Tensor:
        return self.out(self.norm(F.gelu(self.dense(h))))


def objectives(config: PretrainConfig, can_mask: bool) -> dict[str, float]:
    """The objectives that train, by name, with their weights (masking only where the encoder can mask)."""
    weights = {"mask": config.mask_weight if can_mask else 0.0}
    weights |= {"denoise": config.denoise_weight, "distance": config.distance_weight}
    return {name: float(w) for name, w in weights.items() if w}


def losses(sums: Mapping[str, Tensor], weights: Mapping[str, float]) -> dict[str, Tensor]:
    """``loss`` (the weighted sum of the objectives' means) and each objective's mean (``mask_loss`` ...) from the
    sums and counts :meth:`PretrainModel.forward` returns (of one batch, or summed over a split)."""
    count = {"mask": "mask_n", "denoise": "pair_n", "distance": "pair_n"}
    terms = {f"{name}_loss": sums[name] / sums[count[name]].clamp(min=1) for name in weights}
    terms["loss"] = sum(weights[name] * terms[f"{name}_loss"] for name in weights)
    return terms


class PretrainModel(nn.Module):
    """The encoder (``encoder.*``, the names stage 1 loads) and the heads of the active objectives
    (``pretrain_heads.{mask,denoise,distance}.*``). ``forward(batch)`` returns loss sums and counts per objective
    (:func:`losses` turns them into the weighted loss), so evaluation can sum them over a whole split."""

    def __init__(self, encoder: nn.Module, config: PretrainConfig, vocab_size: int):
        super().__init__()
        self.encoder = encoder
        self.weights = objectives(config, vocab_size > 0)
        self.noise_std = config.noise_std
        dim, heads = encoder.output_dim, nn.ModuleDict()
        if "mask" in self.weights:
            heads["mask"] = TokenHead(dim, vocab_size)
        if "denoise" in self.weights:
            heads["denoise"] = PairHead(dim, config.head_dim, kernels=32)
        if "distance" in self.weights:
            heads["distance"] = PairHead(dim, config.head_dim)
        self.pretrain_heads = heads

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        h = self.encoder(batch[keys.ENCODER_INPUT]).atom_embeddings
        targets = batch[TARGETS]
        sums: dict[str, Tensor] = {}
        if "mask" in self.weights:
            chosen = targets["tokens"] >= 0
            logits = self.pretrain_heads["mask"](h[chosen]).float()
            original = targets["tokens"][chosen]
            sums["mask"] = F.cross_entropy(logits, original, reduction="sum")
            sums["mask_n"] = chosen.sum()
            sums["mask_hit"] = (logits.argmax(-1) == original).sum()
        if "denoise" in self.weights or "distance" in self.weights:
            pairs = targets["pairs"].nonzero(as_tuple=True)
            clean, noisy = targets["clean_distance"][pairs], targets["noisy_distance"][pairs]
            sums["pair_n"] = torch.tensor(len(clean), device=h.device)
        if "denoise" in self.weights:
            predicted = self.pretrain_heads["denoise"](h, pairs, noisy).float()
            sums["denoise"] = F.smooth_l1_loss(predicted, (clean - noisy) / self.noise_std, reduction="sum")
            sums["denoise_abs"] = (noisy + predicted.detach() * self.noise_std - clean).abs().sum()
            sums["noisy_abs"] = (noisy - clean).abs().sum()
        if "distance" in self.weights:
            predicted = self.pretrain_heads["distance"](h, pairs).float()
            sums["distance"] = F.smooth_l1_loss(predicted, (clean - DIST_MEAN) / DIST_STD, reduction="sum")
            sums["distance_abs"] = (predicted.detach() * DIST_STD + DIST_MEAN - clean).abs().sum()
        return sums


# --- the task --------------------------------------------------------------------------------------------------


class PretrainTask(Task):
    """Self-supervised encoder pre-training (masked atoms, denoising, pair distances) on a dataset's conformers."""

    monitor = ("loss", "min")
    report_metrics = ("test/loss", "test/mask_acc", "test/denoise_mae", "test/dist_mae")

    def __init__(self, config: PretrainConfig, recipe, registry=None):
        self.config, self.recipe = config, recipe
        self._splits: dict[str, NoisyConformers] | None = None
        self.encoder: nn.Module | None = None
        self.view: EncoderView | None = None
        self.weights: dict[str, float] = {}

    @property
    def splits(self) -> dict[str, NoisyConformers]:
        if self._splits is None:
            data = self.recipe.data
            self._splits = {
                split: NoisyConformers(
                    MoleculeDataset.from_split(
                        data.name,
                        split,
                        data.split,
                        seed=self.recipe.seed,
                        augment=data.augment and split == "train",
                        limit=data.limit if split == "train" else data.eval_limit,
                    ),
                    self.config.noise_std,
                    self.recipe.seed,
                )
                for split in SPLITS
            }
        return self._splits

    def datasets(self):
        return self.splits

    # -- model --------------------------------------------------------------------------------------------------
    def build_model(self, components: Components) -> PretrainModel:
        if components.encoder is None:
            raise MolbridgeError("pretrain needs an encoder section in the recipe")
        if components.projector is not None or components.llm is not None:
            raise MolbridgeError("pretrain trains an encoder alone: remove the projector and llm sections")
        self.encoder = components.encoder
        self.view = view_for(self.encoder, self.recipe.encoder.name)
        model = self.assemble(self.config, self.encoder, None, None, view=self.view)
        self.weights = model.weights
        return model

    @classmethod
    def assemble(cls, config, encoder, projector, llm, view: EncoderView | None = None) -> PretrainModel:
        """The encoder with the heads of the objectives it supports."""
        view = view or view_for(encoder)
        return PretrainModel(encoder, config, view.vocab_size)

    # -- batches ------------------------------------------------------------------------------------------------
    def collate(self, samples):
        """Noisy (and masked) encoder inputs; targets read from the encoder's featurisation of the clean conformer."""
        encoder, view, config = self.encoder, self.view, self.config
        noisy = [encoder.featurize_item(s) for s in samples]
        tokens = None
        if "mask" in self.weights:
            masked = [view.mask(f, config.mask_rate, _rng(s[DRAW], _MASK)) for f, s in zip(noisy, samples, strict=True)]
            noisy, tokens = [f for f, _ in masked], [t for _, t in masked]
        inputs = encoder.collate(noisy)
        atoms = view.atoms(inputs)
        targets: dict[str, Tensor] = {}
        if tokens is not None:  # (B, N) as the encoder pads: -100 except at the chosen atoms
            padded = nn.utils.rnn.pad_sequence(tokens, batch_first=True, padding_value=-100)
            targets["tokens"] = F.pad(padded, (0, atoms.shape[1] - padded.shape[1]), value=-100)
        if "denoise" in self.weights or "distance" in self.weights:
            clean = encoder.collate([encoder.featurize_item(s | {keys.POSITIONS: s[CLEAN_POSITIONS]}) for s in samples])
            if not torch.equal(atoms, view.atoms(clean)):
                raise MolbridgeError("pretrain: the clean and noisy featurisations of a batch hold different atoms")
            usable = torch.tensor([view.alignable(s[keys.ATOMIC_NUMBERS]) for s in samples])
            upper = torch.ones(atoms.shape[1], atoms.shape[1], dtype=torch.bool).triu(1)  # each pair once: i < j
            targets["pairs"] = atoms[:, :, None] & atoms[:, None, :] & upper & usable[:, None, None]
            targets["clean_distance"], targets["noisy_distance"] = view.distances(clean), view.distances(inputs)
        return {keys.ENCODER_INPUT: inputs, TARGETS: targets, keys.MOL_ID: [s[keys.MOL_ID] for s in samples]}

    def training_step(self, model, batch) -> StepOutput:
        sums = model(batch)
        terms = losses(sums, self.weights)
        logs = {name: value.detach() for name, value in terms.items() if name != "loss"}
        if "mask_hit" in sums:
            logs["mask_acc"] = (sums["mask_hit"] / sums["mask_n"].clamp(min=1)).detach().float()
        return StepOutput(terms["loss"], logs)

    # -- evaluation ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model, fabric, split: str) -> dict[str, float]:
        """The objectives' losses over the whole split (fixed noise and masks per molecule, conformer 0), the
        weighted ``loss``, and in Å the denoised and predicted distance errors, next to baselines."""
        was_training = model.training
        model.eval()
        data = self.splits[split]
        mine = []
        for rows in distributed.shard(distributed.batches(len(data), self.recipe.data.eval_batch_size)):
            batch = fabric.to_device(self.collate([data[i] for i in rows]))
            sums = {k: v.double().cpu() for k, v in model(batch).items()}
            if "tokens" in batch[TARGETS]:
                original = batch[TARGETS]["tokens"]
                sums["token_counts"] = torch.bincount(original[original >= 0].cpu(), minlength=self.view.vocab_size)
            mine.append(sums)
        parts = distributed.gather(mine)
        total = {k: sum(p[k] for p in parts) for k in parts[0]} if parts else {}
        model.train(was_training)
        return self._metrics(total)

    def _metrics(self, total: Mapping[str, Tensor]) -> dict[str, float]:
        terms = losses(total, self.weights)
        metrics = {name: float(value) for name, value in terms.items()}
        if "mask" in self.weights:
            n = float(total["mask_n"].clamp(min=1))
            metrics["mask_acc"] = float(total["mask_hit"]) / n
            metrics["baseline_mask_acc"] = float(total["token_counts"].max()) / n  # always the commonest element
        pairs = float(total["pair_n"].clamp(min=1)) if "pair_n" in total else 1.0
        if "denoise" in self.weights:
            metrics["denoise_mae"] = float(total["denoise_abs"]) / pairs
            metrics["baseline_denoise_mae"] = float(total["noisy_abs"]) / pairs  # the noisy distance left as it is
        if "distance" in self.weights:
            metrics["dist_mae"] = float(total["distance_abs"]) / pairs
        return metrics

    def describe(self) -> dict[str, Any]:
        skipped = []
        if self.config.mask_weight and "mask" not in self.weights and self.weights:
            skipped.append(f"mask (encoder '{self.recipe.encoder.name}' cannot represent a masked atom)")
        return {
            "dataset": self.recipe.data.name,
            "split": self.recipe.data.split,
            "sizes": {k: len(v) for k, v in self.splits.items()},
            "objectives": self.weights,
            "skipped": skipped,
            "noise": f"Gaussian, {self.config.noise_std} Å per coordinate on every atom, seeded by (seed, epoch, "
            "molecule)",
            "protocol": "losses summed over the split, conformer 0, noise and masks fixed per molecule; "
            "baseline_denoise_mae: the noisy distance left as it is; baseline_mask_acc: the commonest element",
        }


@hookimpl
def molbridge_register_tasks(register):
    register(
        "pretrain",
        PretrainTask,
        PretrainConfig,
        description="encoder pre-training: masked atoms, coordinate denoising, pair distances (Uni-Mol objectives)",
    )
