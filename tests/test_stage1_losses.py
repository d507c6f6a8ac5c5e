"""Stage-1 losses: contrastive maths across a simulated world, hard negatives, the weighted model loss."""

import pytest
import torch
import torch.nn.functional as F

from molbridge.core import batch as keys
from molbridge.core.contracts import EncoderOutput
from molbridge.core.errors import RecipeError
from molbridge.core.testing import synthetic_encoder_output
from molbridge.plugins.projectors.qformer import QFormer, QFormerConfig
from molbridge.plugins.tasks.stage1 import (
    Stage1Model,
    Stage1Options,
    check_options,
    contrastive_loss,
    hard_negatives,
    similarity,
)


def features(n: int, p: int = 3, e: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mol = F.normalize(torch.randn(n, p, e, generator=g), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(n, e, generator=g), dim=-1).requires_grad_()
    return mol, text


def test_similarity_is_max_over_queries():
    mol, text = features(4)
    expected = torch.stack([torch.stack([(mol[i] @ text[j]).max() for j in range(4)]) for i in range(4)])
    assert torch.allclose(similarity(mol, text), expected)


def test_contrastive_single_process_is_symmetric_infonce():
    mol, text = features(5)
    loss, sim_m2t, sim_t2m = contrastive_loss(mol, text, mol, text, rank=0, temperature=0.1)
    sim = similarity(mol, text)
    targets = torch.arange(5)
    expected = (F.cross_entropy(sim / 0.1, targets) + F.cross_entropy(sim.T / 0.1, targets)) / 2
    assert torch.allclose(loss, expected) and torch.allclose(sim_t2m, sim.T)


def test_contrastive_over_two_ranks_equals_one_big_batch():
    """Two ranks of 3, each with the gathered features: mean loss and gradients equal one batch of 6."""
    mol, text = features(6)
    full, _, _ = contrastive_loss(mol, text, mol, text, rank=0, temperature=0.07)
    full_grads = torch.autograd.grad(full, (mol, text))

    shards = [(mol[r * 3 : (r + 1) * 3], text[r * 3 : (r + 1) * 3]) for r in range(2)]
    world = sum(contrastive_loss(m, t, mol, text, rank=r, temperature=0.07)[0] for r, (m, t) in enumerate(shards)) / 2
    world_grads = torch.autograd.grad(world, (mol, text))
    assert torch.allclose(world, full, atol=1e-6)
    for a, b in zip(world_grads, full_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_hard_negatives_exclude_the_positive_and_follow_similarity():
    sim = torch.zeros(4, 4)
    sim[0, 2] = 20.0  # molecule 0's hardest negative is text 2 by far
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([hard_negatives(sim, generator=g) for _ in range(200)])
    assert not (draws == torch.arange(4)).any()
    assert (draws[:, 0] == 2).float().mean() > 0.99
    assert set(draws[:, 1].tolist()) == {0, 2, 3}  # flat rows: every other column is drawn
    diagonal_heavy = torch.eye(3) * 100  # the positive would always win if it were not excluded
    assert not (hard_negatives(diagonal_heavy) == torch.arange(3)).any()


@pytest.fixture(scope="module")
def tiny_model_parts():
    torch.manual_seed(0)
    projector = QFormer(QFormerConfig(num_layers=2, max_text_length=24), input_dim=8)
    return projector


class PassThrough(torch.nn.Module):
    """An 'encoder' whose input already is an EncoderOutput-like dict, so the test needs no molecules."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, inputs):
        return EncoderOutput(inputs["x"] * self.scale, inputs["padding"], inputs["x"].mean(1) * self.scale)


def tiny_batch(projector):
    encoded = synthetic_encoder_output([3, 5, 2, 4], 8)
    ids, mask = projector.tokenize(["a ketone", "an amine with two rings", "neutral", "rod-like and polar"])
    return {
        keys.ENCODER_INPUT: {"x": encoded.atom_embeddings, "padding": encoded.padding_mask},
        keys.TEXT_INPUT_IDS: ids,
        keys.TEXT_ATTENTION_MASK: mask,
    }


def test_stage1_model_weights_and_gradients(tiny_model_parts):
    projector = tiny_model_parts
    batch = tiny_batch(projector)
    model = Stage1Model(PassThrough(), projector, projector, Stage1Options())
    terms = model(batch)
    assert set(terms) == {"contrastive", "matching", "captioning", "loss"}
    assert torch.allclose(terms["loss"], terms["contrastive"] + terms["matching"] + terms["captioning"])
    terms["loss"].backward()
    for name in (
        "encoder.scale",
        "projector.query_tokens",
        "projector.match_head.weight",
        "projector.lm_head.transform.dense.weight",
        "projector.text_proj.weight",
    ):
        assert dict(model.named_parameters())[name].grad is not None, name
    model.zero_grad()

    only = Stage1Model(PassThrough(), projector, projector, Stage1Options(matching_weight=0, captioning_weight=0.5))
    terms = only(batch)
    assert "matching" not in terms and torch.allclose(terms["loss"], terms["contrastive"] + 0.5 * terms["captioning"])
    terms["loss"].backward()
    assert projector.match_head.weight.grad is None
    model.zero_grad()


def test_temperature_fixed_or_learned(tiny_model_parts):
    fixed = Stage1Model(PassThrough(), tiny_model_parts, tiny_model_parts, Stage1Options(temperature=0.1))
    learned = Stage1Model(
        PassThrough(), tiny_model_parts, tiny_model_parts, Stage1Options(temperature=0.07, learn_temperature=True)
    )
    assert "log_temperature" not in dict(fixed.named_parameters())
    assert "log_temperature" in dict(learned.named_parameters())
    assert torch.isclose(fixed.temperature, torch.tensor(0.1))
    assert torch.isclose(learned.temperature, torch.tensor(0.07))


def test_option_errors_name_the_keys():
    with pytest.raises(RecipeError, match="task.matching_weight .* data.batch_size >= 2"):
        check_options(Stage1Options(), batch_size=1, where="r.yaml")
    with pytest.raises(RecipeError, match="nothing to train"):
        check_options(Stage1Options(contrastive_weight=0, matching_weight=0, captioning_weight=0), 8, "r.yaml")
    with pytest.raises(RecipeError, match="task.temperature must be positive"):
        check_options(Stage1Options(temperature=0), 8, "r.yaml")
