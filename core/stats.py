"""Bootstrap intervals over test items and seeds, and paired comparisons, for ``bench compare --aggregate``.

Everything here is plain numpy on per-item values (NaN = the item has no value, e.g. an answer without a number,
and is left out of that resample's statistic); :mod:`molbridge.core.compare` finds the values in the runs'
artifacts and matches items by id.

Choices, and why:

- **Items are the unit.** A test metric is a statistic (a mean, or for ``medae`` a median) over test molecules or
  questions, and the test set is one sample of them: the item-to-item spread is the main source of uncertainty
  in a single run's number, and it is invisible in mean ± std over three seeds. Seeds are the second source
  (training randomness), so a configuration's interval resamples both.
- **Items are crossed with seeds, not nested in them.** Every seed of a configuration (and every configuration
  of one dataset and split) is scored on the *same* test items. One replicate therefore draws seeds with
  replacement and *one* item resample that all drawn seeds share. Drawing items independently per seed would
  average the item noise down by the number of seeds and give an interval too narrow for "another test set".
- **Percentile bootstrap** (Efron & Tibshirani 1993, ch. 13): the interval is the 2.5% and 97.5% quantiles of
  the replicates (``numpy.quantile``, linear interpolation). It needs no normality and respects bounds (an
  accuracy interval stays in [0, 1]); with a few hundred items and metrics that are means it is accurate
  enough, and it is the method people can recompute. BCa would correct skew a little better at the cost of a
  jackknife over thousands of items; not worth it here.
- **Paired comparisons** resample the items jointly: both configurations are scored on the same draw, so the
  difference cancels what is shared (an item that is hard for everyone) and is far tighter than two separate
  intervals. Seeds are drawn jointly too when both configurations have the same seeds (pairing by seed: the
  same data order and initialisation seed), else each configuration's seeds are drawn on their own (pooled).
- **Deterministic.** :data:`RESAMPLES` = 2000 replicates (the Monte Carlo error of a 2.5% quantile is then a
  small fraction of the interval's width) from ``numpy.random.default_rng(SEED)``, a new generator per interval:
  the same runs always give the same numbers, and adding a configuration to a table changes no other row.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
SEED = 0
LEVEL = 0.95

# per-item values of a configuration: one row per seed, items in the same order in every row
Rows = Sequence[Sequence[float]] | np.ndarray
STATISTICS = ("mean", "median")
#: Elements of the (seeds x replicates x items) block gathered at once for a median (memory, not speed).
CHUNK_ELEMENTS = 4_000_000

#: How a metric's last name part reads (a ``baseline_`` prefix dropped): lower is better for errors and losses,
#: higher for accuracies, recalls, text overlap, skill and rates; anything else has no direction.
LOWER_IS_BETTER = re.compile(r"(?:^|_)(?:mae|medae|mse|rmse|mae_in_range|loss|error|ppl|perplexity)$")
HIGHER_IS_BETTER = re.compile(
    r"(?:^|_)(?:acc|accuracy|r\d+|recall|precision|f1|mrr|auc|bleu\d*|rouge\w*|meteor|skill|valid_rate|in_range_rate)$"
)
BETTER, WORSE, TIED = "better", "worse", "not distinguishable"


@dataclass(frozen=True)
class Interval:
    """A statistic and its percentile bootstrap interval from ``resamples`` replicates."""

    estimate: float
    lo: float
    hi: float
    resamples: int
    """Replicates that gave a value (one whose drawn items all lack a value gives none)."""


@dataclass(frozen=True)
class Estimate:
    """A configuration's metric: the mean over its seeds of each seed's statistic over the test items."""

    interval: Interval
    """Seeds and items resampled: the interval to report."""
    over_items: Interval
    """Items resampled, every seed kept once: the test set's share of the uncertainty."""
    over_seeds: Interval
    """Seeds resampled, items kept: the training randomness' share (a point with one seed)."""
    items: int
    seeds: int

    @property
    def estimate(self) -> float:
        return self.interval.estimate


