"""Contract checks for plugin authors: run them against your own encoder or projector.

    from molbridge.core.testing import check_encoder, check_projector, example_molecules
    check_encoder(MyEncoder(config), example_molecules())
    check_projector(MyProjector(config, input_dim=64), input_dim=64)

Each check raises AssertionError with a message saying which property failed and by how much.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from molbridge.core.contracts import Encoder, EncoderOutput, Projector

Molecule = tuple[np.ndarray, np.ndarray]  # atomic numbers (N,), positions (N, 3) in angstrom

EXAMPLE_SMILES = ("CC(=O)Oc1ccccc1C(=O)O", "c1ccc2[nH]ccc2c1", "OCC(O)CO", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C")


def example_molecules(smiles: Sequence[str] = EXAMPLE_SMILES, seed: int = 0) -> list[Molecule]:
    """Real molecules with hydrogens, embedded with RDKit (ETKDGv3 + MMFF), sizes deliberately different."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    molecules = []
    for text in smiles:
        mol = Chem.AddHs(Chem.MolFromSmiles(text))
        params = AllChem.ETKDGv3()
        params.randomSeed = seed
        AllChem.EmbedMolecule(mol, params)
        AllChem.MMFFOptimizeMolecule(mol)
        z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
        molecules.append((z, mol.GetConformer().GetPositions().astype(np.float32)))
    return molecules


def _encode(encoder: Encoder, molecules: Sequence[Molecule]) -> EncoderOutput:
    with torch.no_grad():
        return encoder(encoder.collate([encoder.featurize(z, pos) for z, pos in molecules]))


def _rows(out: EncoderOutput, i: int) -> Tensor:
    return out.atom_embeddings[i][~out.padding_mask[i]]


def _close(a: Tensor, b: Tensor, atol: float, what: str) -> None:
    assert a.shape == b.shape, f"{what}: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}"
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    assert diff <= atol, f"{what}: max abs difference {diff:.3g} > {atol:g}"


def _random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return (q if np.linalg.det(q) > 0 else -q).astype(np.float32)


def check_encoder_outputs(encoder: Encoder, molecules: Sequence[Molecule]) -> EncoderOutput:
    """Shapes, dtypes, the padding-mask convention and zero rows at padding."""
    out = _encode(encoder, molecules)
    b = len(molecules)
    assert isinstance(out, EncoderOutput), f"forward must return EncoderOutput, got {type(out).__name__}"
    assert out.atom_embeddings.dim() == 3 and out.atom_embeddings.shape[0] == b, "atom_embeddings must be (B, N, D)"
    assert out.atom_embeddings.shape[2] == encoder.output_dim, "atom_embeddings width must equal output_dim"
    assert out.padding_mask.dtype == torch.bool, "padding_mask must be bool (True at padding)"
    assert out.padding_mask.shape == out.atom_embeddings.shape[:2], "padding_mask must be (B, N)"
    assert out.pooled.shape == (b, encoder.output_dim), "pooled must be (B, output_dim)"
    assert torch.isfinite(out.atom_embeddings).all() and torch.isfinite(out.pooled).all(), "non-finite outputs"
    assert (~out.padding_mask).any(1).all(), "every molecule must have at least one non-padding position"
    assert not out.atom_embeddings[out.padding_mask].any(), "rows at padding positions must be zero"
    return out


def check_rigid_motion_invariance(encoder: Encoder, molecules: Sequence[Molecule], atol: float = 1e-4) -> None:
    """Rotating and translating every molecule changes no output beyond ``atol``."""
    moved = [(z, pos @ _random_rotation(i).T + np.float32([3.0, -7.5, 12.0])) for i, (z, pos) in enumerate(molecules)]
    a, b = _encode(encoder, molecules), _encode(encoder, moved)
    _close(a.atom_embeddings, b.atom_embeddings, atol, "atom embeddings after rotation + translation")
    _close(a.pooled, b.pooled, atol, "pooled output after rotation + translation")


def check_padding_invariance(encoder: Encoder, molecules: Sequence[Molecule], atol: float = 1e-5) -> None:
    """A molecule's outputs are the same alone and in a batch padded to a larger molecule."""
    together = _encode(encoder, molecules)
    for i, molecule in enumerate(molecules):
        alone = _encode(encoder, [molecule])
        _close(_rows(alone, 0), _rows(together, i), atol, f"molecule {i}: atom embeddings alone vs padded batch")
        _close(alone.pooled[0], together.pooled[i], atol, f"molecule {i}: pooled alone vs padded batch")


def check_permutation_equivariance(encoder: Encoder, molecules: Sequence[Molecule], atol: float = 1e-4) -> None:
    """Shuffling atoms permutes the per-atom outputs (same multiset of rows) and leaves pooled unchanged.

    Rows are matched by nearest neighbour, so encoders that add special tokens or drop hydrogens pass too.
    """
    rng = np.random.default_rng(0)
    shuffled = [(z[p], pos[p]) for z, pos in molecules for p in [rng.permutation(len(z))]]
    a, b = _encode(encoder, molecules), _encode(encoder, shuffled)
    _close(a.pooled, b.pooled, atol, "pooled output after permuting atoms")
    for i in range(len(molecules)):
        ra, rb = _rows(a, i), _rows(b, i)
        assert ra.shape == rb.shape, f"molecule {i}: permuting atoms changed the number of positions"
        gap = torch.cdist(ra, rb, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values.max().item()
        assert gap <= atol * ra.shape[1] ** 0.5, f"molecule {i}: a row has no counterpart after permutation ({gap:.3g})"


def check_encoder(encoder: Encoder, molecules: Sequence[Molecule] | None = None, atol: float = 1e-4) -> None:
    """Every encoder property molbridge relies on (in eval mode, so dropout is off)."""
    molecules = molecules or example_molecules()
    encoder.eval()
    check_encoder_outputs(encoder, molecules)
    check_rigid_motion_invariance(encoder, molecules, atol)
    check_padding_invariance(encoder, molecules, atol)
    check_permutation_equivariance(encoder, molecules, atol)


def synthetic_encoder_output(
    sizes: Sequence[int], width: int, pad_to: int | None = None, seed: int = 0
) -> EncoderOutput:
    """Random per-position features for molecules of ``sizes`` positions, padded with garbage (not zeros)."""
    generator = torch.Generator().manual_seed(seed)
    n = pad_to or max(sizes)
    x = torch.randn(len(sizes), n, width, generator=generator)
    padding = torch.arange(n).unsqueeze(0) >= torch.tensor(sizes).unsqueeze(1)
    return EncoderOutput(atom_embeddings=x, padding_mask=padding, pooled=x.mean(1))


def check_projector(projector: Projector, input_dim: int, atol: float = 1e-5) -> None:
    """Output shape (B, num_tokens, output_dim), finite, and independent of the encoder's padding."""
    projector.eval()
    sizes = [5, 9, 3]
    with torch.no_grad():
        tight = projector(synthetic_encoder_output(sizes, input_dim))
        extra = synthetic_encoder_output(sizes, input_dim, pad_to=16)
        extra.atom_embeddings[:, :9] = synthetic_encoder_output(sizes, input_dim).atom_embeddings
        extra.atom_embeddings[extra.padding_mask] = 1e3  # garbage a correct mask ignores
        padded = projector(extra)
    assert tight.shape == (len(sizes), projector.num_tokens, projector.output_dim), (
        f"projector output must be (B, num_tokens, output_dim), got {tuple(tight.shape)}"
    )
    assert torch.isfinite(tight).all(), "projector output has non-finite values"
    _close(tight, padded, atol, "projector output with extra padding")
