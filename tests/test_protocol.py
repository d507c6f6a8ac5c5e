"""compat: 3d-molm reproduces the 3D-MoLM reference's protocol, one row of docs/reproducing-3d-molm.md at a time.

Every test builds the piece it checks from a recipe with the profile on (and, where it says so, off), so the
row's recipe key is what is tested, not a hand-set option. Reference values are those of lsh0520/3D-MoLM at
fb03ba3 (file:line in the docs table).
"""

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from molbridge.core import batch as keys
from molbridge.core.cli import main
from molbridge.core.errors import CheckpointError
from molbridge.core.identity import differences, identify
from molbridge.core.loop import build_optimizer, build_scheduler
from molbridge.core.plugins import load_plugins
from molbridge.core.recipe import load_recipe, profile_settings
from molbridge.plugins.llms.demo import build_demo_model
from molbridge.plugins.llms.llama import LlamaLMConfig
from molbridge.plugins.llms.llama import build as build_llama
from molbridge.plugins.projectors.stage1 import default_bert, load_tokenizer
from molbridge.plugins.tasks.llm_stage import Example
from molbridge.plugins.tasks.numbers import REFERENCE_RANGES, Interval, property_errors
from molbridge.plugins.tasks.retrieval_metrics import retrieval_report
from molbridge.plugins.tasks.text_metrics import caption_metrics


@pytest.fixture(scope="module")
def registry():
    return load_plugins(external=False).registry


@pytest.fixture(autouse=True)
def no_weights_here(monkeypatch, tmp_path):
    for variable in ("MOLBRIDGE_LLAMA2_7B", "MOLBRIDGE_SCIBERT", "MOLBRIDGE_UNIMOL_CKPT", "MOLBRIDGE_3DMOLM_DATA"):
        monkeypatch.setenv(variable, str(tmp_path / "not-here"))


def task_of(registry, name: str, *overrides: str):
    """The task a recipe builds (no data is read until its splits are used)."""
    recipe = load_recipe(name, list(overrides), registry)
    return registry.build("task", recipe.task, recipe=recipe, registry=registry)


# -- the profile mechanism ------------------------------------------------------------------------------------


def test_validate_names_the_profile_and_lists_every_key_it_changed(capsys):
    assert main(["recipes", "validate", "3d-molm-stage3", "--no-size"]) == 0
    out = capsys.readouterr().out
    assert "profile 3d-molm" in out
    for key in profile_settings("3d-molm", "qa"):
        assert f"  {key} " in out, key
    assert "train.grad_clip" in out and "1.0 -> null" in out
    assert main(["recipes", "validate", "3d-molm-stage3", "compat=molbridge", "--no-size"]) == 0
    assert "profile molbridge: molbridge's defaults" in capsys.readouterr().out


def test_the_recipe_and_the_command_line_win_over_the_profile(registry):
    recipe = load_recipe("3d-molm-stage3", ["task.number_parser=molbridge"], registry)
    assert recipe.task.number_parser == "molbridge"  # one fix taken back, the rest of the profile stays
    assert recipe.task.mixture_draws == "per-item" and recipe.train.grad_clip is None
    mini = load_recipe("qa", [], registry)
    assert (mini.compat, mini.task.number_parser, mini.train.grad_clip) == ("molbridge", "molbridge", 1.0)


def test_a_component_key_applies_only_where_the_component_declares_it(registry):
    """Uni-Mol declares the reference's dropouts and padding multiple; SchNet does not: its section is untouched."""
    report = []
    recipe = load_recipe("retrieval", ["compat=3d-molm"], registry, profile_report=report)
    assert (recipe.encoder.dropout, recipe.encoder.pad_to_multiple) == (0.1, 8)
    report = []
    recipe = load_recipe("retrieval", ["compat=3d-molm"], registry, {"encoder": "schnet"}, profile_report=report)
    statuses = {s.key: s.status for s in report if s.key.startswith("encoder.")}
    assert set(statuses.values()) == {"skipped"} and "dropout" not in recipe.encoder


