"""Ranking metrics of a lens finder: ROC, AUROC with a bootstrap CI, the challenge's TPR0/TPR10.

Pure numpy functions of ``(labels, scores)``; labels are 0/1 (1 = lens), higher score = more
lens-like. Tied scores are one threshold step everywhere: a classifier cannot separate objects it
scores equally, so a tie between a lens and a non-lens never counts as the lens ranked first.
That rule makes AUROC the Mann-Whitney estimate (ties count 1/2) and makes TPR0 and TPR10 follow
the Lens Finding Challenge definitions (Metcalf et al. 2019, A&A 625, A119, Sect. 5).

Bad input (lengths that differ, NaN scores, unknown labels, one class only) raises
``DataError``: a metric must never come out NaN silently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lensfinder.config import EvaluateConfig
from lensfinder.errors import DataError


def check_labels_scores(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(labels as int8 0/1, scores as float64)``; a clear ``DataError`` otherwise."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or scores.ndim != 1:
        raise DataError(
            f"labels and scores must be 1-D, got shapes {labels.shape} and {scores.shape}"
        )
    if len(labels) != len(scores):
        raise DataError(f"{len(labels)} labels but {len(scores)} scores: lengths must match")
    if len(labels) == 0:
        raise DataError("no objects to evaluate (empty labels and scores)")
    if labels.dtype == bool:
        labels = labels.astype(np.int8)
    unknown = int(np.count_nonzero(labels == -1))
    if unknown:
        raise DataError(
            f"{unknown} of {len(labels)} labels are unknown (-1): the data has no labels for "
            "them, and metrics need a labelled set"
        )
    bad = ~np.isin(labels, (0, 1))
    if bad.any():
        raise DataError(
            f"labels must be 0 (non-lens) or 1 (lens); found {np.unique(labels[bad])[:5].tolist()}"
        )
    n_nan = int(np.count_nonzero(np.isnan(scores)))
    if n_nan:
        raise DataError(f"{n_nan} of {len(scores)} scores are NaN")
    labels = labels.astype(np.int8)
    n_lenses = int(labels.sum())
    if n_lenses == 0 or n_lenses == len(labels):
        which = "lenses" if n_lenses else "non-lenses"
        raise DataError(
            f"all {len(labels)} objects are {which}: ranking metrics need both lenses and "
            "non-lenses"
        )
    return labels, scores


@dataclass(frozen=True)
class RocCurve:
    """The ROC curve, one point per distinct score (highest first), starting at (0, 0).

    ``false_positives[i]``/``true_positives[i]`` count objects with score >= ``thresholds[i]``;
    ``thresholds[0]`` is +inf (nothing selected).
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    false_positives: np.ndarray
    true_positives: np.ndarray
    n_lenses: int
    n_nonlenses: int

    def area(self) -> float:
        """Trapezoid area; equals ``auroc`` because tied scores are one (diagonal) step."""
        return float(np.trapezoid(self.tpr, self.fpr))


def roc_curve(labels: Any, scores: Any) -> RocCurve:
    """ROC curve with tied scores merged into one step (so a lens/non-lens tie is a diagonal)."""
    labels, scores = check_labels_scores(labels, scores)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    # The last index of each run of equal scores: thresholds sit between distinct values.
    ends = np.flatnonzero(np.diff(sorted_scores) != 0)
    ends = np.append(ends, len(sorted_scores) - 1)
    tp = np.cumsum(sorted_labels, dtype=np.int64)[ends]
    fp = (ends + 1) - tp
    n_lenses = int(labels.sum())
    n_nonlenses = len(labels) - n_lenses
    tp = np.concatenate(([0], tp))
    fp = np.concatenate(([0], fp))
    return RocCurve(
        fpr=fp / n_nonlenses,
        tpr=tp / n_lenses,
        thresholds=np.concatenate(([np.inf], sorted_scores[ends])),
        false_positives=fp,
        true_positives=tp,
        n_lenses=n_lenses,
        n_nonlenses=n_nonlenses,
    )


class _RankedSet:
    """Scores reduced to tie-group indices once, so each bootstrap resample costs O(n), no sort."""

    def __init__(self, labels: np.ndarray, scores: np.ndarray) -> None:
        # Tie-group index per object, groups in ascending score order.
        _, group = np.unique(scores, return_inverse=True)
        self.n_groups = int(group.max()) + 1
        self.lens_groups = group[labels == 1]
        self.nonlens_groups = group[labels == 0]

    def auroc(
        self, lens_draw: np.ndarray | None = None, nonlens_draw: np.ndarray | None = None
    ) -> float:
        """Mann-Whitney AUROC (ties count 1/2) of the objects picked by the draws (index arrays
        into the lenses and non-lenses, repeats allowed; None = each object once)."""
        lens_groups = self.lens_groups if lens_draw is None else self.lens_groups[lens_draw]
        nonlens_groups = (
            self.nonlens_groups if nonlens_draw is None else self.nonlens_groups[nonlens_draw]
        )
        nonlenses = np.bincount(nonlens_groups, minlength=self.n_groups)
        # Per group: non-lenses strictly below it, plus half of those tied with it.
        beaten = np.cumsum(nonlenses) - 0.5 * nonlenses
        return float(beaten[lens_groups].sum() / (len(lens_groups) * len(nonlens_groups)))


def auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve: P(lens scores above non-lens), ties counting 1/2 (Mann-Whitney)."""
    labels, scores = check_labels_scores(labels, scores)
    return _RankedSet(labels, scores).auroc()


def auroc_bootstrap_ci(
    labels: Any, scores: Any, n: int = EvaluateConfig.bootstrap, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of AUROC, resampling lenses and non-lenses separately.

    Stratified, so every resample keeps the class sizes (and so stays defined) and the interval
    reflects the sampling of each class; reproducible for a given ``seed``.
    """
    if n < 1:
        raise ValueError(f"bootstrap resamples must be >= 1, got {n}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    labels, scores = check_labels_scores(labels, scores)
    ranked = _RankedSet(labels, scores)
    n_lens, n_nonlens = len(ranked.lens_groups), len(ranked.nonlens_groups)
    rng = np.random.default_rng(seed)
    values = np.empty(n)
    for i in range(n):
        values[i] = ranked.auroc(
            rng.integers(0, n_lens, n_lens), rng.integers(0, n_nonlens, n_nonlens)
        )
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def tpr_before_false_positives(labels: Any, scores: Any, max_false_positives: int) -> float:
    """The highest TPR over thresholds that select at most ``max_false_positives`` non-lenses.

    A tie group holding a non-lens is taken whole, so its lenses only count once the group's
    false positives are allowed.
    """
    curve = roc_curve(labels, scores)
    allowed = curve.false_positives <= max_false_positives
    return float(curve.tpr[allowed].max())  # point (0, 0) is always allowed


def tpr0(labels: Any, scores: Any) -> float:
    """Challenge TPR0: the highest TPR reached before a single false positive occurs.

    A non-lens tied with the top lens makes TPR0 = 0: the tie cannot be broken in the lens' favour.
    """
    return tpr_before_false_positives(labels, scores, 0)


def tpr10(labels: Any, scores: Any) -> float:
    """Challenge TPR10: the highest TPR while fewer than ten false positives are made (same ties).

    It counts false positives, not a rate, so it depends on the set size: the challenge's test
    set had 100,000 objects.
    """
    return tpr_before_false_positives(labels, scores, 9)


@dataclass(frozen=True)
class TprAtFpr:
    """TPR at a target FPR; ``resolved`` is False (and ``tpr`` NaN) when the set has too few
    non-lenses for that FPR to mean anything (fewer than ``1 / fpr``)."""

    fpr: float
    tpr: float
    threshold: float
    resolved: bool
    n_nonlenses: int

    @property
    def nonlenses_needed(self) -> int:
        return int(np.ceil(1.0 / self.fpr))


def tpr_at_fpr(labels: Any, scores: Any, fpr: float) -> TprAtFpr:
    """The best TPR among thresholds whose FPR <= ``fpr`` (i.e. the lowest such threshold).

    With fewer than ``1/fpr`` non-lenses even one false positive exceeds the target, so the value
    would just be TPR0 in disguise: it comes back unresolved (NaN, ``resolved=False``).
    """
    if not 0.0 < fpr <= 1.0:
        raise ValueError(f"target FPR must be in (0, 1], got {fpr}")
    curve = roc_curve(labels, scores)
    if curve.n_nonlenses * fpr < 1.0:
        return TprAtFpr(fpr, float("nan"), float("nan"), False, curve.n_nonlenses)
    # A small tolerance so that e.g. 1 FP of 100 counts as FPR 0.01 despite float rounding.
    allowed = np.flatnonzero(curve.fpr <= fpr * (1.0 + 1e-9))
    best = allowed[-1]  # TPR and FPR grow together, so the last allowed point has the best TPR
    return TprAtFpr(
        fpr, float(curve.tpr[best]), float(curve.thresholds[best]), True, curve.n_nonlenses
    )


def purity_at_top(labels: Any, scores: Any, n: int) -> float:
    """Fraction of lenses among the ``n`` highest-scored objects.

    Ties at the boundary: when the n-th place falls inside a group of equal scores, that group
    fills the remaining places with its lens fraction (the expected purity over every order of
    the tie). Deterministic and independent of input order, and it never rewards ties.
    """
    labels, scores = check_labels_scores(labels, scores)
    if not 1 <= n <= len(labels):
        raise DataError(f"purity at top {n}: need 1 <= n <= {len(labels)} (the number of objects)")
    boundary = np.sort(scores)[::-1][n - 1]
    above = scores > boundary
    tied = scores == boundary
    places_left = n - int(above.sum())
    lenses = labels[above].sum() + places_left * labels[tied].mean()
    return float(lenses / n)


@dataclass
class SurveyPoint:
    """Where a threshold reaching a completeness leaves a survey of a given lens prevalence."""

    completeness: float  # reached on this set (at least the one asked for)
    threshold: float
    fpr: float
    false_positives: int
    purity: float  # expected lenses among the candidates at this prevalence
    per_million: float  # candidates to inspect per million galaxies


def survey_point(curve: RocCurve, completeness: float, prevalence: float) -> SurveyPoint | None:
    """The first ROC point with TPR >= ``completeness``, rescaled to ``prevalence``:
    purity = c p / (c p + FPR (1 - p)); candidates per million = 1e6 (c p + FPR (1 - p)).
    None when the set has no lenses or non-lenses to measure it."""
    if not 0.0 < completeness <= 1.0 or not 0.0 < prevalence < 1.0:
        raise ValueError(f"need completeness in (0, 1], prevalence in (0, 1): {completeness}, "
                         f"{prevalence}")  # fmt: skip
    if curve.n_lenses == 0 or curve.n_nonlenses == 0:
        return None
    at = int(np.flatnonzero(curve.tpr >= completeness * (1.0 - 1e-12))[0])
    tpr, fpr = float(curve.tpr[at]), float(curve.fpr[at])
    flagged = tpr * prevalence + fpr * (1.0 - prevalence)
    return SurveyPoint(
        completeness=tpr,
        threshold=float(curve.thresholds[at]),
        fpr=fpr,
        false_positives=int(curve.false_positives[at]),
        purity=tpr * prevalence / flagged,
        per_million=1e6 * flagged,
    )


def survey_metrics(
    labels: Any, scores: Any, prevalences: Sequence[float], levels: Sequence[float]
) -> tuple[dict[str, Any], list[str]]:
    """``{prevalence: {completeness: SurveyPoint as dict}}`` and notes on what is a bound."""
    curve = roc_curve(labels, scores)
    out: dict[str, Any] = {}
    notes = []
    for prevalence in prevalences:
        row: dict[str, Any] = {}
        for level in levels:
            point = survey_point(curve, level, prevalence)
            row[f"{level:.0%}"] = None if point is None else dataclasses.asdict(point)
            if point is not None and point.false_positives == 0:
                notes.append(
                    f"purity at {level:.0%} completeness, prevalence {prevalence:g}: no false "
                    f"positive among {curve.n_nonlenses} non-lenses, so FPR < ~"
                    f"{3 / curve.n_nonlenses:.1e} (95%) and the purity is an upper bound"
                )
        out[f"{prevalence:g}"] = row
    return out, notes


def fpr_key(fpr: float) -> str:
    """The JSON key of a target FPR: ``1e-03`` style, short and sortable by eye."""
    return f"{fpr:.0e}"


def compute_metrics(labels: Any, scores: Any, cfg: EvaluateConfig) -> dict[str, Any]:
    """All metrics of one score set as a JSON-safe dict (no NaN: unresolved values are None and
    explained in ``notes``)."""
    labels, scores = check_labels_scores(labels, scores)
    notes: list[str] = []
    result: dict[str, Any] = {
        "n": len(labels),
        "n_lenses": int(labels.sum()),
        "n_nonlenses": int(len(labels) - labels.sum()),
        "auroc": auroc(labels, scores),
        "auroc_ci": None,
        "auroc_ci_level": 0.95,
        "bootstrap": int(cfg.bootstrap),
        "tpr0": tpr0(labels, scores),
        "tpr10": tpr10(labels, scores),
        "tpr_at_fpr": {},
        "purity_top": {},
    }
    if cfg.bootstrap > 0:
        result["auroc_ci"] = list(auroc_bootstrap_ci(labels, scores, n=cfg.bootstrap))
    if result["n_nonlenses"] < 10:
        notes.append(
            f"tpr10: only {result['n_nonlenses']} non-lenses, so fewer than ten false positives "
            "is reached at every threshold"
        )
    for target in cfg.tpr_at_fpr:
        value = tpr_at_fpr(labels, scores, target)
        result["tpr_at_fpr"][fpr_key(target)] = value.tpr if value.resolved else None
        if not value.resolved:
            notes.append(
                f"TPR at FPR {fpr_key(target)} unresolved: {value.n_nonlenses} non-lenses, "
                f"needs >= {value.nonlenses_needed}"
            )
    for top in cfg.purity_top_n:
        if top <= len(labels):
            result["purity_top"][str(top)] = purity_at_top(labels, scores, top)
        else:
            result["purity_top"][str(top)] = None
            notes.append(f"purity at top {top} unresolved: only {len(labels)} objects")
    result["survey"], survey_notes = survey_metrics(
        labels, scores, cfg.prevalences, cfg.completeness_levels
    )
    result["notes"] = notes + survey_notes
    return result