@dataclass(frozen=True)
class Comparison:
    """Candidate minus reference on the same items, its interval and what it means for the metric."""

    difference: Interval
    verdict: str
    """``better`` / ``worse`` (the interval excludes 0; ``higher`` / ``lower`` for a metric of unknown
    direction) or ``not distinguishable``."""
    seeds: str
    """``paired by seed`` or ``pooled``."""

    def text(self, spec: str = ".3g") -> str:
        """``better (+0.079 [0.047, 0.113])``: the verdict, the difference and its interval, numbers as ``spec``."""
        d = self.difference
        return f"{self.verdict} ({_number(d.estimate, '+' + spec)} [{_number(d.lo, spec)}, {_number(d.hi, spec)}])"


def _number(value: float, spec: str) -> str:
    """``value`` as ``spec``, a difference that rounds to zero without a sign from float noise (not ``-0.000``)."""
    text = f"{value:{spec}}"
    return f"{0.0:{spec}}" if float(text.rstrip("%")) == 0 else text


def higher_is_better(metric: str) -> bool | None:
    """``test/full_m2t_acc`` -> True, ``test/LogP/mae`` -> False, ``test/n_tokens`` -> None (unknown)."""
    name = metric.rsplit("/", 1)[-1].removeprefix("baseline_")
    if LOWER_IS_BETTER.search(name):
        return False
    if HIGHER_IS_BETTER.search(name):
        return True
    return None


def verdict(lo: float, hi: float, higher: bool | None) -> str:
    """What a difference's interval [lo, hi] says: it must exclude 0 (strictly) to tell two configurations apart."""
    if lo > 0:
        return "higher" if higher is None else BETTER if higher else WORSE
    if hi < 0:
        return "lower" if higher is None else WORSE if higher else BETTER
    return TIED


