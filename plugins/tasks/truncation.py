"""How much of a dataset's text a length limit cuts: counted at start-up, reported with the run.

A text tower that reads 128 tokens, a training sequence of ``llm.max_length`` tokens, a caption generated up to
``max_new_tokens``: each limit silently cuts texts longer than it. The tasks measure every text against its
limit before training, log a warning when more than :data:`WARN_ABOVE` of them are cut, and put the numbers in
``describe()`` (so in ``metrics.json``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

log = logging.getLogger(__name__)

#: Warn when more than this fraction of texts exceed their limit.
WARN_ABOVE = 0.01


def report(lengths: Sequence[int], limit: int | Sequence[int], what: str) -> dict[str, float | int | str]:
    """``{what, limit, texts, truncated, fraction, longest}`` for token ``lengths`` against ``limit`` (one for all,
    or one per text); warns when more than :data:`WARN_ABOVE` of them are longer (``what`` names the key that
    sets the limit)."""
    limits = [limit] * len(lengths) if isinstance(limit, int) else list(limit)
    cut = sum(length > most for length, most in zip(lengths, limits, strict=True))
    fraction = cut / len(lengths) if lengths else 0.0
    if fraction > WARN_ABOVE:
        log.warning(
            "%d of %d %s (%.1f%%) are longer than their limit and cut (longest %d tokens)",
            cut,
            len(lengths),
            what,
            100 * fraction,
            max(lengths),
        )
    return {
        "what": what,
        "limit": limit if isinstance(limit, int) else "per text",
        "texts": len(lengths),
        "truncated": int(cut),
        "fraction": round(fraction, 4),
        "longest": int(max(lengths, default=0)),
    }