def test_unimol_pads_batches_to_a_multiple_of_8_without_changing_a_number(registry):
    from molbridge.core.testing import example_items

    recipe = load_recipe("retrieval", ["compat=3d-molm"], registry)
    compat = registry.build("encoder", recipe.encoder).eval()
    plain = registry.build("encoder", load_recipe("retrieval", [], registry).encoder).eval()
    plain.load_state_dict(compat.state_dict())
    items = example_items(("CC(=O)Oc1ccccc1C(=O)O", "OCC(O)CO"))  # aspirin: 13 heavy atoms + [CLS], [SEP] = 15
    batches = [e.collate([e.featurize_item(i) for i in items]) for e in (compat, plain)]
    assert (
        batches[0]["src_tokens"].shape[1] % 8 == 0
        and batches[0]["src_tokens"].shape[1] > batches[1]["src_tokens"].shape[1]
    )
    with torch.no_grad():
        out8, out = compat(batches[0]), plain(batches[1])
    n = out.atom_embeddings.shape[1]
    torch.testing.assert_close(out8.atom_embeddings[:, :n], out.atom_embeddings, rtol=0, atol=1e-5)
    compat.train()
    with torch.no_grad():  # the dropouts act only while the encoder trains (a frozen one runs in eval mode)
        assert not torch.equal(compat(batches[0]).atom_embeddings, out8.atom_embeddings)


def test_profile_keys_enter_the_run_identity(registry):
    recipe = load_recipe("qa", ["compat=3d-molm"], registry)
    diff = differences(recipe, load_recipe("qa", [], registry))
    assert {"compat", "task.number_parser", "train.lr_schedule", "task.generation.Caption.max_new_tokens"} <= set(diff)
    assert identify(recipe, registry).hash != identify(load_recipe("qa", [], registry), registry).hash


# -- generation -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    corpus = [f"The molecule has {n} atoms. Describe the input molecule." for n in range(40)]
    shape = {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 256,
        "vocab_size": 300,
    }
    build_demo_model(corpus, folder, shape=shape)
    return build_llama(LlamaLMConfig(path=str(folder)), input_dim=8).eval()


def hf_generate_call(lm, monkeypatch, **settings) -> dict:
    """The keyword arguments Hugging Face ``generate`` receives for one prompt under ``settings``."""
    seen = {}

    def fake_generate(**kwargs):
        seen.update(kwargs)
        return torch.zeros(1, 1, dtype=torch.long)

    monkeypatch.setattr(lm.model, "generate", fake_generate)
    prompt = lm.tokenize_prompts([lm.format_prompt("Describe the input molecule.", "CCO")])
    lm.generate(prompt["input_ids"], prompt["attention_mask"], torch.zeros(1, 8, 8), **settings)
    return seen


def test_stage2_generate_receives_the_references_settings(registry, tiny_lm, monkeypatch):
    settings = task_of(registry, "3d-molm-stage2").generation("Caption")
    call = hf_generate_call(tiny_lm, monkeypatch, **settings)
    expected = {"num_beams": 5, "max_new_tokens": 128, "min_new_tokens": 32, "length_penalty": 0.8}
    assert {k: call[k] for k in expected} == expected and call["repetition_penalty"] == 1.2
    ours = hf_generate_call(tiny_lm, monkeypatch, **task_of(registry, "captioning").generation("Caption"))
    assert "min_new_tokens" not in ours and "length_penalty" not in ours  # molbridge's call, as before
    assert (ours["max_new_tokens"], ours["num_beams"], ours["repetition_penalty"]) == (192, 1, 1.0)


