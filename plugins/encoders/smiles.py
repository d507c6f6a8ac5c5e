"""A 1D-only control encoder: a Transformer over SMILES tokens that never sees coordinates.

It answers "what does 3D buy?": the same projector and LLM fed from the molecule's canonical SMILES
(``batch.SMILES``, RDKit canonical in the data layer) instead of its conformer. Its shapes follow Uni-Mol's
presets (``small`` and ``base`` have Uni-Mol's depth, width, FFN and heads) and it pools the [CLS] state
like Uni-Mol, so the comparison differs in the input only.

Tokens come from the usual atom-level SMILES regex (bracket atoms, two-letter halogens, ``%nn`` ring closures,
bonds, branches) mapped into a fixed vocabulary built from constants below: deterministic, no build step, and
the same for every dataset, so a checkpoint always matches its token ids.
"""

import itertools
import re
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from molbridge.core import batch as keys
from molbridge.core import hookimpl
from molbridge.core.contracts import Encoder, EncoderOutput
from molbridge.core.errors import MolbridgeError, check_choice
from molbridge.plugins.encoders.presets import Preset, preset_metadata
from molbridge.plugins.encoders.weights import load_strict, read_state_dict

# --- tokenizer -----------------------------------------------------------------------------------------

#: One token per match; the final ``.`` turns any character SMILES does not use into a token of its own,
#: so tokens always join back to the input and nothing is skipped silently.
TOKEN_PATTERN = re.compile(r"\[[^\[\]]*\]|Br|Cl|%\d{2}|[BCNOPSFIbcnops]|[()=#$:/\\.~*+\-@?>]|\d|.", re.DOTALL)

SPECIALS = ("[PAD]", "[CLS]", "[UNK]")
PAD, CLS, UNK = 0, 1, 2
_ORGANIC = ("B", "C", "N", "O", "P", "S", "F", "Cl", "Br", "I", "b", "c", "n", "o", "p", "s", "*")
_SYMBOLS = ("(", ")", "=", "#", "$", ":", "/", "\\", "-", ".", "~", "+", "@")
_RING_BONDS = tuple(str(d) for d in range(10)) + tuple(f"%{d}" for d in range(10, 100))
#: Elements that carry stereo and hydrogens in brackets ([C@@H], [nH], [NH3+], ...): every combination.
_BRACKET_ORGANIC = (
    "H",
    "B",
    "C",
    "N",
    "O",
    "P",
    "S",
    "F",
    "Cl",
    "Br",
    "I",
    "Si",
    "Se",
    "As",
    "Ge",
    "Te",
    "b",
    "c",
    "n",
    "o",
    "p",
    "s",
    "se",
    "as",
    "te",
)
_CHIRALITY, _HYDROGENS, _ORGANIC_CHARGES = ("", "@", "@@"), ("", "H", "H2", "H3"), ("", "+", "-")
#: Metals and other ions, with the charges they usually carry in PubChem SMILES ([Na+], [Ca+2], [Fe+3]).
_BRACKET_IONS = (
    "Li",
    "Na",
    "K",
    "Rb",
    "Cs",
    "Mg",
    "Ca",
    "Sr",
    "Ba",
    "Al",
    "Zn",
    "Fe",
    "Cu",
    "Co",
    "Ni",
    "Mn",
    "Cr",
    "Ti",
    "V",
    "Zr",
    "Ru",
    "Rh",
    "Pd",
    "Ag",
    "Pt",
    "Au",
    "Hg",
    "Cd",
    "Sn",
    "Pb",
    "Sb",
    "Bi",
    "Tl",
    "Ga",
    "Gd",
    "Mo",
    "W",
)
_ION_CHARGES = ("", "+", "+2", "+3", "-")
_ISOTOPES = (
    "[2H]",
    "[3H]",
    "[11C]",
    "[13C]",
    "[13CH]",
    "[13CH2]",
    "[13CH3]",
    "[14C]",
    "[15N]",
    "[18O]",
    "[18F]",
    "[123I]",
    "[125I]",
    "[131I]",
    "[35S]",
    "[32P]",
)


