"""Caption metrics against hand computations, the shared tokeniser, and the offline WordNet set-up."""

import os
from pathlib import Path

import pytest

from molbridge.core import wordnet as wn
from molbridge.core.errors import MolbridgeError
from molbridge.plugins.tasks.text_metrics import CAPTION_METRICS, caption_metrics, meteor, tokenize


@pytest.fixture(scope="module")
def wordnet(tmp_path_factory):
    """The real WordNet 3.0 reader, built in a temporary cache. CI must have it (apt wordnet-base); a
    developer machine without it skips these tests with the install hint."""
    try:
        return wn.wordnet_reader(cache_root=tmp_path_factory.mktemp("cache"))
    except wn.WordNetUnavailableError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


def test_tokenizer_is_stated_and_shared():
    text = "The molecule is a 2-(acetyloxy)benzoic acid. It weighs 180.16 g/mol; its formula is C9H8O4."
    assert tokenize(text) == [
        "the",
        "molecule",
        "is",
        "a",
        "2-",
        "(",
        "acetyloxy",
        ")",
        "benzoic",
        "acid",
        ".",
        "it",
        "weighs",
        "180.16",
        "g/mol",
        ";",
        "its",
        "formula",
        "is",
        "c9h8o4",
        ".",
    ]


def test_identical_captions(wordnet):
    text = "The molecule is an aromatic carboxylic acid with a role as a metabolite."
    scores = caption_metrics([text, text], [text, text], wordnet=wordnet)
    assert set(scores) == set(CAPTION_METRICS)
    for key in ("bleu2", "bleu4", "rouge1", "rouge2", "rougeL"):
        assert scores[key] == pytest.approx(1.0)
    m = len(tokenize(text))  # 14 matches in one chunk: METEOR = Fmean * (1 - 0.5 * (1 / m) ** 3), Fmean = 1
    assert scores["meteor"] == pytest.approx(1 - 0.5 / m**3)


def test_disjoint_captions(wordnet):
    scores = caption_metrics(["alpha beta gamma delta"], ["one two three four"], wordnet=wordnet)
    assert scores == dict.fromkeys(CAPTION_METRICS, 0.0)


def test_small_example_by_hand(wordnet):
    # hyp: the cat sat on my mat / ref: the cat sat on a mat (6 tokens each, brevity penalty 1, no word twice)
    # clipped n-gram precisions: 1-grams 5/6, 2-grams 3/5, 3-grams 2/4, 4-grams 1/3
    scores = caption_metrics(["The cat sat on my mat"], ["the cat sat on a mat"], wordnet=wordnet)
    assert scores["bleu2"] == pytest.approx((5 / 6 * 3 / 5) ** 0.5)
    assert scores["bleu4"] == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    assert scores["rouge1"] == pytest.approx(5 / 6)  # 5 shared unigrams of 6 on each side
    assert scores["rouge2"] == pytest.approx(3 / 5)
    assert scores["rougeL"] == pytest.approx(5 / 6)  # LCS "the cat sat on mat"
    # METEOR: 5 aligned words (P = R = 5/6, Fmean = 5/6) in 2 chunks: penalty 0.5 * (2/5)^3
    assert scores["meteor"] == pytest.approx(5 / 6 * (1 - 0.5 * (2 / 5) ** 3))


def test_bleu_is_corpus_level_and_rouge_a_mean(wordnet):
    # corpus BLEU pools n-gram counts: pair 2 alone has no 2-gram match, pooled it still counts pair 1's
    scores = caption_metrics(["the cat sat", "dog runs"], ["the cat sat", "runs dog"], wordnet=wordnet)
    # 1-grams 5/5, 2-grams (2 + 0)/(2 + 1)
    assert scores["bleu2"] == pytest.approx((1 * 2 / 3) ** 0.5)
    assert scores["rouge2"] == pytest.approx((1 + 0) / 2)


def test_meteor_uses_wordnet_synonyms(wordnet):
    # "dog" and "hound" share a WordNet 3.0 synset (and are their own Porter stems): 3 matches in one chunk,
    # as if identical; without the synonym it would be 2 matches in 2 chunks
    score = meteor([["the", "dog", "sat"]], [["the", "hound", "sat"]], wordnet=wordnet)
    assert score == pytest.approx(1 - 0.5 / 3**3)