def test_stage3_generation_per_task_and_caption_records(registry):
    task = task_of(registry, "3d-molm-stage3")
    numeric = {"num_beams": 5, "max_new_tokens": 64, "min_new_tokens": 16, "length_penalty": 0.8}
    assert task.generation("HOMO") == numeric | {"repetition_penalty": 1.2}
    assert task.generation("Description") == numeric | {"repetition_penalty": 1.2}
    assert task.generation("Caption")["max_new_tokens"] == 128  # a caption record: text, 128 tokens
    assert task.is_text("Caption") and task.is_text("Description") and not task.is_text("HOMO")
    assert task_of(registry, "qa").generation("HOMO") == {"max_new_tokens": 32}  # molbridge's default
    words = task_of(registry, "3d-molm-stage3", "task.caption_tokenizer=nltk-words")
    caption = Example(0, "Describe the input molecule.", "It is a rod-like acid.", "Caption", "pubchem_caption")
    scored = words.score("test", [caption], ["It is a rod-like acid."])
    assert scored["Caption/bleu4"] == pytest.approx(1.0) and not any("mae" in k for k in scored)


# -- caption metrics --------------------------------------------------------------------------------------------


def test_reference_tokenisation_equals_the_hand_computed_scores():
    """WordPiece: 'the molecule is an aromatic car ##box ##yla ##te .' vs 'the molecule is a car ##box ##yl ##ic
    acid .': 6/10 unigrams, 3/9 bigrams, no 4-gram -> BLEU-2 sqrt(0.6 / 3); METEOR 6 matches in 3 chunks ->
    0.6 x (1 - 0.5 x 0.5^3). ROUGE on the raw words (6 each, '.' dropped): 3 shared -> 0.5, 2 of 5 bigrams."""
    bert = load_tokenizer(default_bert())
    scores = caption_metrics(
        ["The molecule is an aromatic carboxylate."], ["The molecule is a carboxylic acid."], tokenizer=bert.tokenize
    )
    assert scores["bleu2"] == pytest.approx(math.sqrt(0.6 / 3))
    assert scores["bleu4"] < 1e-9
    assert scores["meteor"] == pytest.approx(0.6 * (1 - 0.5 * 0.5**3))
    assert (scores["rouge1"], scores["rouge2"], scores["rougeL"]) == pytest.approx((0.5, 0.4, 0.5))
    words = caption_metrics(["The molecule is an aromatic carboxylate."], ["The molecule is a carboxylic acid."])
    assert words["bleu2"] == pytest.approx(math.sqrt(4 / 7 / 3)) and words["rouge1"] == pytest.approx(4 / 7)


def test_each_stage_scores_with_its_own_reference_tokenizer(registry):
    captioning = task_of(registry, "3d-molm-stage2", "projector.bert=null")  # the default BERT stands in
    assert captioning.config.caption_tokenizer == "reference"
    assert captioning.reference_tokenizer()("carboxylate") == ["car", "##box", "##yla", "##te"]
    qa = task_of(registry, "3d-molm-stage3")
    qa.llm = SimpleNamespace(tokenizer=SimpleNamespace(tokenize=lambda text: ["<llm>", text]))
    assert qa.reference_tokenizer()("x") == ["<llm>", "x"]


# -- QA parsing ---------------------------------------------------------------------------------------------------


def test_reference_parser_and_plausibility_ranges(registry):
    answers = ["The HOMO is -25.10 eV.", "The HOMO is -5 eV, about -5.25 eV.", "I am not sure."]
    targets = ["The HOMO for the input molecule is -5.30 eV."] * 3
    config = task_of(registry, "3d-molm-stage3").config
    ranges = {prop: Interval.parse(text) for prop, text in config.plausible_ranges.items()}
    report = property_errors(answers, targets, ["HOMO"] * 3, parser=config.number_parser, ranges=ranges)["HOMO"]
    assert report["valid_rate"] == pytest.approx(2 / 3) and report["in_range_rate"] == pytest.approx(1 / 3)
    assert report["mae"] == pytest.approx((19.8 + 0.05) / 2)  # without the range: -25.10 counts
    assert report["mae_in_range"] == pytest.approx(0.05)  # first decimal number (-5.25), -25.10 rejected
    ours = property_errors(answers, targets, ["HOMO"] * 3)["HOMO"]  # molbridge: the integer -5 is the answer
    assert ours["mae"] == pytest.approx((19.8 + 0.3) / 2) and "mae_in_range" not in ours
    assert 0 in Interval.parse(REFERENCE_RANGES["Topological Polar Surface Area"])
    assert 0 not in Interval.parse(REFERENCE_RANGES["Molecular Weight"])


