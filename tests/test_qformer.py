"""The Q-Former and linear projectors: BERT loading, masks, padding, the reference layout."""

import pytest
import torch
from transformers import AutoModel

from molbridge.core.errors import CheckpointError
from molbridge.core.testing import check_projector, synthetic_encoder_output
from molbridge.plugins.projectors.bert import BertShape, PrefixBert
from molbridge.plugins.projectors.linear import LinearConfig, LinearProjector
from molbridge.plugins.projectors.qformer import QFormer, QFormerConfig, from_reference, load_reference, to_reference
from molbridge.plugins.projectors.stage1 import default_bert

WIDTH = 32  # encoder width of the synthetic encoder outputs


def qformer(**options) -> QFormer:
    torch.manual_seed(options.pop("seed", 0))
    return QFormer(QFormerConfig(**{"num_layers": 4, **options}), input_dim=WIDTH).eval()


@pytest.fixture(scope="module")
def model():
    return qformer()


def test_text_pass_equals_transformers_bert():
    projector = qformer(num_layers=None)
    reference = AutoModel.from_pretrained(str(default_bert())).eval()
    ids, mask = projector.tokenize(["A ketone with 9 heavy atoms.", "Rod-like, radius of gyration 3.7 Å."])
    with torch.no_grad():
        ours = projector.text_states(ids, mask)
        theirs = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert (ours[real] - theirs[real]).abs().max() < 1e-5


def test_blip2_structure(model):
    layers = model.bert.encoder.layer
    assert [layer.crossattention is not None for layer in layers] == [True, False, True, False]
    assert model.bert.encoder.layer[0].crossattention.self.key.in_features == WIDTH
    for layer in layers:  # the query FFN starts as a copy of the text FFN
        assert torch.equal(layer.intermediate_query.dense.weight, layer.intermediate.dense.weight)
        assert torch.equal(layer.output_query.LayerNorm.weight, layer.output.LayerNorm.weight)
    assert model.query_tokens.shape == (1, 8, 384)
    assert model.tokenizer.bos_token == "[DEC]"
    assert model.bert.embeddings.word_embeddings.num_embeddings == len(model.tokenizer)
    assert qformer(num_query_tokens=4, cross_attention_freq=1, num_layers=2)(
        synthetic_encoder_output([3], WIDTH)
    ).shape == (1, 4, 384)


def test_padding_is_masked(model):
    check_projector(model, input_dim=WIDTH)
    # a molecule alone equals the same molecule batched with a bigger one
    batch = synthetic_encoder_output([4, 11], WIDTH)
    alone = synthetic_encoder_output([4], WIDTH)
    alone.atom_embeddings[0] = batch.atom_embeddings[0, :4]
    with torch.no_grad():
        assert (model(alone)[0] - model(batch)[0]).abs().max() < 1e-5


def test_reference_padding_mask_reproduces_the_inversion():
    correct, reference = qformer(), qformer(reference_padding_mask=True)
    batch = synthetic_encoder_output([4, 11], WIDTH)
    changed = synthetic_encoder_output([4, 11], WIDTH)
    changed.atom_embeddings[0, :4] += torch.randn(4, WIDTH)  # change molecule 0's real atoms, not its padding
    with torch.no_grad():
        # the reference's padded molecule attends only to padding, so its real atoms do not matter ...
        assert (reference(batch)[0] - reference(changed)[0]).abs().max() < 1e-5
        assert (correct(batch)[0] - correct(changed)[0]).abs().max() > 1e-3
        # ... and the unpadded molecule attends to all positions, as the correct mask does (up to the
        # rounding of scores shifted by -10000 in float32)
        assert (reference(batch)[1] - correct(batch)[1]).abs().max() < 1e-3


def test_captioning_mask(model):
    bert = model.bert
    ids, mask = model.tokenize(["the molecule is rod-like and neutral"])
    prefix = model.query_tokens
    memory = torch.randn(1, 5, WIDTH)
    changed = ids.clone()
    changed[0, 4:] = 1000  # change every token from position 4 on
    with torch.no_grad():
        a = bert(prefix, ids, mask, causal=True, memory=memory)
        b = bert(prefix, changed, mask, causal=True, memory=memory)
        queries_alone = bert(prefix, memory=memory)
        bidirectional = bert(prefix, changed, mask, memory=memory)
    p = prefix.shape[1]
    assert (a[:, : p + 4] - b[:, : p + 4]).abs().max() < 1e-5  # queries and tokens < 4 never see later text
    assert (a[:, p + 4 :] - b[:, p + 4 :]).abs().max() > 1e-3
    assert (a[:, :p] - queries_alone).abs().max() < 1e-5
    assert (bidirectional[:, :p] - queries_alone).abs().max() > 1e-3  # matching: queries do see text


def test_stage1_interface_shapes(model):
    encoded = synthetic_encoder_output([3, 6], WIDTH)
    ids, mask = model.tokenize(["a ketone", "an acyclic tertiary amine"])
    with torch.no_grad():
        mol, text = model.molecule_features(encoded), model.text_features(ids, mask)
        assert mol.shape == (2, 8, 256) and text.shape == (2, 256)
        assert torch.allclose(mol.norm(dim=-1), torch.ones(2, 8)) and torch.allclose(text.norm(dim=-1), torch.ones(2))
        assert model.match_logits(encoded, ids, mask).shape == (2, 2)
        assert torch.isfinite(model.caption_loss(encoded, ids, mask))


