"""Figures for ``bench compare --plots``: pure functions from plain data to a matplotlib ``Figure``.

Nothing here reads MLflow or files (see :mod:`molbridge.core.compare_report`), so tests can draw any
figure from synthetic numbers and inspect it. Figures are built with ``matplotlib.figure.Figure``, not
pyplot: no global state, no GUI backend, and a figure is freed once it is no longer referenced.

Every figure carries a title, axis labels, a legend and a caption line (a ``Text`` with gid ``caption``)
saying which runs, seeds and metric it shows. Configurations keep one colour across all figures when the
same ordered list of configurations is passed to :func:`palette`.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.ticker import MaxNLocator

CAPTION_GID = "caption"
CHARS_PER_INCH = 19  # of 7-point caption text: how wide a caption line may be
LINESTYLES = ("-", "--", ":", "-.")


@dataclass
class Curve:
    """One run's metric history: steps and values, drawn in its configuration's colour."""

    config: str
    label: str
    steps: Sequence[float]
    values: Sequence[float]


def palette(configs: Sequence[str]) -> dict[str, tuple]:
    """A colour per configuration, in the given order (tab10, or tab20 beyond ten configurations)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(configs) <= 10 else "tab20"]
    return {config: cmap(i % cmap.N) for i, config in enumerate(configs)}


def caption_of(fig: Figure) -> str:
    """The caption of a figure drawn here, unwrapped ("" when it has none)."""
    return next((" ".join(t.get_text().split("\n")) for t in fig.texts if t.get_gid() == CAPTION_GID), "")