# -- the stage-3 mixture ------------------------------------------------------------------------------------------


class Records:
    """A split whose molecule i carries instruction records; items are just the molecule index."""

    def __init__(self, sizes: dict[str, int]):
        self.instructions = [
            {
                "instruction": "q",
                "input": "",
                "output": "The value is 1.00.",
                "task": f"{subset}-task",
                "subset": subset,
            }
            for subset, size in sizes.items()
            for _ in range(size)
        ]
        self.indices = np.arange(len(self.instructions))
        self.store = [SimpleNamespace(instructions=[r]) for r in self.instructions]

    def __getitem__(self, i):
        return {keys.MOL_ID: i}

    def set_epoch(self, epoch):
        pass


def test_stage3_mixture_draws_subsets_in_the_references_proportions_with_replacement(registry):
    sizes = {"pubchemqc_properties": 1000, "pubchem_properties": 300, "pubchem_descriptive": 100, "caption": 10}
    task = task_of(registry, "3d-molm-stage3")
    task._molecule_splits = dict.fromkeys(("train", "valid", "test"), Records(sizes))
    train = task.splits["train"]
    assert len(train) == sum(sizes.values())
    drawn = []
    for epoch in range(4):
        train.set_epoch(epoch)
        drawn.append([train.draw(i) for i in range(len(train))])
    weights = {s: n**0.25 for s, n in sizes.items()}
    counts = {s: sum(e.subset == s for epoch in drawn for e in epoch) for s in sizes}
    for subset, count in counts.items():
        assert abs(count / (4 * len(train)) - weights[subset] / sum(weights.values())) < 0.02, subset
    small = [id(e) for e in drawn[0] if e.subset == "caption"]
    assert len(small) > len(set(small))  # 10 records drawn ~170 times: with replacement
    assert drawn[0] != drawn[1]  # a fresh draw each epoch, the same one on a resumed run
    train.set_epoch(0)
    assert [train.draw(i) for i in range(50)] == drawn[0][:50]
    fixed = task_of(registry, "qa")
    fixed._molecule_splits = dict.fromkeys(("train", "valid", "test"), Records(sizes))
    assert len(fixed.splits["train"]) == sum(fixed.train_mixture.values())  # molbridge: drawn once, by task
    assert set(fixed.train_mixture) == {f"{s}-task" for s in sizes}


# -- prompts ------------------------------------------------------------------------------------------------------


def test_prompts_cut_smiles_and_descriptive_questions_as_the_reference(registry):
    task = task_of(registry, "3d-molm-stage3")
    task.llm = SimpleNamespace(format_prompt=lambda instruction, molecule: (instruction, molecule))
    long = {keys.INSTRUCTION: "q" * 100, keys.SMILES: "C" * 120}
    description, homo = long | {keys.TASK_NAME: "Description"}, long | {keys.TASK_NAME: "HOMO"}
    assert task._prompts([description, homo]) == [("q" * 64, "C" * 96), ("q" * 100, "C" * 96)]
    assert task_of(registry, "3d-molm-stage2").config.instruction == "Describe the input molecule."
    ours = task_of(registry, "qa")
    ours.llm = task.llm
    assert ours._prompts([description]) == [("q" * 100, "C" * 120)]


# -- retrieval ----------------------------------------------------------------------------------------------------


