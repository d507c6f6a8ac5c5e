"""Numerical parity with the reference Uni-Mol encoder of the PyPI package ``unimol-tools``.

unimol-tools pins numpy<2.3, which conflicts with the main environment, so it lives in a directory of
its own, installed without its dependencies (the model code needs only torch, numpy and addict):

    pip install --no-deps --target /path/to/unimol-tools-parity unimol-tools==0.1.6 addict
    MOLBRIDGE_UNIMOL_TOOLS=/path/to/unimol-tools-parity pytest tests/test_unimol_parity.py

Without it the test is skipped. The reference is built with random weights (a checkpoint holding
{"model": {}}), so nothing is downloaded; its weights are saved in the released format and loaded strictly.
"""

import os
import sys

import pytest
import torch
from omegaconf import OmegaConf

from molbridge.core.testing import example_molecules
from molbridge.plugins.encoders.unimol import DICTIONARY, UniMolConfig, UniMolEncoder

if os.environ.get("MOLBRIDGE_UNIMOL_TOOLS"):  # asked for (as CI does): a broken reference is an error
    sys.path.append(os.environ["MOLBRIDGE_UNIMOL_TOOLS"])
    import unimol_tools.models.unimol as unimol_models
else:
    unimol_models = pytest.importorskip("unimol_tools.models.unimol", reason="set MOLBRIDGE_UNIMOL_TOOLS")

SMILES = (
    "CC(=O)Oc1ccccc1C(=O)O",
    "c1ccc2c(c1)[nH]c1ccccc12",
    "OC[C@H]1OC(O)[C@H](O)[C@@H](O)[C@@H]1O",
    "CN1CCC[C@H]1c1cccnc1",
    "FC(F)(F)c1ccc(Br)cc1Cl",
)


def reference_model(tmp_path, remove_hs: bool):
    (tmp_path / "dict.txt").write_text("\n".join(DICTIONARY[:-1]) + "\n")
    torch.save({"model": {}}, tmp_path / "empty.pt")
    torch.manual_seed(0)
    model = unimol_models.UniMolModel(
        output_dim=1,
        data_type="molecule",
        remove_hs=remove_hs,
        pretrained_model_path=str(tmp_path / "empty.pt"),
        pretrained_dict_path=str(tmp_path / "dict.txt"),
    )
    return model.eval()


def reference_ids(reference) -> torch.Tensor:
    """unimol-tools' Dictionary pre-seeds [CLS] [UNK] [PAD] [SEP] as ids 0-3, so its ids differ from the
    released (Uni-Core) ones, where the dictionary file's order rules: our id i is its id ``ids[i]``."""
    return torch.tensor([reference.dictionary.index(symbol) for symbol in DICTIONARY])


def released_format(reference) -> dict[str, torch.Tensor]:
    """The reference's weights with token-indexed rows reordered to the released dictionary's ids."""
    ids, n = reference_ids(reference), len(DICTIONARY)
    edges = (ids[:, None] * n + ids[None, :]).reshape(-1)
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("classification_head.")}
    state["embed_tokens.weight"] = state["embed_tokens.weight"][ids]
    for key in ("gbf.mul.weight", "gbf.bias.weight"):
        state[key] = state[key][edges]
    return state


@pytest.mark.parametrize("hydrogens", ["no_h", "all_h"])
def test_matches_unimol_tools_within_1e5(tmp_path, hydrogens):
    reference = reference_model(tmp_path, remove_hs=hydrogens == "no_h")
    state = released_format(reference)
    # released files carry pretraining heads and the pair-head LayerNorm, which unimol-tools omits
    state["lm_head.dense.weight"] = torch.zeros(4, 4)
    state.update(
        {"encoder.final_head_layer_norm.weight": torch.ones(64), "encoder.final_head_layer_norm.bias": torch.zeros(64)}
    )
    path = tmp_path / f"mol_pre_{hydrogens}_220816.pt"
    torch.save({"model": state}, path)
    ours = UniMolEncoder(
        OmegaConf.structured(UniMolConfig(preset="base", hydrogens=hydrogens, checkpoint=str(path)))
    ).eval()
    molecules = example_molecules(SMILES)
    batch = ours.collate([ours.featurize(z, pos) for z, pos in molecules])
    with torch.no_grad():
        out = ours(batch)
        ids = reference_ids(reference)
        tokens = ids[batch["src_tokens"]]
        edge_type = tokens[:, :, None] * len(DICTIONARY) + tokens[:, None, :]
        ref = reference(
            tokens,
            batch["src_distance"],
            torch.zeros(*tokens.shape, 3),
            edge_type,
            return_repr=True,
            return_atomic_reprs=True,
        )
    assert (out.pooled - ref["cls_repr"]).abs().max() <= 1e-5, (out.pooled - ref["cls_repr"]).abs().max()
    for i, atoms in enumerate(ref["atomic_reprs"]):
        assert (out.atom_embeddings[i, 1 : len(atoms) + 1] - atoms).abs().max() <= 1e-5, f"molecule {SMILES[i]}"
