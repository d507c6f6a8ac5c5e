"""What the ``pretrain`` task needs to know about an encoder's featurised inputs: which positions are atoms,
their pair distances, and (optionally) how to mask an atom's type.

Encoders lay out their inputs differently: Uni-Mol removes hydrogens (``no_h``), adds [CLS]/[SEP] at the origin
and stores the pair-distance matrix of its positions (``src_distance``); SchNet keeps its (maybe hydrogen-free)
atoms and their positions. Pre-training targets are therefore read from the encoder's **own** featurisation of
the clean and of the noisy conformer (the same atoms in the same order, since which atoms an encoder keeps
depends on the elements only), never from the dataset's atom list, so they line up with the rows of
``EncoderOutput.atom_embeddings`` whatever the encoder drops or adds.

An encoder outside molbridge opts in by defining ``pretrain_view()`` returning an object with the members of
:class:`EncoderView` (see :func:`view_for`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from molbridge.core.errors import MolbridgeError

#: Of the atoms chosen for masking, the share given a random element instead of [MASK], and the share left as
#: they are (Uni-Mol's ``--random-token-prob`` and ``--leave-unmasked-prob``, both 0.05); the rest get [MASK].
RANDOM_TOKEN_SHARE = 0.05
UNCHANGED_SHARE = 0.05


class EncoderView:
    """The pre-training view of one encoder's collated inputs (the base class is the protocol)."""

    #: Vocabulary of the atom types the masked-atom head predicts; 0 when the encoder cannot mask an atom.
    vocab_size: int = 0

    def atoms(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """(B, N) bool: positions of the encoder's output that hold an atom (not padding, not a special token)."""
        raise NotImplementedError

    def distances(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """(B, N, N) float32 pair distances (angstrom) of the positions the encoder was given."""
        raise NotImplementedError

    def alignable(self, atomic_numbers: np.ndarray) -> bool:
        """Whether featurising two conformers of this molecule keeps the same atoms in the same order (so the
        clean featurisation's distances are targets for the noisy one's positions)."""
        return True

    # -- masking (only when vocab_size > 0) ----------------------------------------------------------------
    def mask(self, features: Mapping[str, Tensor], rate: float, rng: np.random.Generator):
        """One molecule's features with about ``rate`` of its atoms masked, and (N,) long targets: the original
        token at the chosen atoms, -100 elsewhere."""
        raise MolbridgeError(f"{type(self).__name__} cannot mask atoms")


def choose_masked(count: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of the atoms chosen for masking: ``int(rate * count + u)``, u ~ U(0, 1) (Uni-Mol's probabilistic
    rounding: on average ``rate`` of the atoms, possibly none in a small molecule), drawn without replacement."""
    chosen = min(count, int(rate * count + rng.random()))
    return np.sort(rng.choice(count, chosen, replace=False)) if chosen else np.zeros(0, dtype=np.int64)


def replacement_tokens(original: np.ndarray, mask_token: int, elements: np.ndarray, rng: np.random.Generator):
    """What each chosen atom becomes: [MASK], or with probability 0.05 a random element token, or with 0.05 itself
    (Uni-Mol's MaskPointsDataset)."""
    draw = rng.random(len(original))
    new = np.full(len(original), mask_token, dtype=np.int64)
    random = draw < RANDOM_TOKEN_SHARE
    new[random] = rng.choice(elements, int(random.sum()))
    unchanged = (draw >= RANDOM_TOKEN_SHARE) & (draw < RANDOM_TOKEN_SHARE + UNCHANGED_SHARE)
    new[unchanged] = original[unchanged]
    return new


def exact_distances(pos: Tensor) -> Tensor:
    """(B, N, N) distances from (B, N, 3) positions by explicit differences (cdist's matmul shortcut is less exact)."""
    return (pos.unsqueeze(2) - pos.unsqueeze(1)).norm(dim=-1)


class UniMolView(EncoderView):
    """Uni-Mol: atoms are the tokens other than [PAD]/[CLS]/[SEP]; ``src_distance`` is the pair-distance matrix of
    its (centred) positions; an atom is masked by its token ([MASK] = 30, the dictionary's appended symbol), and
    the edge types (token_i * 31 + token_j) are recomputed from the masked tokens, as in Uni-Mol's pre-training."""

    def __init__(self, encoder: Any):
        from molbridge.plugins.encoders import unimol

        self.unimol = unimol
        self.keep_hydrogens = encoder.keep_hydrogens
        self.vocab_size = len(unimol.DICTIONARY)
        self.mask_token = unimol.DICTIONARY.index("[MASK]")
        self.elements = np.arange(unimol.UNK + 1, self.mask_token)  # C ... Li: no special token, no [MASK]

    def atoms(self, inputs):
        tokens = inputs["src_tokens"]
        return (tokens != self.unimol.PAD) & (tokens != self.unimol.CLS) & (tokens != self.unimol.SEP)

    def distances(self, inputs):
        return inputs["src_distance"].float()

    def alignable(self, atomic_numbers):
        # above MAX_ATOMS the encoder keeps the atoms nearest the centroid, which depends on the conformer
        kept = len(atomic_numbers) if self.keep_hydrogens else int((np.asarray(atomic_numbers) != 1).sum())
        return kept <= self.unimol.MAX_ATOMS

    def mask(self, features, rate, rng):
        tokens = features["src_tokens"].clone()
        targets = torch.full_like(tokens, -100)
        positions = np.arange(1, len(tokens) - 1)  # between [CLS] and [SEP]
        chosen = positions[choose_masked(len(positions), rate, rng)]
        if len(chosen):
            original = tokens[chosen].numpy()
            targets[chosen] = tokens[chosen]
            tokens[chosen] = torch.from_numpy(replacement_tokens(original, self.mask_token, self.elements, rng))
        edge = tokens[:, None] * self.vocab_size + tokens[None, :]
        return {**features, "src_tokens": tokens, "src_edge_type": edge}, targets


class SchNetView(EncoderView):
    """SchNet: atoms are the non-padding rows (``z`` > 0); distances from its positions ``pos``. Its embedding has
    no [MASK] row, so it pre-trains on the geometric objectives only."""

    def __init__(self, encoder: Any):
        pass

    def atoms(self, inputs):
        return inputs["z"] != 0

    def distances(self, inputs):
        return exact_distances(inputs["pos"].float())


def view_for(encoder: Any, name: str = "") -> EncoderView:
    """The encoder's own ``pretrain_view()`` if it has one, else the built-in view of a molbridge encoder."""
    own = getattr(encoder, "pretrain_view", None)
    if callable(own):
        return own()
    from molbridge.plugins.encoders.schnet import SchNetEncoder
    from molbridge.plugins.encoders.unimol import UniMolEncoder

    for kind, view in ((UniMolEncoder, UniMolView), (SchNetEncoder, SchNetView)):
        if isinstance(encoder, kind):
            return view(encoder)
    raise MolbridgeError(
        f"encoder '{name or type(encoder).__name__}' cannot be pre-trained: the pretrain task reads atom "
        "positions from an encoder's featurised inputs, and this one has no pretrain_view() (an encoder of "
        "coordinates can add one: see molbridge.plugins.tasks.pretrain_views.EncoderView)"
    )