def test_inbatch_batches_follow_a_seeded_shuffle_and_rerank_adds_the_positive_logit(registry):
    task = task_of(registry, "3d-molm-stage1", "seed=3")
    generator = torch.Generator().manual_seed(0)
    mol = torch.nn.functional.normalize(torch.randn(150, 2, 16, generator=generator), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(150, 16, generator=generator), dim=-1)
    order = torch.randperm(150, generator=torch.Generator().manual_seed(3))
    assert torch.equal(task.inbatch_order(150), order)
    assert task._report(mol, text) == retrieval_report(mol[order], text[order], batch_size=64, rerank_k=64)
    assert task_of(registry, "retrieval").inbatch_order(150) is None  # molbridge: dataset order
    assert task.config.rerank_score == "positive-logit"
    logits = torch.tensor([[1.0, 3.0]])
    from molbridge.plugins.tasks.retrieval import matching_score

    assert matching_score(logits, "positive-logit").item() == 3.0
    assert matching_score(logits, "logit-margin").item() == 2.0


def test_pretraining_phases_evaluate_on_plain_descriptions(registry):
    for name in ("3d-molm-stage1-pretrain", "3d-molm-stage2-pretrain"):
        task = task_of(registry, name)
        assert (task.text_field("train"), task.text_field("test")) == ("enriched_description", "description")
        ours = task_of(registry, name, "compat=molbridge")
        assert ours.text_field("test") == "enriched_description"


# -- the Q-Former's captioning loss ------------------------------------------------------------------------------


def test_qformer_captioning_loss_is_label_smoothed(registry):
    from molbridge.plugins.tasks.stage1 import Stage1Model, Stage1Options

    recipe = load_recipe("3d-molm-stage1", [], registry)
    assert recipe.task.captioning_label_smoothing == 0.1
    seen = {}

    class TextSide(torch.nn.Module):
        hidden_size, text_pooling = 4, "cls"

        def freeze_heads(self, matching, captioning):
            pass

        def molecule_features(self, encoded):
            return torch.nn.functional.normalize(torch.ones(2, 1, 4), dim=-1)

        def text_features(self, ids, mask):
            return torch.nn.functional.normalize(torch.ones(2, 4), dim=-1)

        def caption_loss(self, encoded, ids, mask, **options):
            seen.update(options)
            return torch.zeros(())

    side = TextSide()
    options = Stage1Options(matching_weight=0.0, captioning_label_smoothing=recipe.task.captioning_label_smoothing)
    model = Stage1Model(torch.nn.Identity(), side, side, options)
    model({keys.ENCODER_INPUT: None, keys.TEXT_INPUT_IDS: torch.ones(2, 3), keys.TEXT_ATTENTION_MASK: None})
    assert seen == {"label_smoothing": 0.1}


def test_captioning_head_starts_from_the_berts_mlm_head(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    from molbridge.plugins.projectors.qformer import QFormer, QFormerConfig

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "molecule", "is", "an", "acid", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    shape = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=len(words), **shape)).save_pretrained(tmp_path)
    projector = QFormer(QFormerConfig(bert=str(tmp_path)), input_dim=8)
    projector.load_pretrained_lm_head()
    from safetensors.torch import load_file

    state = load_file(tmp_path / "model.safetensors")
    head = projector.lm_head
    assert torch.equal(head.transform.dense.weight, state["cls.predictions.transform.dense.weight"])
    assert torch.equal(head.bias[: len(words)], state["cls.predictions.bias"]) and head.bias[-1] == 0  # [DEC]
    without = QFormer(QFormerConfig(num_layers=1), input_dim=8)  # all-MiniLM-L6-v2 ships no MLM head
    with pytest.raises(CheckpointError, match="no masked-LM head .*captioning_head_init=pretrained"):
        without.load_pretrained_lm_head()


# -- the padding-mask switch: the claim it makes ------------------------------------------------------------------


