"""The batch-key contract shared by data, encoders and tasks.

A dataset item and a collated batch are dicts keyed by these names. Two mask conventions exist and
the names say which one a key uses, so they are never confused (the reference 3D-MoLM passed one
where the other was expected):

- a ``*_padding_mask`` is ``bool`` and **True at padding** (PyTorch's ``key_padding_mask``);
- an ``*_attention_mask`` is integer and **1 at real tokens** (HuggingFace's ``attention_mask``).

Shapes: B molecules in a batch, N atoms (padded), L text tokens (padded).
"""

from typing import Final

# --- identity ---------------------------------------------------------------------------------
MOL_ID: Final = "mol_id"  #: list[str] (B): stable molecule identifier (e.g. PubChem CID)
SMILES: Final = "smiles"  #: list[str] (B): canonical SMILES

# --- geometry, as the data layer gives it (one conformer per item) ------------------------------
ATOMIC_NUMBERS: Final = "atomic_numbers"  #: item: int64 (N,); batch: LongTensor (B, N), 0 = padding
POSITIONS: Final = "positions"  #: item: float32 (N, 3) in angstrom; batch: (B, N, 3), 0 at padding
ATOM_PADDING_MASK: Final = "atom_padding_mask"  #: BoolTensor (B, N), True at padding atoms

# --- encoder input ------------------------------------------------------------------------------
ENCODER_INPUT: Final = "encoder_input"  #: dict[str, Tensor]: what ``Encoder.collate`` returns
#: A frozen encoder's outputs read from its cache (molbridge.core.cache.EncoderCache) instead of ENCODER_INPUT:
ENCODED_ATOMS: Final = "encoded_atoms"  #: FloatTensor (B, N, D), zero at padding
ENCODED_PADDING_MASK: Final = "encoded_padding_mask"  #: BoolTensor (B, N), True at padding
ENCODED_POOLED: Final = "encoded_pooled"  #: FloatTensor (B, D)

# --- text -----------------------------------------------------------------------------------------
TEXT: Final = "text"  #: list[str] (B): the molecule's description (retrieval, captioning)
TEXT_INPUT_IDS: Final = "text_input_ids"  #: LongTensor (B, L)
TEXT_ATTENTION_MASK: Final = "text_attention_mask"  #: LongTensor (B, L), 1 at real tokens

# --- instructions and properties --------------------------------------------------------------------
TASK_NAME: Final = "task_name"  #: list[str] (B): instruction task, e.g. "HOMO" or "Description"
INSTRUCTION: Final = "instruction"  #: list[str] (B)
RESPONSE: Final = "response"  #: list[str] (B): the target answer text
TARGET: Final = "target"  #: FloatTensor (B,): a numeric property value, NaN where absent

# --- language-model input -------------------------------------------------------------------------
INPUT_IDS: Final = "input_ids"  #: LongTensor (B, L): prompt + response tokens for the LLM
ATTENTION_MASK: Final = "attention_mask"  #: LongTensor (B, L), 1 at real tokens
LABELS: Final = "labels"  #: LongTensor (B, L), -100 where no loss is taken (prompt, padding)

ALL_KEYS: Final = tuple(v for k, v in dict(globals()).items() if k.isupper() and isinstance(v, str))
