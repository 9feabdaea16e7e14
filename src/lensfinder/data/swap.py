"""People's grades as evidence: each grader's skill, a lens probability per candidate, retirement.

SWAP (Marshall et al. 2016, the Space Warps Analysis Pipeline), with the expert-grading
conventions of the Euclid Q1 and SuGOHI lens searches. Pure Python and numpy: the grading app,
``lensfinder grades export`` and ``benchmarks/bench_grading.py`` share it.

- **Votes.** A and B count as a "lens" vote, X as "not a lens", C ("possible") as a soft vote of
  weight ``c_weight`` (default one half) for "lens" and the rest for "not": it counts as half a
  hit in a grader's skill and, with weight one half, leaves a candidate's odds unchanged.
- **Skill** from hidden sentinels (known lenses and non-lenses): P("lens" | lens) and
  P("not" | non-lens), each the mean of a Beta posterior (a Beta(a, b) prior of mean
  ``skill_prior_mean`` and ``a + b = skill_prior_strength``, updated with the grader's soft votes
  on sentinels); its standard deviation is the uncertainty.
- **Prior** of a candidate from the network's score: logit(prior) = logit(``base_rate``) +
  ``weight`` x logit(score). A network trained on balanced classes outputs score odds that are its
  likelihood ratio, so ``weight`` 1 and ``base_rate`` the lens fraction of the searched field is
  Bayes' rule; ``weight`` < 1 tempers an over-confident network, 0 ignores it.
- **Posterior**: each vote multiplies the odds by P(vote | lens) / P(vote | not) from the
  grader's *current* skill (a soft vote of weight w: P(v | lens) = w PL + (1 - w)(1 - PL),
  P(v | not) = w (1 - PN) + (1 - w) PN), so an adversarial grader's votes count reversed.
- **Retirement**: a candidate with at least ``min_grades`` grades leaves the queue once its
  posterior is below ``below`` (not a lens) or above ``above`` (a lens).
- **Queue order**: by the expected information of one more vote from this grader, the mutual
  information I = H(p) - [P(lens vote) H(p | lens vote) + P(not vote) H(p | not vote)] (bits,
  H the binary entropy): uncertain candidates and skilled graders first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

GRADE_VALUE: dict[str, int] = {"X": 0, "C": 1, "B": 2, "A": 3}  # the mean-grade scale
LENS_GRADES = ("A", "B")
SOFT_GRADE = "C"
SCORE_CLIP = 1e-4  # scores are clipped to [SCORE_CLIP, 1 - SCORE_CLIP] before the logit


def lens_vote(grade: str, c_weight: float = 0.5) -> float:
    """How much of a "lens" vote a grade is: A/B 1, C ``c_weight``, X 0."""
    if grade in LENS_GRADES:
        return 1.0
    return c_weight if grade == SOFT_GRADE else 0.0


@dataclass(frozen=True)
class BetaEstimate:
    """A probability learnt from soft counts with a Beta(a, b) prior."""

    a: float
    b: float

    @property
    def mean(self) -> float:
        return self.a / (self.a + self.b)

    @property
    def sigma(self) -> float:
        n = self.a + self.b
        return math.sqrt(self.a * self.b / (n * n * (n + 1.0)))


@dataclass(frozen=True)
class Skill:
    """One grader's skill from the sentinels they graded (soft counts)."""

    lens_seen: int = 0
    lens_said_lens: float = 0.0  # soft "lens" votes on lens sentinels
    dud_seen: int = 0
    dud_said_not: float = 0.0  # soft "not" votes on non-lens sentinels
    prior_mean: float = 0.75
    prior_strength: float = 4.0

    def _estimate(self, hits: float, seen: int) -> BetaEstimate:
        a = self.prior_mean * self.prior_strength
        b = (1.0 - self.prior_mean) * self.prior_strength
        return BetaEstimate(a + hits, b + seen - hits)

    @property
    def p_lens(self) -> BetaEstimate:
        """P("lens" | lens): the lenses this grader catches."""
        return self._estimate(self.lens_said_lens, self.lens_seen)

    @property
    def p_not(self) -> BetaEstimate:
        """P("not" | non-lens): the non-lenses this grader rejects."""
        return self._estimate(self.dud_said_not, self.dud_seen)

    def add(self, grade: str, is_lens: bool, c_weight: float = 0.5) -> Skill:
        """This skill after one more sentinel graded ``grade``."""
        vote = lens_vote(grade, c_weight)
        if is_lens:
            return replace(
                self, lens_seen=self.lens_seen + 1, lens_said_lens=self.lens_said_lens + vote
            )
        return replace(self, dud_seen=self.dud_seen + 1, dud_said_not=self.dud_said_not + 1 - vote)

    def as_dict(self) -> dict[str, float | int]:
        return {
            "p_lens": self.p_lens.mean,
            "p_lens_sigma": self.p_lens.sigma,
            "p_not": self.p_not.mean,
            "p_not_sigma": self.p_not.sigma,
            "lens_sentinels": self.lens_seen,
            "nonlens_sentinels": self.dud_seen,
        }