def test_reference_checkpoint_round_trip(tmp_path, model):
    theirs = to_reference(model.state_dict())
    # names as they appear in 3D-MoLM's stage-1 checkpoints
    for key in (
        "blip2qformer.Qformer.bert.encoder.layer.0.crossattention.self.key.weight",
        "blip2qformer.Qformer.bert.encoder.layer.1.intermediate_query.dense.weight",
        "blip2qformer.Qformer.bert.embeddings.word_embeddings.weight",
        "blip2qformer.Qformer.cls.predictions.transform.dense.weight",
        "blip2qformer.Qformer.cls.predictions.decoder.weight",
        "blip2qformer.graph_proj.weight",
        "blip2qformer.text_proj.weight",
        "blip2qformer.gtm_head.weight",
        "blip2qformer.ln_graph.weight",
        "blip2qformer.query_tokens",
    ):
        assert key in theirs, key
    theirs["blip2qformer.temp"] = torch.tensor(0.1)
    theirs["blip2qformer.graph_encoder.embed_tokens.weight"] = torch.zeros(3, 4)
    path = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": theirs, "epoch": 9}, path)

    fresh = qformer(seed=1)
    others = load_reference(fresh, str(path))
    assert set(others) == {"temp", "graph_encoder.embed_tokens.weight"}
    encoded = synthetic_encoder_output([3, 6], WIDTH)
    with torch.no_grad():
        assert torch.equal(fresh(encoded), model(encoded))


def test_reference_mapping_errors(tmp_path, model):
    theirs = to_reference(model.state_dict())
    with pytest.raises(CheckpointError, match="1 keys .* no molbridge name: blip2qformer.opt_proj.weight"):
        from_reference(theirs | {"blip2qformer.opt_proj.weight": torch.zeros(1)})
    theirs["blip2qformer.Qformer.bert.pooler.dense.weight"] = torch.zeros(1)
    del theirs["blip2qformer.ln_graph.weight"]
    path = tmp_path / "partial.ckpt"
    torch.save({"state_dict": theirs}, path)
    with pytest.raises(CheckpointError, match="missing: encoder_norm.weight.*unexpected: bert.pooler.dense.weight"):
        load_reference(qformer(), str(path))
    (tmp_path / "corrupt.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.ckpt"):
        load_reference(qformer(), str(tmp_path / "corrupt.ckpt"))


def test_bad_bert_settings(tmp_path):
    with pytest.raises(CheckpointError, match="has 6 layers"):
        qformer(num_layers=7)
    with pytest.raises(CheckpointError, match="config.json is missing"):
        qformer(bert=str(tmp_path))


def test_random_init_keeps_the_shape_only():
    pretrained, scratch = qformer(num_layers=1), qformer(num_layers=1, pretrained=False)
    shape = BertShape.from_folder(default_bert())
    assert isinstance(scratch.bert, PrefixBert) and scratch.bert.shape.hidden_size == shape.hidden_size
    a = pretrained.bert.encoder.layer[0].attention.self.query.weight
    assert not torch.equal(a, scratch.bert.encoder.layer[0].attention.self.query.weight)


def test_linear_projector():
    torch.manual_seed(0)
    projector = LinearProjector(LinearConfig(num_layers=1, num_tokens=4), input_dim=WIDTH).eval()
    check_projector(projector, input_dim=WIDTH)
    encoded = synthetic_encoder_output([3, 6], WIDTH)
    ids, mask = projector.tokenize(["a ketone", "an acyclic tertiary amine"])
    with torch.no_grad():
        assert projector.molecule_features(encoded).shape == (2, 4, 256)
        assert projector.match_logits(encoded, ids, mask).shape == (2, 2)
        assert torch.isfinite(projector.caption_loss(encoded, ids, mask))


def test_cross_attention_skips_padded_memory_rows_without_changing_outputs(model):
    """Keys and values are projected for real memory rows only; padding, whatever it holds, changes nothing,
    and the result equals the unpacked computation (an additive mask takes that path)."""
    from molbridge.plugins.projectors.bert import _packable

    batch = synthetic_encoder_output([4, 11, 7], WIDTH)  # garbage in the padding rows
    queries, memory, memory_mask = model.prefix(batch)
    assert _packable(memory, memory_mask)
    additive = torch.zeros(memory_mask.shape).masked_fill(~memory_mask, float("-inf"))
    with torch.no_grad():
        packed = model.bert(queries, memory=memory, memory_mask=memory_mask)
        unpacked = model.bert(queries, memory=memory, memory_mask=additive)
    assert (packed - unpacked).abs().max() < 1e-6
    model.train()
    try:
        memory = memory.detach().requires_grad_()
        model.bert(queries, memory=memory, memory_mask=memory_mask).sum().backward()
    finally:
        model.eval()
    assert not memory.grad[~memory_mask[:, 0, 0]].any() and memory.grad[memory_mask[:, 0, 0]].abs().sum() > 0


def test_query_pass_runs_on_the_meta_device():
    """Recipe sizing runs the query pass on meta tensors: no data-dependent packing there."""
    with torch.device("meta"):
        projector = QFormer(QFormerConfig(num_layers=2, pretrained=False), input_dim=WIDTH)
        encoded = synthetic_encoder_output([3, 5], WIDTH)
        assert projector(encoded).shape == (2, 8, 384)