def test_reference_mask_gives_padded_molecules_the_same_tokens_with_zeroed_padding_rows():
    """With molbridge's Uni-Mol (padded rows zeroed) the reference's mask makes every padded molecule read the
    same rows, so it cannot reproduce the released checkpoints: the switch says so instead of claiming it."""
    from molbridge.plugins.encoders.unimol import UniMolConfig, UniMolEncoder
    from molbridge.plugins.projectors.qformer import QFormer, QFormerConfig

    torch.manual_seed(0)
    encoder = UniMolEncoder(UniMolConfig(preset="small")).eval()
    projector = QFormer(QFormerConfig(num_layers=2, reference_padding_mask=True), input_dim=encoder.output_dim).eval()
    generator = np.random.default_rng(0)
    molecules = [(np.full(n, 6), generator.normal(size=(n, 3)) * 1.5) for n in (3, 5, 9)]
    batch = encoder.collate([encoder.featurize(z, pos) for z, pos in molecules])
    with torch.no_grad():
        encoded = encoder(batch)
        tokens = projector(encoded)
        assert torch.allclose(tokens[0], tokens[1], atol=1e-6)  # two different padded molecules, same tokens
        noise = torch.randn(encoded.atom_embeddings.shape, generator=torch.Generator().manual_seed(1))
        moved = encoded.atom_embeddings + encoded.padding_mask[..., None] * noise  # rows carrying something
        shifted = dataclasses.replace(encoded, atom_embeddings=moved)
        assert not torch.allclose(projector(shifted)[0], tokens[0], atol=1e-3)  # what they read: padded rows


# -- optimisation -------------------------------------------------------------------------------------------------


def test_weight_decay_on_every_parameter_and_no_clipping(registry):
    recipe = load_recipe("3d-molm-stage1", [], registry)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    optimizer = build_optimizer(model, 1e-4, recipe.train.weight_decay, scope=recipe.train.weight_decay_scope)
    assert [len(g["params"]) for g in optimizer.param_groups] == [4]
    assert optimizer.param_groups[0]["weight_decay"] == 0.05 and recipe.train.grad_clip is None


def lrs(train, steps: int, batches_per_epoch: int = 1) -> list[float]:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=train.lr)
    scheduler = build_scheduler(optimizer, train, batches_per_epoch)
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_stage1_2_schedule_is_lavis_cosine_per_epoch(registry):
    """LAVIS LinearWarmupCosineLRScheduler: epoch 0 warms up from 1e-6 by step / warmup (capped at one epoch),
    then lr = min + (peak - min) (1 + cos(pi epoch / epochs)) / 2, constant within an epoch."""
    overrides = [
        "train.max_steps=20",
        "train.warmup_steps=3",
        "train.lr=1e-4",
        "train.min_lr=5e-6",
        "train.grad_accum=1",
    ]
    train = load_recipe("3d-molm-stage1", overrides, registry).train
    got = lrs(train, 20, batches_per_epoch=5)
    peak, low, start = 1e-4, 5e-6, 1e-6
    expected = [min(peak, start + (peak - start) * s / 3) for s in range(5)]
    expected += [low + (peak - low) * 0.5 * (1 + math.cos(math.pi * (s // 5) / 4)) for s in range(5, 20)]
    assert got == pytest.approx(expected, rel=1e-9)


def test_stage3_schedule_is_the_references_cosine_from_start(registry):
    overrides = ["train.max_steps=40", "train.warmup_steps=4"]
    train = load_recipe("3d-molm-stage3", overrides, registry).train
    peak, low, start = 1e-5, 1e-8, 1e-6
    expected = [start + (peak - start) * s / 4 for s in range(5)]
    expected += [low + (peak - low) * 0.5 * (1 + math.cos(math.pi * s / 40)) for s in range(5, 40)]
    assert lrs(train, 40) == pytest.approx(expected, rel=1e-9)
    ours = load_recipe("qa", ["train.max_steps=40", "train.warmup_steps=4", "train.lr=1e-5"], registry).train
    assert lrs(ours, 2) == pytest.approx([1e-5 / 4, 2e-5 / 4])  # molbridge: (step + 1) / warmup from 0
