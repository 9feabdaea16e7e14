"""Evaluation plots as PNG files: ROC curves (log and linear FPR), score histograms, line plots,
completeness per bin.

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly, never pyplot:
no global backend switch (safe inside a notebook or a Dask worker) and no figures left open.
matplotlib is imported inside the functions so that importing lensfinder stays fast.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np

from lensfinder.files import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.layout_engine import ConstrainedLayoutEngine

_DPI = 110


class Curve(Protocol):
    """What ``roc_plot`` draws: ``evaluate.metrics.RocCurve`` (plots know no stage)."""

    @property
    def fpr(self) -> np.ndarray: ...
    @property
    def tpr(self) -> np.ndarray: ...
    @property
    def n_nonlenses(self) -> int: ...
    def area(self) -> float: ...


def _figure(width: float, height: float, panels: int = 1) -> tuple[Figure, list[Any]]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    axes = figure.subplots(1, panels, squeeze=False)[0]
    return figure, list(axes)


def _save(figure: Figure, path: str | Path) -> Path:
    """Write the PNG atomically (a half-written plot never replaces a good one)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=_DPI)
    return path


def roc_plot(curves: Mapping[str, Curve], path: str | Path, title: str = "ROC") -> Path:
    """ROC curves, log FPR (as Metcalf et al. 2019, Fig. 1: where a survey search lives) beside
    linear FPR; one line per curve, its AUROC in the legend. The first curve is drawn boldest
    (pass the ensemble first, then its members)."""
    if not curves:
        raise ValueError("roc_plot needs at least one curve")
    figure, (log_axes, linear_axes) = _figure(10.0, 4.4, panels=2)
    # On the log axis FPR = 0 sits at the left edge: half the smallest non-zero FPR possible.
    left_edge = 0.5 / max(curve.n_nonlenses for curve in curves.values())
    for rank, (name, curve) in enumerate(curves.items()):
        style = {"lw": 2.2, "zorder": 3} if rank == 0 else {"lw": 1.0, "alpha": 0.75}
        label = f"{name} (AUROC {curve.area():.3f})"
        log_axes.plot(np.maximum(curve.fpr, left_edge), curve.tpr, label=label, **style)
        linear_axes.plot(curve.fpr, curve.tpr, label=label, **style)
    linear_axes.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--", label="random")
    log_axes.set_xscale("log")
    log_axes.set_xlim(left_edge, 1.0)
    linear_axes.set_xlim(0.0, 1.0)
    for axes, scale in ((log_axes, "log"), (linear_axes, "linear")):
        axes.set_ylim(0.0, 1.01)
        axes.set_xlabel(f"false positive rate ({scale})")
        axes.set_ylabel("true positive rate")
        axes.grid(True, which="major", alpha=0.3)
    linear_axes.legend(loc="lower right", fontsize="small")
    figure.suptitle(title)
    return _save(figure, path)