def test_empty_generation_scores_zero(wordnet):
    assert caption_metrics([""], ["the cat sat on a mat"], wordnet=wordnet) == dict.fromkeys(CAPTION_METRICS, 0.0)


def test_bad_input():
    with pytest.raises(MolbridgeError, match="2 predictions but 1 references"):
        caption_metrics(["a", "b"], ["a"])
    with pytest.raises(MolbridgeError, match="no predictions"):
        caption_metrics([], [])
    with pytest.raises(MolbridgeError, match="reference 1 is NoneType"):
        caption_metrics(["a", "b"], ["a", None])
    with pytest.raises(MolbridgeError, match=r"reference\(s\) \[1\] are empty"):
        caption_metrics(["a", "b"], ["a", "  "])


# --- offline WordNet set-up (core/wordnet.py) ---


def fake_source(folder: Path, size: int = 1) -> Path:
    """A folder with every required dict file name (contents are irrelevant to the build logic)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in wn.REQUIRED:
        (folder / name).write_text("x" * size)
    return folder


def test_build_adds_lexnames_and_optional_files(tmp_path):
    target = wn.corpus_dir([fake_source(tmp_path / "src")], cache_root=tmp_path / "cache")
    assert target == tmp_path / "cache" / "nltk_data" / "corpora" / "wordnet"  # the layout NLTK requires
    assert (target / "lexnames").read_text() == wn.lexnames_text()
    assert (target / "index.sense").read_text() == ""
    assert all((target / name).read_text() == "x" for name in wn.REQUIRED)


def test_cache_is_reused_rebuilt_on_change_and_kept_without_source(tmp_path):
    source, cache = fake_source(tmp_path / "src"), tmp_path / "cache"
    target = wn.corpus_dir([source], cache)
    (target / "lexnames").write_text("touched")
    assert wn.corpus_dir([source], cache) == target and (target / "lexnames").read_text() == "touched"
    fake_source(source, size=2)  # e.g. a package upgrade
    assert (wn.corpus_dir([source], cache) / "lexnames").read_text() == wn.lexnames_text()
    assert wn.corpus_dir([tmp_path / "gone"], cache) == target


def test_missing_wordnet_is_a_clear_error(tmp_path, monkeypatch):
    partial = fake_source(tmp_path / "partial")
    (partial / "data.noun").unlink()
    with pytest.raises(wn.WordNetUnavailableError) as caught:
        wn.corpus_dir([tmp_path / "nowhere", partial], cache_root=tmp_path / "cache")
    message = str(caught.value)
    assert f"{tmp_path / 'nowhere'}: not found" in message
    assert f"{partial}: missing data.noun" in message
    assert "apt-get install --no-install-recommends wordnet-base" in message and "MOLBRIDGE_WORDNET_DIR" in message
    # METEOR itself raises rather than scoring 0
    monkeypatch.setenv("MOLBRIDGE_WORDNET_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("MOLBRIDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(wn, "SYSTEM_DIR", tmp_path / "no-system-wordnet")
    with pytest.raises(wn.WordNetUnavailableError, match="METEOR needs WordNet 3.0"):
        caption_metrics(["a cat"], ["a cat"])


def test_generated_lexnames_match_the_data_files(wordnet):
    """Every synset's lexicographer file number names a file of its own part of speech, and all 45 occur."""
    root = Path(wordnet.root.path)
    names = [line.split("\t")[1] for line in wn.lexnames_text().splitlines()]
    used = set()
    for pos in ("noun", "verb", "adj", "adv"):
        with open(root / f"data.{pos}", encoding="utf8") as lines:
            for line in lines:
                if not line.startswith("  "):  # licence header lines start with two spaces
                    number = int(line.split(" ", 2)[1])
                    assert names[number].split(".")[0] == pos, line[:40]
                    used.add(number)
    assert used == set(range(45))
    assert wordnet.synsets("dog")[0].lexname() == "noun.animal"