def _figure(width: float, height: float, caption: str) -> Figure:
    """A figure with constrained layout that leaves room at the bottom for the wrapped caption."""
    lines = textwrap.wrap(caption, int(width * CHARS_PER_INCH), break_on_hyphens=False) or [""]
    bottom = (0.18 * len(lines) + 0.1) / height  # inches of caption as a fraction of the figure
    fig = Figure(figsize=(width, height), layout="constrained")
    engine = fig.get_layout_engine()
    assert isinstance(engine, ConstrainedLayoutEngine)  # layout="constrained" above
    engine.set(rect=(0, bottom, 1, 1 - bottom))
    fig.text(0.01, 0.02 / height, "\n".join(lines), fontsize=7, va="bottom", ha="left", gid=CAPTION_GID)
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG (the Agg renderer, whatever backend pyplot would pick)."""
    path = Path(path)
    fig.savefig(path, format="png", dpi=120)
    return path


# --- a metric per configuration ----------------------------------------------------------------------------


def metric_bars(
    values: Mapping[str, Sequence[tuple[str, float]]],
    metric: str,
    caption: str,
    baseline: float | None = None,
    intervals: Mapping[str, tuple[float, float]] | None = None,
) -> Figure:
    """A bar per configuration at the mean over seeds, a point per seed, and an error bar: the configuration's
    interval ``(lo, hi)`` from ``intervals`` where it has one (a bootstrap interval; the caption says which),
    else the sample std over seeds.

    ``values`` maps a configuration to its (seed, value) pairs; a configuration without values gets no bar.
    ``baseline``, the task's own baseline scored in the same runs, is drawn as a dashed line across.
    """
    configs = [c for c, pairs in values.items() if pairs]
    colors = palette(list(values))
    intervals = intervals or {}
    fig = _figure(max(5.0, 1.5 + 0.9 * len(configs)), 4.6, caption)
    ax = fig.add_subplot()
    labelled: set[str] = set()
    for x, config in enumerate(configs):
        seeds = np.array([v for _, v in values[config]], dtype=float)
        mean = seeds.mean()
        error: np.ndarray | float | None
        if config in intervals:
            lo, hi = intervals[config]
            # a percentile interval need not be centred on the mean (nor, for a median, contain it): clip at 0
            error, kind = np.array([[max(mean - lo, 0.0)], [max(hi - mean, 0.0)]]), "mean, interval (see caption)"
        else:
            error, kind = (seeds.std(ddof=1) if len(seeds) > 1 else None), "mean ± sample std"
        ax.bar(
            x,
            mean,
            yerr=error,
            color=colors[config],
            alpha=0.75,
            capsize=5,
            width=0.6,
            label=kind if kind not in labelled else None,
        )
        labelled.add(kind)
        ax.scatter(
            np.full(len(seeds), x) + _jitter(len(seeds)),
            seeds,
            color="black",
            s=14,
            zorder=3,
            label="one seed" if x == 0 else None,
        )
    if baseline is not None:
        ax.axhline(baseline, color="0.3", linestyle="--", linewidth=1.2, label=f"baseline ({baseline:.3g})")
    ax.set_xticks(range(len(configs)), configs, rotation=20, ha="right")
    ax.set_xlim(-0.7, len(configs) - 0.3)
    ax.margins(y=0.2)  # headroom for the legend
    ax.set_xlabel("configuration")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per configuration")
    ax.legend(fontsize=8)
    return fig


def _jitter(n: int) -> np.ndarray:
    """Horizontal offsets so that seeds with equal values stay visible side by side."""
    return np.linspace(-0.15, 0.15, n) if n > 1 else np.zeros(n)


# --- retrieval: Recall@k over k ----------------------------------------------------------------------------


def recall_at_k(ranks: Sequence[int], n: int | None = None) -> np.ndarray:
    """Recall@k for k = 1..n (default: the number of ranks): the share of ranks below k (rank 0 = first)."""
    positions = np.asarray(ranks, dtype=np.int64)
    n = len(positions) if n is None else n
    hits = np.bincount(np.clip(positions, 0, n), minlength=n + 1)[:n]  # ranks >= n never count
    return np.cumsum(hits) / len(positions)


DIRECTIONS = {"m2t": "molecule → text", "t2m": "text → molecule"}


def recall_curves(
    ranks: Mapping[str, Sequence[Mapping[str, Sequence[int]]]],
    caption: str,
    *,
    baseline: Sequence[Mapping[str, Sequence[int]]] = (),
    split: str = "test",
) -> Figure:
    """Full-set Recall@k against k (log scale), one panel per direction, one line per configuration.

    ``ranks`` maps a configuration to one ``{"m2t": ranks, "t2m": ranks}`` per seed; the line is the mean
    over seeds and the band spans min..max. ``baseline`` (the fingerprint baseline, one per run) is drawn
    dashed, averaged over every run given.
    """
    colors = palette(list(ranks))
    fig = _figure(11, 4.8, caption)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (direction, title) in zip(axes, DIRECTIONS.items(), strict=True):
        for config, runs in ranks.items():
            _band(ax, [r[direction] for r in runs], colors[config], f"{config} (n={len(runs)})")
        if baseline:
            _band(
                ax,
                [r[direction] for r in baseline],
                "0.35",
                f"fingerprint baseline (n={len(baseline)})",
                linestyle="--",
            )
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("k (candidates retrieved)")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("Recall@k (full set)")
    axes[0].legend(fontsize=8, loc="upper left")  # curves start low on the left
    n = max(len(r[d]) for runs in ranks.values() for r in runs for d in DIRECTIONS)
    fig.suptitle(f"Full-set Recall@k on {split} (N = {n} candidates)")
    return fig


def _band(ax, runs: Sequence[Sequence[int]], color, label: str, linestyle: str = "-") -> None:
    n = min(len(r) for r in runs)  # runs of one configuration rank the same candidates
    curves = np.stack([recall_at_k(r, n) for r in runs])
    k = np.arange(1, n + 1)
    ax.plot(k, curves.mean(axis=0), color=color, label=label, linestyle=linestyle)
    if len(runs) > 1:
        ax.fill_between(k, curves.min(axis=0), curves.max(axis=0), color=color, alpha=0.2, linewidth=0)


# --- QA: predicted against true ----------------------------------------------------------------------------


@dataclass
class Parity:
    """One property's answers: true and predicted values of the parsed answers, with each one's seed."""

    true: list[float]
    predicted: list[float]
    seeds: list[str]
    unparsed: int = 0


def parity_plot(properties: Mapping[str, Parity], title: str, caption: str) -> Figure:
    """One panel per numeric property: predicted against true, the y = x line, MAE in the panel title.

    Axes span the true values (plus a margin); a prediction beyond them is drawn on the edge as an ``x``
    and counted, so one wild answer does not squash the rest into a corner.
    """
    cols = min(4, len(properties))
    rows = math.ceil(len(properties) / cols)
    fig = _figure(3.6 * cols + 0.4, 3.4 * rows + 0.8, caption)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax, (prop, data) in zip(axes, properties.items(), strict=False):
        _parity_panel(ax, prop, data)
    for ax in axes[len(properties) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig


def _parity_panel(ax, prop: str, data: Parity) -> None:
    true, predicted = np.asarray(data.true, dtype=float), np.asarray(data.predicted, dtype=float)
    if len(true):
        lo, hi = true.min(), true.max()
        margin = 0.25 * (hi - lo) or max(abs(hi), 1.0) * 0.1
        lo, hi = lo - margin, hi + margin
        shown = np.clip(predicted, lo, hi)
        off = shown != predicted
        seeds = np.asarray(data.seeds)
        for seed in dict.fromkeys(data.seeds):
            on = (seeds == seed) & ~off
            ax.scatter(true[on], shown[on], s=12, alpha=0.7, label=f"seed {seed}")
        if off.any():
            ax.scatter(true[off], shown[off], marker="x", color="red", s=20, label=f"off scale ({off.sum()})")
        ax.plot([lo, hi], [lo, hi], color="0.3", linewidth=1, label="y = x")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        mae = float(np.abs(predicted - true).mean())
        ax.set_title(f"{prop}\nMAE {mae:.3g} (n={len(true)}, {data.unparsed} unparsed)", fontsize=9)
    else:
        ax.set_title(f"{prop}\nno parsed answer ({data.unparsed} unparsed)", fontsize=9)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.legend(fontsize=7)


# --- training curves ---------------------------------------------------------------------------------------


def training_curves(curves: Sequence[Curve], metric: str, caption: str, configs: Sequence[str] = ()) -> Figure:
    """``metric`` against step, one line per run: colour by configuration, line style by seed."""
    colors = palette(list(configs) or list(dict.fromkeys(c.config for c in curves)))
    fig = _figure(8, 4.6, caption)
    ax = fig.add_subplot()
    seen: dict[str, int] = {}
    for curve in curves:
        index = seen[curve.config] = seen.get(curve.config, -1) + 1
        ax.plot(
            curve.steps,
            curve.values,
            color=colors[curve.config],
            label=curve.label,
            linestyle=LINESTYLES[index % len(LINESTYLES)],
            marker="." if len(curve.steps) < 30 else None,
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncols=2 if len(curves) > 8 else 1)
    return fig
