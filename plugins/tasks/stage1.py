"""Stage-1 losses (3D-MoLM / BLIP-2): molecule-text contrastive, matching with hard negatives, captioning.

The loss functions take the gathered features and the rank explicitly, so their maths is tested
without launching processes; :func:`gather` supplies them under DDP.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from molbridge.core import batch as keys
from molbridge.core.contracts import TextSide
from molbridge.core.errors import RecipeError
from molbridge.core.recipe import bounded
from molbridge.plugins.projectors.stage1 import PrefixTextSide, TextTowerConfig


@dataclass
class Stage1Options:
    """Loss weights and temperature (the ``task`` section of a stage-1 recipe holds these keys)."""

    contrastive_weight: float = bounded(1.0, ge=0)
    """Weight of the molecule-text contrastive loss (BLIP-2's ITC)."""
    matching_weight: float = bounded(1.0, ge=0)
    """Weight of the molecule-text matching loss (ITM, hard negatives from the contrastive scores); 0 skips it."""
    captioning_weight: float = bounded(1.0, ge=0)
    """Weight of the molecule-grounded text generation loss (ITG); 0 skips it."""
    temperature: float = bounded(0.1, gt=0)
    """Contrastive temperature (3D-MoLM: 0.1 fixed; BLIP-2 learns it from 0.07)."""
    learn_temperature: bool = False
    """Train the contrastive temperature, starting from ``temperature``."""
    lock_text_tower: bool = False
    """Freeze the BERT for text and encode each text once, before training; the text projection still
    trains (LiT-style locked tuning). Contrastive loss only: matching and captioning run the text tower."""
    captioning_label_smoothing: float = bounded(0.0, ge=0, lt=1)
    """Label smoothing of the Q-Former captioning loss (3D-MoLM, through LAVIS's BertLMHeadModel: 0.1)."""
    captioning_head_init: str = field(default="fresh", metadata={"choices": ("fresh", "pretrained")})
    """The captioning (LM) head's start: ``fresh`` (BERT's initialisation) or ``pretrained`` (the BERT
    checkpoint's masked-LM head, as LAVIS's BertLMHeadModel.from_pretrained loads it; the checkpoint must
    hold ``cls.predictions.*``). A previous stage's weights (``train.init_from``) replace either."""
    text_tower: TextTowerConfig = field(default_factory=TextTowerConfig)
    """The text side built around a projector that has none of its own (any projector but qformer and linear,
    which bring theirs and ignore this section): a BERT text tower reading the soft tokens as a prefix."""


def text_side_for(projector: nn.Module, options: Stage1Options) -> TextSide:
    """The projector itself when it implements :class:`TextSide`, else the task's text tower around it."""
    return projector if isinstance(projector, TextSide) else PrefixTextSide(projector, options.text_tower)


#: Batch key of the cached (B, H) text-tower summaries when the text tower is locked.
CACHED_TEXT = "cached_text"


def gather(x: Tensor) -> Tensor:
    """All ranks' ``x`` concatenated along dim 0, gradients flowing back to every rank's shard.

    ``torch.distributed.nn.functional.all_gather`` is autograd-aware: its backward sums each rank's
    gradient for the shard, which with DDP's averaging gives the gradient of the global mean loss.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def similarity(mol: Tensor, text: Tensor) -> Tensor:
    """(B_mol, B_text): the best of the molecule's P feature vectors against each text, (B, P, E) x (B, E)."""
    return torch.einsum("mpe,te->mtp", mol, text).amax(dim=-1)


def contrastive_loss(
    mol: Tensor, text: Tensor, mol_all: Tensor, text_all: Tensor, rank: int, temperature: Tensor | float
) -> tuple[Tensor, Tensor, Tensor]:
    """Symmetric InfoNCE of the local batch against the gathered one.

    mol: (B, P, E), text: (B, E) local; ``*_all``: every rank's, concatenated (rank r at r*B ...).
    Returns (loss, m2t similarities (B, B_all), t2m similarities (B, B_all)), before temperature.
    """
    sim_m2t = similarity(mol, text_all)
    sim_t2m = similarity(mol_all, text).T
    targets = torch.arange(mol.shape[0], device=mol.device) + rank * mol.shape[0]
    loss = (
        F.cross_entropy(sim_m2t.float() / temperature, targets)
        + F.cross_entropy(sim_t2m.float() / temperature, targets)
    ) / 2
    return loss, sim_m2t, sim_t2m


def hard_negatives(sim: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """For each row i of a square (B, B) similarity, one column j != i drawn with p ~ softmax(sim[i]).

    One ``torch.multinomial`` over the whole batch: no Python loop, no host synchronisation.
    """
    eye = torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
    weights = torch.softmax(sim.float().masked_fill(eye, float("-inf")), dim=1)
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def matching_loss(text_side: TextSide, encoded, ids: Tensor, mask: Tensor, sim_local: Tensor) -> Tensor:
    """Binary matching on [positives ; (mol, hard-negative text) ; (hard-negative mol, text)].

    Hard negatives come from the local batch (drawing them from other ranks would need their encoder
    outputs, which differ in length per rank).
    """
    with torch.no_grad():
        neg_text = hard_negatives(sim_local)
        neg_mol = hard_negatives(sim_local.T)
    mols = _cat_encoded(
        encoded,
        torch.cat(
            [
                torch.arange(len(neg_mol), device=neg_mol.device),
                torch.arange(len(neg_mol), device=neg_mol.device),
                neg_mol,
            ]
        ),
    )
    texts = torch.cat(
        [torch.arange(len(neg_text), device=ids.device), neg_text, torch.arange(len(neg_text), device=ids.device)]
    )
    logits = text_side.match_logits(mols, ids[texts], mask[texts])
    labels = torch.zeros(len(texts), dtype=torch.long, device=ids.device)
    labels[: len(neg_text)] = 1
    return F.cross_entropy(logits.float(), labels)


def _cat_encoded(encoded, index: Tensor):
    return type(encoded)(encoded.atom_embeddings[index], encoded.padding_mask[index], encoded.pooled[index])


class Stage1Model(nn.Module):
    """Encoder + projector + text side with the stage-1 losses; ``forward(batch)`` returns the weighted loss
    and its terms.

    The text side is the projector itself (``qformer``, ``linear``) or the task's around it (registered as
    ``text_side``; the projector's weights keep their ``projector.`` names). Heads whose loss is off are frozen
    (they would get no gradient, which DDP rejects), and so is the text tower when it is locked.
    """

    def __init__(self, encoder: nn.Module, projector: nn.Module, text_side: TextSide, options: Stage1Options):
        super().__init__()
        self.encoder, self.projector, self.options = encoder, projector, options
        if text_side is not projector:
            self.text_side = text_side
        text_side.freeze_heads(matching=bool(options.matching_weight), captioning=bool(options.captioning_weight))
        if options.lock_text_tower:
            for _, parameter in text_side.text_tower_parameters():
                parameter.requires_grad_(False)
        log_temp = torch.tensor(float(options.temperature)).log()
        if options.learn_temperature:
            self.log_temperature = nn.Parameter(log_temp)
        else:
            self.register_buffer("log_temperature", log_temp)

    @property
    def text(self) -> TextSide:
        """The text side: ``text_side`` when the task built one, else the projector (not registered twice)."""
        return self._modules.get("text_side", self.projector)

    @property
    def temperature(self) -> Tensor:
        return self.log_temperature.exp().clamp(1e-3, 0.5)  # BLIP-2 clamps its learned temperature too

    def forward(self, batch: dict) -> dict[str, Tensor]:
        options, text_side = self.options, self.text
        encoded = self.encoder(batch[keys.ENCODER_INPUT])
        ids, mask = batch.get(keys.TEXT_INPUT_IDS), batch.get(keys.TEXT_ATTENTION_MASK)  # absent with a locked tower
        mol = text_side.molecule_features(encoded)
        text = (
            text_side.project_text(batch[CACHED_TEXT]) if CACHED_TEXT in batch else text_side.text_features(ids, mask)
        )
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        contrastive, sim_m2t, _ = contrastive_loss(mol, text, gather(mol), gather(text), rank, self.temperature)
        terms = {"contrastive": contrastive}
        if options.matching_weight:
            local = sim_m2t[:, rank * len(mol) : (rank + 1) * len(mol)].detach()
            terms["matching"] = matching_loss(text_side, encoded, ids, mask, local / self.temperature.detach())
        if options.captioning_weight:
            smoothing = getattr(options, "captioning_label_smoothing", 0.0)
            extra = {"label_smoothing": smoothing} if smoothing else {}  # text sides without it still work
            terms["captioning"] = text_side.caption_loss(encoded, ids, mask, **extra)
        weights = {
            "contrastive": options.contrastive_weight,
            "matching": options.matching_weight,
            "captioning": options.captioning_weight,
        }
        terms["loss"] = sum(weights[name] * value for name, value in terms.items())
        return terms


def check_options(options: Stage1Options, batch_size: int, where: str) -> None:
    """Reject option combinations that cannot train, naming the recipe keys."""
    problems = []
    if options.matching_weight and batch_size < 2:
        problems.append("task.matching_weight > 0 needs data.batch_size >= 2 (hard negatives come from the batch)")
    if options.temperature <= 0:
        problems.append(f"task.temperature must be positive, got {options.temperature}")
    if not any((options.contrastive_weight, options.matching_weight, options.captioning_weight)):
        problems.append("all stage-1 loss weights are 0: nothing to train")
    if options.lock_text_tower and (options.matching_weight or options.captioning_weight):
        problems.append(
            "task.lock_text_tower=true trains the contrastive loss only: set task.matching_weight=0 "
            "and task.captioning_weight=0, or task.lock_text_tower=false"
        )
    if problems:
        raise RecipeError(where, problems)
