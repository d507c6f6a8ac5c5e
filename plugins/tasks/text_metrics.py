"""Captioning metrics (3D-MoLM protocol): BLEU-2, BLEU-4, ROUGE-1/2/L F and METEOR on one tokenisation.

Tokeniser, the same for every metric: text is split into sentences by NLTK's Punkt algorithm with no trained
model (the trained ``punkt`` data is a download, so abbreviations get no special treatment), each sentence is
lower-cased and split by ``NLTKWordTokenizer`` (the improved Treebank tokeniser behind ``word_tokenize``).
Punctuation tokens are kept. See :func:`tokenize`.

- BLEU: ``nltk.translate.bleu_score.corpus_bleu`` (one reference per prediction), weights (.5, .5) and
  (.25,) * 4, no smoothing (as the reference implementation).
- ROUGE: ``rouge_score`` F-measure, no stemming, fed the tokens above through a whitespace tokeniser (its own
  tokeniser would drop punctuation and non-ASCII characters); mean over pairs.
- METEOR: ``nltk.translate.meteor_score`` on the tokens with WordNet 3.0 read offline
  (:mod:`molbridge.core.wordnet`); mean over pairs. Fails with WordNetUnavailableError, never scores 0.

Values are fractions in [0, 1]; 3D-MoLM reports them x100.

3D-MoLM's own tokenisation (``caption_tokenizer: reference``, :func:`caption_metrics` with ``tokenizer``):
BLEU and METEOR on the tokens of a subword tokenizer (its ``tokenize``; stage 2: SciBERT's WordPiece, stage 3:
the LLM's), with ``[PAD]``, ``[CLS]`` and ``[SEP]`` removed; ROUGE on the raw texts with rouge-score's default
tokenizer (lower-cased alphanumeric words, no stemming). See model/help_funcs.py ``caption_evaluate`` of
lsh0520/3D-MoLM.
"""

import functools
import warnings
from collections.abc import Callable, Sequence

from molbridge.core.errors import MolbridgeError
from molbridge.core.wordnet import wordnet_reader

# nltk and rouge_score are imported inside the functions: importing nltk takes ~1 s, and task modules are
# imported by every command that loads the plugins.
CAPTION_METRICS = ("bleu2", "bleu4", "rouge1", "rouge2", "rougeL", "meteor")
#: Tokens the reference filters out of its subword tokens before scoring.
REFERENCE_DROPPED = ("[PAD]", "[CLS]", "[SEP]")


@functools.cache
def _tokenizers():
    from nltk.tokenize import NLTKWordTokenizer, PunktSentenceTokenizer

    return PunktSentenceTokenizer(), NLTKWordTokenizer()


def tokenize(text: str) -> list[str]:
    """The one tokenisation all caption metrics use: Punkt sentences (untrained), lower-case, NLTK words."""
    sentences, words = _tokenizers()
    return [token for sentence in sentences.tokenize(text) for token in words.tokenize(sentence.lower())]


class _Whitespace:
    """rouge-score tokenizer interface over text already tokenised and joined with spaces."""

    def tokenize(self, text: str) -> list[str]:
        return text.split()


def _check(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise MolbridgeError(f"caption metrics: {len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise MolbridgeError("caption metrics: no predictions to score")
    for name, texts in (("prediction", predictions), ("reference", references)):
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise MolbridgeError(f"caption metrics: {name} {i} is {type(text).__name__}, expected str")
    empty = [i for i, text in enumerate(references) if not text.strip()]
    if empty:  # an empty generation is a fair 0; an empty reference is broken data
        raise MolbridgeError(f"caption metrics: reference(s) {empty[:10]} are empty")


def bleu(hypotheses: list[list[str]], references: list[list[str]]) -> dict[str, float]:
    """Corpus BLEU-2 and BLEU-4 over tokenised pairs (one reference each)."""
    from nltk.translate.bleu_score import corpus_bleu

    refs = [[r] for r in references]
    with warnings.catch_warnings():  # NLTK warns when an n-gram order has no match; the score is then 0
        warnings.simplefilter("ignore", UserWarning)
        return {
            "bleu2": float(corpus_bleu(refs, hypotheses, weights=(0.5, 0.5))),
            "bleu4": float(corpus_bleu(refs, hypotheses, weights=(0.25,) * 4)),
        }


def rouge(hypotheses: list[list[str]], references: list[list[str]]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure over tokenised pairs."""
    return _mean_rouge([" ".join(h) for h in hypotheses], [" ".join(r) for r in references], _Whitespace())


def _mean_rouge(hypotheses: list[str], references: list[str], tokenizer=None) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure; ``tokenizer`` None is rouge-score's own (as 3D-MoLM scores raw text)."""
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=tokenizer)
    totals = dict.fromkeys(("rouge1", "rouge2", "rougeL"), 0.0)
    for hyp, ref in zip(hypotheses, references, strict=True):
        for key, score in scorer.score(ref, hyp).items():
            totals[key] += score.fmeasure
    return {key: total / len(hypotheses) for key, total in totals.items()}


def meteor(hypotheses: list[list[str]], references: list[list[str]], wordnet=None) -> float:
    """Mean METEOR over tokenised pairs; ``wordnet`` defaults to the offline WordNet 3.0 reader."""
    from nltk.translate.meteor_score import meteor_score

    wordnet = wordnet or wordnet_reader()
    scores = [meteor_score([ref], hyp, wordnet=wordnet) for hyp, ref in zip(hypotheses, references, strict=True)]
    return float(sum(scores) / len(scores))


def caption_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    wordnet=None,
    tokenizer: Callable[[str], list[str]] | None = None,
) -> dict[str, float]:
    """BLEU-2/4, ROUGE-1/2/L F and METEOR (fractions in [0, 1]) of generated texts against one reference each.

    ``tokenizer`` None: :func:`tokenize` for all three. Given (a subword tokenizer's ``tokenize``), 3D-MoLM's
    protocol: BLEU and METEOR on its tokens without ``[PAD]``/``[CLS]``/``[SEP]``, ROUGE on the raw texts."""
    _check(predictions, references)
    if tokenizer is None:
        hyps = [tokenize(p) for p in predictions]
        refs = [tokenize(r) for r in references]
        return {**bleu(hyps, refs), **rouge(hyps, refs), "meteor": meteor(hyps, refs, wordnet)}
    hyps = [subword_tokens(p, tokenizer) for p in predictions]
    refs = [subword_tokens(r, tokenizer) for r in references]
    raw = _mean_rouge(list(predictions), list(references))
    return {**bleu(hyps, refs), **raw, "meteor": meteor(hyps, refs, wordnet)}


def subword_tokens(text: str, tokenizer: Callable[[str], list[str]]) -> list[str]:
    """3D-MoLM's caption tokens: the tokenizer's pieces without its padding and boundary tokens."""
    return [t for t in tokenizer(text) if t not in REFERENCE_DROPPED] if text else []