def score_histograms(
    labels: Any, scores: Any, path: str | Path, title: str = "Scores by class", bins: int = 50
) -> Path:
    """Score distributions of lenses and non-lenses on a log count axis, where the few
    high-scoring non-lenses (a survey's contaminants) stay visible. ``labels``: 0/1, as
    ``evaluate.metrics.check_labels_scores`` leaves them."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    in_unit_range = scores.min() >= 0.0 and scores.max() <= 1.0
    edges = (
        np.linspace(0.0, 1.0, bins + 1) if in_unit_range else np.histogram_bin_edges(scores, bins)
    )
    figure, (axes,) = _figure(6.0, 4.0)
    for value, name, colour in ((0, "non-lenses", "tab:blue"), (1, "lenses", "tab:orange")):
        chosen = scores[labels == value]
        axes.hist(chosen, bins=edges, histtype="step", lw=1.6, color=colour,
                  label=f"{name} ({len(chosen)})")  # fmt: skip
    axes.set_yscale("log")
    axes.set_xlabel("score")
    axes.set_ylabel("objects per bin")
    axes.legend(loc="best", fontsize="small")
    axes.grid(True, alpha=0.3)
    axes.set_title(title)
    return _save(figure, path)


def line_plot(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    path: str | Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
    log_x: bool = False,
    hlines: Mapping[str, float] | None = None,
    caption: str = "",
) -> Path:
    """One or more lines against a shared x (e.g. AUROC against test batch size); ``hlines`` are
    dashed horizontal references (e.g. eval-mode AUROC, which no batch size changes) and
    ``caption`` a wrapped note under the axes (what the reader must not conclude)."""
    if not series:
        raise ValueError("line_plot needs at least one series")
    figure, (axes,) = _figure(6.0, 4.0 + (0.9 if caption else 0.0))
    for name, values in series.items():
        if len(values) != len(x):
            raise ValueError(f"series {name!r} has {len(values)} values for {len(x)} x values")
        axes.plot(x, values, marker="o", label=name)
    for (name, level), colour in zip(
        (hlines or {}).items(), ("black", "grey", "brown"), strict=False
    ):
        axes.axhline(level, linestyle="--", color=colour, linewidth=1.2, label=name)
    if caption:
        figure.text(0.01, 0.0, textwrap.fill(caption, 105), fontsize="x-small", va="bottom")
        # _figure makes every figure with layout="constrained"
        cast("ConstrainedLayoutEngine", figure.get_layout_engine()).set(rect=(0, 0.16, 1, 0.84))
    if log_x:  # ticks at the data points read better than powers of ten for a few values
        axes.set_xscale("log")
        axes.set_xticks(list(x), labels=[f"{value:g}" for value in x])
        axes.minorticks_off()
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    if len(series) + len(hlines or {}) > 1:
        axes.legend(fontsize="small")
    if title:
        axes.set_title(title)
    return _save(figure, path)


def completeness_plot(
    panels: Mapping[str, tuple[Sequence[str], Mapping[str, Sequence[float | None]]]],
    path: str | Path,
    title: str = "Lens completeness",
) -> Path:
    """One panel per binned quantity (e.g. Einstein radius, source magnitude): the fraction of
    lenses found in each bin, one line per operating point; ``panels`` maps the x label to
    ``(bin names, {line name: value per bin, None where the bin is empty})``."""
    if not panels:
        raise ValueError("completeness_plot needs at least one panel")
    figure, axes_list = _figure(5.0 * len(panels), 4.0, panels=len(panels))
    for axes, (xlabel, (bins, series)) in zip(axes_list, panels.items(), strict=True):
        x = np.arange(len(bins))
        for name, values in series.items():
            if len(values) != len(bins):
                raise ValueError(f"series {name!r} has {len(values)} values for {len(bins)} bins")
            y = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
            axes.plot(x, y, marker="o", label=name)
        axes.set_xticks(x, labels=list(bins), rotation=30, ha="right", fontsize="small")
        axes.set_ylim(-0.02, 1.02)  # a line at 0 stays visible
        axes.set_xlabel(xlabel)
        axes.set_ylabel("completeness (lenses found)")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="small")
    figure.suptitle(title)
    return _save(figure, path)


def grouped_bar_plot(
    groups: Sequence[str],
    series: Mapping[str, tuple[Sequence[float], Sequence[tuple[float, float]] | None]],
    path: str | Path,
    ylabel: str,
    title: str = "",
    ylim: tuple[float, float] | None = None,
    reference: float | None = None,
) -> Path:
    """Bars side by side per group, one colour per series, each series ``(values, intervals)``
    with optional (low, high) error bars (e.g. AUROC and its bootstrap CI against a paper's);
    ``reference`` draws a dashed horizontal line (e.g. AUROC 0.5, chance)."""
    if not series:
        raise ValueError("grouped_bar_plot needs at least one series")
    figure, (axes,) = _figure(max(6.0, 0.8 * len(groups) + 2), 4.0)
    width = 0.8 / len(series)
    x = np.arange(len(groups))
    for i, (name, (values, intervals)) in enumerate(series.items()):
        if len(values) != len(groups):
            raise ValueError(f"series {name!r} has {len(values)} values for {len(groups)} groups")
        heights = np.asarray(values, dtype=float)
        error = None
        if intervals is not None:
            low, high = np.asarray(intervals, dtype=float).T
            error = np.vstack([heights - low, high - heights]).clip(min=0)
        offset = (i - (len(series) - 1) / 2) * width
        axes.bar(x + offset, heights, width, yerr=error, capsize=3, label=name)
    if reference is not None:
        axes.axhline(reference, color="grey", linestyle="--", linewidth=1)
    axes.set_xticks(x, labels=list(groups))
    axes.set_ylabel(ylabel)
    if ylim is not None:
        axes.set_ylim(*ylim)
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize="small")
    if title:
        axes.set_title(title)
    return _save(figure, path)


def reliability_plot(
    curves: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, title: str = ""
) -> Path:
    """Reliability diagram: lens fraction against mean probability per bin (the rows of
    ``calibration.reliability``), one line per curve (e.g. before and after the temperature);
    a calibrated model lies on the diagonal."""
    if not curves:
        raise ValueError("reliability_plot needs at least one curve")
    figure, (axes,) = _figure(5.2, 4.6)
    axes.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--", label="calibrated")
    for name, rows in curves.items():
        filled = [row for row in rows if row["n"]]
        x = [row["mean_probability"] for row in filled]
        y = [row["lens_fraction"] for row in filled]
        axes.plot(x, y, marker="o", label=name)
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.0)
    axes.set_xlabel("mean predicted probability (per bin)")
    axes.set_ylabel("fraction of lenses (per bin)")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper left", fontsize="small")
    if title:
        axes.set_title(title)
    return _save(figure, path)


def theta_e_plot(
    truth: Any, mean: Any, sigma: Any, path: str | Path, title: str = "Einstein radius"
) -> Path:
    """Predicted against true theta_E (arcsec) with the predicted 1-sigma as error bars, beside
    the histogram of ``(predicted - true) / sigma``: a calibrated head gives a unit Gaussian
    (drawn), about 68% of it within +-1."""
    truth, mean, sigma = (np.asarray(a, dtype=np.float64) for a in (truth, mean, sigma))
    figure, (scatter_axes, pull_axes) = _figure(10.0, 4.4, panels=2)
    high = float(np.nanmax(np.r_[truth, mean, 1.0])) * 1.05
    scatter_axes.plot([0, high], [0, high], color="0.6", lw=0.8, ls="--", label="predicted = true")
    scatter_axes.errorbar(truth, mean, yerr=sigma, fmt="o", ms=3, lw=0.6, alpha=0.6,
                          label=f"lenses ({len(truth)})")  # fmt: skip
    scatter_axes.set_xlim(0, high)
    scatter_axes.set_ylim(0, high)
    scatter_axes.set_xlabel('true θE (")')
    scatter_axes.set_ylabel('predicted θE ± σ (")')
    scatter_axes.grid(True, alpha=0.3)
    scatter_axes.legend(loc="upper left", fontsize="small")
    pull = (mean - truth) / sigma
    pull = pull[np.isfinite(pull)]
    edges = np.linspace(-5, 5, 41)
    pull_axes.hist(np.clip(pull, -5, 5), bins=edges, density=True, alpha=0.7, label="lenses")
    grid = np.linspace(-5, 5, 201)
    pull_axes.plot(grid, np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi), color="k", lw=1,
                   label="unit Gaussian")  # fmt: skip
    pull_axes.set_xlabel("(predicted - true) / σ  (clipped to ±5)")
    pull_axes.set_ylabel("density")
    pull_axes.grid(True, alpha=0.3)
    pull_axes.legend(fontsize="small")
    figure.suptitle(title)
    return _save(figure, path)