def _vocabulary() -> tuple[str, ...]:
    organic = (
        f"[{e}{c}{h}{q}]"
        for e, c, h, q in itertools.product(_BRACKET_ORGANIC, _CHIRALITY, _HYDROGENS, _ORGANIC_CHARGES)
    )
    ions = (f"[{e}{q}]" for e, q in itertools.product(_BRACKET_IONS, _ION_CHARGES))
    tokens = (*SPECIALS, *_ORGANIC, *_SYMBOLS, *_RING_BONDS, *organic, *ions, *_ISOTOPES)
    return tuple(dict.fromkeys(tokens))  # drop repeats, keep the order (ids must never move)


VOCABULARY = _vocabulary()
TOKEN_ID = {token: i for i, token in enumerate(VOCABULARY)}
#: Above this share of [UNK] tokens a SMILES is reported (its encoding says little about the molecule).
MOSTLY_UNKNOWN = 0.5


def tokenize(smiles: str) -> list[str]:
    """Atom-level SMILES tokens; ``"".join(tokenize(s)) == s`` for every string."""
    return TOKEN_PATTERN.findall(smiles)


def encode(smiles: Any, where: str = "SMILES") -> tuple[list[int], list[str]]:
    """Token ids (no specials) and the tokens that fell outside the vocabulary. ``where`` names the record."""
    if not isinstance(smiles, str) or not smiles.strip():
        raise MolbridgeError(f"{where}: the smiles encoder needs a non-empty SMILES string, got {smiles!r}")
    tokens = tokenize(smiles.strip())
    ids = [TOKEN_ID.get(t, UNK) for t in tokens]
    return ids, [t for t, i in zip(tokens, ids) if i == UNK]


# --- encoder ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmilesPreset(Preset):
    """The shape of the SMILES Transformer; each field can also be set on its own (``encoder.<field>``)."""

    layers: int
    """Pre-LayerNorm Transformer layers."""
    hidden: int
    """Width of the token representations; the encoder's output_dim."""
    ffn: int
    """Hidden width of each layer's feed-forward block."""
    heads: int
    """Attention heads (must divide hidden)."""


#: Uni-Mol's shapes of the same names, so the 1D control is as big as the 3D encoder.
PRESETS = {
    "base": SmilesPreset("Uni-Mol base's depth, width, FFN and heads", layers=15, hidden=512, ffn=2048, heads=64),
    "small": SmilesPreset("Uni-Mol small's depth, width, FFN and heads", layers=4, hidden=128, ffn=256, heads=8),
}
#: Positions including [CLS]; molbridge-mini's longest canonical SMILES has 240 tokens.
DEFAULT_MAX_LENGTH = 256


@dataclass
class SmilesConfig:
    name: str = "smiles"
    preset: str = field(default="small", metadata=preset_metadata(PRESETS))
    """``small`` or ``base`` (Uni-Mol's shapes of the same names); explicit fields below override it."""
    layers: int | None = None
    """Transformer layers (null: the preset's)."""
    hidden: int | None = None
    """Width of the token embeddings and of the output (null: the preset's)."""
    ffn: int | None = None
    """Width of each layer's feed-forward block (null: the preset's)."""
    heads: int | None = None
    """Attention heads per layer; must divide ``hidden`` (null: the preset's)."""
    dropout: float = 0.0
    """Dropout inside the Transformer layers (0 like our Uni-Mol, for a like-for-like control)."""
    max_length: int = DEFAULT_MAX_LENGTH
    """Most positions per molecule, [CLS] included; longer SMILES are truncated with a warning."""
    checkpoint: str | None = None
    """Weights to load (a state dict, or {"model": state dict}); null keeps the random initialisation."""
    trust_checkpoint: bool = False
    """Allow full unpickling of the checkpoint (only for files you trust)."""