def skill_from(
    graded: Iterable[tuple[str, bool]],
    prior_mean: float = 0.75,
    prior_strength: float = 4.0,
    c_weight: float = 0.5,
) -> Skill:
    """A grader's skill from ``(grade, sentinel is a lens)`` pairs."""
    skill = Skill(prior_mean=prior_mean, prior_strength=prior_strength)
    for grade, is_lens in graded:
        skill = skill.add(grade, is_lens, c_weight)
    return skill


def vote_likelihoods(vote: float, skill: Skill) -> tuple[float, float]:
    """(P(vote | lens), P(vote | not a lens)) of a soft vote of weight ``vote`` for "lens"."""
    p_lens, p_not = skill.p_lens.mean, skill.p_not.mean
    return (
        vote * p_lens + (1.0 - vote) * (1.0 - p_lens),
        vote * (1.0 - p_not) + (1.0 - vote) * p_not,
    )


def update(probability: Any, vote: float, skill: Skill) -> Any:
    """Bayes' rule for one vote: the lens probability after it (a float or an array of them)."""
    given_lens, given_not = vote_likelihoods(vote, skill)
    lens = probability * given_lens
    return lens / (lens + (1.0 - probability) * given_not)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def prior_from_score(score: float | None, base_rate: float = 0.5, weight: float = 0.5) -> float:
    """logit(prior) = logit(base_rate) + weight x logit(score); no score: the base rate."""
    if score is None or not math.isfinite(score):
        return base_rate
    clipped = min(max(float(score), SCORE_CLIP), 1.0 - SCORE_CLIP)
    return 1.0 / (1.0 + math.exp(-(_logit(base_rate) + weight * _logit(clipped))))


def posterior(prior: float, votes: Iterable[tuple[float, Skill]]) -> float:
    """The lens probability after ``(vote, grader's skill)`` pairs (order does not matter)."""
    probability = prior
    for vote, skill in votes:
        probability = update(probability, vote, skill)
    return probability


def binary_entropy(p: Any) -> Any:
    """H(p) in bits (0 at 0 and 1); a float, or an array for an array."""
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-300, 1.0 - 1e-16)
    h = -(q * np.log2(q) + (1.0 - q) * np.log2(1.0 - q))
    h = np.where((np.asarray(p) <= 0.0) | (np.asarray(p) >= 1.0), 0.0, h)
    return float(h) if h.ndim == 0 else h


def expected_information(probability: Any, skill: Skill) -> Any:
    """Bits one more hard vote ("lens" or "not") from a grader of ``skill`` is expected to give
    about a candidate now at ``probability``: the mutual information of vote and truth (a
    float, or an array for an array of candidates)."""
    p = np.asarray(probability, dtype=np.float64)
    expected_after = np.zeros_like(p)
    for vote in (1.0, 0.0):
        given_lens, given_not = vote_likelihoods(vote, skill)
        p_vote = p * given_lens + (1.0 - p) * given_not
        expected_after += p_vote * binary_entropy(update(p, vote, skill))
    gain = np.maximum(0.0, binary_entropy(p) - expected_after)
    return float(gain) if gain.ndim == 0 else gain