def bootstrap(
    values: Sequence[float],
    *,
    statistic: str = "mean",
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> Interval:
    """One run: the percentile interval of ``statistic`` over its items."""
    return configuration([values], statistic=statistic, resamples=resamples, seed=seed, level=level).interval


def configuration(
    runs: Rows,
    *,
    statistic: str = "mean",
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> Estimate:
    """A configuration's seeds (one row of per-item values each, items in the same order) -> its estimate and
    intervals over seeds and items together, over items only and over seeds only."""
    matrix = _matrix(runs)
    point = float(np.mean(summarize(matrix, statistic)))
    # one pass gives both item-resampled intervals: the same item draws, seeds drawn or each kept once
    ((both, items_only),) = _replicates([matrix], np.random.default_rng(seed), resamples, statistic)
    ((seeds_only, _),) = _replicates([matrix], np.random.default_rng(seed), resamples, statistic, items=False)
    return Estimate(
        _interval(point, both, level),
        _interval(point, items_only, level),
        _interval(point, seeds_only, level),
        items=matrix.shape[1],
        seeds=matrix.shape[0],
    )


def paired(
    candidate: Rows,
    reference: Rows,
    *,
    higher: bool | None,
    pair_seeds: bool = False,
    statistic: str = "mean",
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> Comparison:
    """Candidate minus reference (each a seeds x items array, items in the same order in both), items resampled
    jointly; ``pair_seeds``: row i of both is the same seed and seeds are drawn jointly too (else separately).
    ``higher``: whether higher is better for the metric (see :func:`higher_is_better`)."""
    a, b = _matrix(candidate), _matrix(reference)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired comparison of {a.shape[1]} items with {b.shape[1]}: items must be the same")
    if pair_seeds and a.shape[0] != b.shape[0]:
        raise ValueError(f"pairing seeds of {a.shape[0]} runs with {b.shape[0]}")
    point = float(np.mean(summarize(a, statistic)) - np.mean(summarize(b, statistic)))
    rng = np.random.default_rng(seed)
    (first, _), (second, _) = _replicates([a, b], rng, resamples, statistic, shared_seeds=pair_seeds)
    difference = _interval(point, first - second, level)
    return Comparison(
        difference, verdict(difference.lo, difference.hi, higher), "paired by seed" if pair_seeds else "pooled"
    )


# --- the engine ----------------------------------------------------------------------------------------------


def _matrix(runs: Rows) -> np.ndarray:
    matrix = np.atleast_2d(np.asarray(runs, dtype=float))
    if matrix.ndim != 2 or not matrix.size:
        raise ValueError("per-item values: one non-empty row per seed, every row the same items")
    if not np.isfinite(matrix).any(axis=1).all():
        raise ValueError("a seed without a single item value has no statistic")
    return matrix


def summarize(values: np.ndarray, statistic: str) -> np.ndarray:
    """``statistic`` over the last axis, ignoring NaN (an all-NaN slice gives NaN, silently)."""
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; choose from {', '.join(STATISTICS)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice": such a replicate is dropped
        return (np.nanmean if statistic == "mean" else np.nanmedian)(values, axis=-1)


def _replicates(
    matrices: list[np.ndarray],
    rng: np.random.Generator,
    resamples: int,
    statistic: str,
    *,
    items: bool = True,
    shared_seeds: bool = False,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per matrix, ``resamples`` values of "mean over drawn seeds of the statistic over drawn items", and of the
    same with every seed kept once. One item draw per replicate is shared by every matrix and seed (items are
    crossed with seeds and configurations); ``items=False`` keeps the items; ``shared_seeds`` draws the same seed
    rows for every matrix (they must have as many)."""
    n = matrices[0].shape[1]
    most = max(m.shape[0] for m in matrices)
    chunk = max(1, min(resamples, CHUNK_ELEMENTS // (most * n)))
    out = [(np.empty(resamples), np.empty(resamples)) for _ in matrices]
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        drawn = rng.integers(0, n, size=(size, n)) if items else None
        counts = _counts(drawn) if drawn is not None and statistic == "mean" else None
        common = rng.integers(0, most, size=(size, most)) if shared_seeds else None
        for matrix, (drawn_seeds, kept_seeds) in zip(matrices, out, strict=True):
            count = matrix.shape[0]
            if drawn is None:  # items kept: each seed's statistic is the same in every replicate
                per_seed = np.broadcast_to(summarize(matrix, statistic), (size, count))
            elif counts is not None:
                per_seed = _weighted_mean(matrix, counts)
            else:
                per_seed = summarize(matrix[:, drawn], statistic).T  # (size, seeds)
            picks = common if common is not None else rng.integers(0, count, size=(size, count))
            drawn_seeds[start : start + size] = np.take_along_axis(per_seed, picks, axis=1).mean(axis=1)
            kept_seeds[start : start + size] = per_seed.mean(axis=1)
    return out


def _counts(drawn: np.ndarray) -> np.ndarray:
    """How often each item was drawn in each replicate: (replicates, items). A mean needs only these."""
    size, n = drawn.shape
    rows = np.repeat(np.arange(size), n) * n
    return np.bincount(rows + drawn.ravel(), minlength=size * n).reshape(size, n).astype(float)


def _weighted_mean(matrix: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each seed's mean over each replicate's drawn items, NaN items left out: (replicates, seeds)."""
    present = np.isfinite(matrix)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (counts @ np.where(present, matrix, 0.0).T) / (counts @ present.T)


def _interval(point: float, replicates: np.ndarray, level: float) -> Interval:
    kept = replicates[np.isfinite(replicates)]
    if not kept.size:
        return Interval(point, float("nan"), float("nan"), 0)
    tail = (1 - level) / 2
    lo, hi = np.quantile(kept, [tail, 1 - tail])
    return Interval(point, float(lo), float(hi), int(kept.size))