class SmilesEncoder(Encoder):
    """[CLS] + SMILES tokens -> pre-LayerNorm Transformer (PyTorch's, SDPA attention) -> final LayerNorm.

    ``atom_embeddings`` are the token states ([CLS] first, zero at padding), ``pooled`` the [CLS] state.
    """

    def __init__(self, config: SmilesConfig):
        super().__init__()
        check_choice("encoder.preset", config.preset, PRESETS)
        if config.max_length < 2:
            raise MolbridgeError(f"encoder.max_length: {config.max_length} leaves no room after [CLS]; use >= 2")
        preset = PRESETS[config.preset].values()
        shape = {k: getattr(config, k) if getattr(config, k) is not None else v for k, v in preset.items()}
        if shape["hidden"] % shape["heads"]:
            raise MolbridgeError(f"encoder.hidden {shape['hidden']} is not divisible by encoder.heads {shape['heads']}")
        self.output_dim, self.max_length = shape["hidden"], config.max_length
        self.unknown_tokens: Counter[str] = Counter()  # tokens mapped to [UNK] in this process, for reports
        self.embed_tokens = nn.Embedding(len(VOCABULARY), shape["hidden"], padding_idx=PAD)
        self.embed_positions = nn.Embedding(config.max_length, shape["hidden"])
        layer = nn.TransformerEncoderLayer(
            shape["hidden"],
            shape["heads"],
            shape["ffn"],
            config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # nested tensors are off: they need post-norm layers and would return padded rows as a different layout
        self.encoder = nn.TransformerEncoder(
            layer, shape["layers"], norm=nn.LayerNorm(shape["hidden"]), enable_nested_tensor=False
        )
        if config.checkpoint:
            load_strict(self, read_state_dict(config.checkpoint, trust=config.trust_checkpoint), config.checkpoint)

    def featurize(self, atomic_numbers: np.ndarray, positions: np.ndarray) -> dict[str, Tensor]:
        raise MolbridgeError(
            "the smiles encoder reads a molecule's SMILES, not its atoms and positions: "
            "call featurize_item(item) with an item holding 'smiles' (as the tasks do)"
        )

    def featurize_item(self, item: Mapping[str, Any]) -> dict[str, Tensor]:
        """[CLS] + token ids of ``item['smiles']``; unknown tokens become [UNK] (counted, warned once each)."""
        where = f"molecule {item.get(keys.MOL_ID, '?')}"
        if keys.SMILES not in item:
            raise MolbridgeError(f"{where}: the item has no '{keys.SMILES}' key, which the smiles encoder reads")
        smiles = item[keys.SMILES]
        ids, unknown = encode(smiles, where)
        self._report_unknown(where, smiles, len(ids), unknown)
        if len(ids) + 1 > self.max_length:
            warnings.warn(
                f"{where}: SMILES of {len(ids)} tokens truncated to encoder.max_length={self.max_length} "
                f"positions ([CLS] included): {smiles}",
                stacklevel=2,
            )
            ids = ids[: self.max_length - 1]
        return {"tokens": torch.tensor([CLS, *ids], dtype=torch.long)}

    def _report_unknown(self, where: str, smiles: str, total: int, unknown: list[str]) -> None:
        self.unknown_tokens.update(unknown)
        for token in sorted(set(unknown)):  # warnings shows each message once: once per unknown token
            warnings.warn(f"smiles encoder: token {token!r} is not in the vocabulary; encoded as [UNK]", stacklevel=3)
        if len(unknown) > MOSTLY_UNKNOWN * total:
            warnings.warn(
                f"{where}: {len(unknown)} of {total} SMILES tokens are unknown ([UNK]): {smiles}", stacklevel=3
            )

    def collate(self, features: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        return {
            "tokens": nn.utils.rnn.pad_sequence([f["tokens"] for f in features], batch_first=True, padding_value=PAD)
        }

    def forward(self, inputs: Mapping[str, Tensor]) -> EncoderOutput:
        tokens = inputs["tokens"]
        padding = tokens == PAD
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embed_tokens(tokens) + self.embed_positions(positions)
        x = self.encoder(x, src_key_padding_mask=padding)
        x = x * ~padding.unsqueeze(-1)
        return EncoderOutput(atom_embeddings=x, padding_mask=padding, pooled=x[:, 0])


@hookimpl
def molbridge_register_encoders(register):
    register(
        "smiles",
        SmilesEncoder,
        SmilesConfig,
        description="1D control: Transformer over SMILES tokens, no coordinates; Uni-Mol's presets small, base",
    )