@dataclass(frozen=True)
class Retirement:
    below: float = 0.005  # retired as "not a lens" under this posterior
    above: float = 0.95  # retired as "lens" over it
    min_grades: int = 1  # never retired with fewer grades (the prior alone retires nothing)

    def verdict(self, probability: float, n_grades: int) -> str | None:
        """ "lens", "not", or None (stays in the queue)."""
        if n_grades < self.min_grades:
            return None
        if probability >= self.above:
            return "lens"
        if probability <= self.below:
            return "not"
        return None


def mean_grade(grades: Iterable[str]) -> float:
    """The mean on X=0, C=1, B=2, A=3 (NaN with none)."""
    values = [GRADE_VALUE[g] for g in grades]
    return sum(values) / len(values) if values else math.nan


def grade_class(mean: float) -> str:
    """The class of a mean grade, as SuGOHI: A above 2.5, B 1.5-2.5, C 0.5-1.5, else X."""
    if mean > 2.5:
        return "A"
    if mean >= 1.5:
        return "B"
    return "C" if mean >= 0.5 else "X"


def category_counts(
    grades_per_subject: Iterable[Sequence[str]], categories: Sequence[str] = ("A", "B", "C", "X")
) -> np.ndarray:
    """(subjects, categories) counts of how many graders gave each grade."""
    column = {c: i for i, c in enumerate(categories)}
    rows = [
        np.bincount([column[g] for g in grades], minlength=len(categories)).astype(np.float64)
        for grades in grades_per_subject
    ]
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(categories))


def pair_agreement(counts: np.ndarray) -> np.ndarray:
    """Per subject, the fraction of grader pairs that agree (Fleiss' P_i; NaN with < 2)."""
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        agreement = ((counts**2).sum(axis=1) - n) / (n * (n - 1.0))
    return np.where(n >= 2, agreement, np.nan)


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa of (subjects, categories) counts, over the subjects with >= 2 graders
    (numbers of graders may differ: P_e from the pooled category shares). NaN when none."""
    counts = np.asarray(counts, dtype=np.float64)
    counts = counts[counts.sum(axis=1) >= 2]
    if not len(counts):
        return math.nan
    observed = float(np.mean(pair_agreement(counts)))
    shares = counts.sum(axis=0) / counts.sum()
    chance = float((shares**2).sum())
    if chance >= 1.0:
        return math.nan if observed >= 1.0 else -math.inf
    return (observed - chance) / (1.0 - chance)


def team_skills(
    sentinel_grades: Iterable[tuple[str, str, bool]],
    prior_mean: float = 0.75,
    prior_strength: float = 4.0,
    c_weight: float = 0.5,
) -> dict[str, Skill]:
    """grader -> skill, from ``(grader, grade, sentinel is a lens)`` rows."""
    skills: dict[str, Skill] = {}
    for grader, grade, is_lens in sentinel_grades:
        skill = skills.get(grader) or Skill(prior_mean=prior_mean, prior_strength=prior_strength)
        skills[grader] = skill.add(grade, is_lens, c_weight)
    return skills


def candidate_posteriors(
    priors: Mapping[int, float],
    grades: Mapping[int, Mapping[str, str]],
    skills: Mapping[str, Skill],
    default: Skill,
    c_weight: float = 0.5,
) -> dict[int, float]:
    """candidate -> posterior from its prior and every grader's current grade (graders with no
    sentinel yet count with ``default``, the prior skill)."""
    return {
        candidate: posterior(
            prior,
            (
                (lens_vote(grade, c_weight), skills.get(grader, default))
                for grader, grade in grades.get(candidate, {}).items()
            ),
        )
        for candidate, prior in priors.items()
    }
