"""Simulated graders: how many grades each way of combining them needs for 90% completeness and
90% purity among the candidates it retires as lenses.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_grading.py

A field of ``--n`` candidates, ``--lens-fraction`` of them lenses (a real candidate list's
prevalence), each with a network score (lenses ~ Beta(4, 2), non-lenses ~ Beta(2, 4): a weak
network). ``--graders`` people grade A/B/C/X with known per-class probabilities (``KINDS``): most
good, some careless, one adversarial. Three ways to decide:

- **majority**: every candidate gets K grades from K different graders; a lens if more than half
  are A or B. K = 1, 2, ... until 90% completeness and 90% purity (or K = all graders).
- **mean grade**: the same K grades; a lens if the mean grade (A=3 .. X=0) is >= 1.5 (class A/B).
- **posterior + retirement** (``data.swap``, as ``lensfinder inspect`` does it): graders come in
  at random; each is shown, with probability ``--sentinel-rate``, a sentinel (a known lens or
  non-lens: their skill is learnt from it), else the candidate that gives most expected
  information for their skill, not retired and not graded by them; the candidate's posterior is
  updated with the grader's current skill (online, as Space Warps); it retires when the
  posterior leaves [retire_below, retire_above]. Counted: every grade, sentinels included, until
  the retired-as-lens set first reaches 90% completeness (of all lenses) and 90% purity. Run
  twice: with the network score as prior, and with a flat prior (graders only).

Pure numpy; a few seconds. Prints a Markdown table (averages over ``--seeds``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from lensfinder.config import GradingConfig
from lensfinder.data import swap

GRADES = ("A", "B", "C", "X")
# P(grade | lens), P(grade | non-lens), in GRADES order.
KINDS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "good": ((0.55, 0.30, 0.10, 0.05), (0.02, 0.04, 0.09, 0.85)),
    "careless": ((0.25, 0.25, 0.25, 0.25), (0.10, 0.15, 0.25, 0.50)),
    "adversarial": ((0.05, 0.05, 0.20, 0.70), (0.40, 0.30, 0.20, 0.10)),
}
TARGET = 0.9


@dataclass(frozen=True)
class Field:
    is_lens: np.ndarray  # (n,) bool
    scores: np.ndarray  # (n,)
    kinds: list[str]  # per grader


def make_field(n: int, lens_fraction: float, team: list[str], rng: np.random.Generator) -> Field:
    is_lens = rng.random(n) < lens_fraction
    scores = np.where(is_lens, rng.beta(4, 2, n), rng.beta(2, 4, n))
    return Field(is_lens, scores, team)


def draw_grade(kind: str, lens: bool, rng: np.random.Generator) -> str:
    return GRADES[rng.choice(4, p=KINDS[kind][0 if lens else 1])]


def purity_completeness(said_lens: np.ndarray, is_lens: np.ndarray) -> tuple[float, float]:
    hits = int((said_lens & is_lens).sum())
    purity = hits / max(1, int(said_lens.sum()))
    return purity, hits / max(1, int(is_lens.sum()))


def fixed_k(field: Field, rule: str, rng: np.random.Generator) -> dict[str, float]:
    """The smallest K for which ``rule`` (majority, mean) reaches the target."""
    n, graders = len(field.is_lens), len(field.kinds)
    order = np.argsort(rng.random((n, graders)), axis=1)  # who grades each candidate, in turn
    grades = np.array(
        [[draw_grade(field.kinds[g], field.is_lens[i], rng) for g in order[i]] for i in range(n)]
    )
    values = np.vectorize(swap.GRADE_VALUE.get)(grades)
    lens_votes = np.isin(grades, swap.LENS_GRADES)
    result = {"grades_per_candidate": np.nan, "purity": np.nan, "completeness": np.nan}
    for k in range(1, graders + 1):
        if rule == "majority":
            said = lens_votes[:, :k].sum(axis=1) > k / 2
        else:
            said = values[:, :k].mean(axis=1) >= 1.5
        purity, completeness = purity_completeness(said, field.is_lens)
        if purity >= TARGET and completeness >= TARGET:
            return {"grades_per_candidate": k, "purity": purity, "completeness": completeness}
        result = {"grades_per_candidate": np.nan, "purity": purity, "completeness": completeness}
    return result


def swap_run(
    field: Field, cfg: GradingConfig, rng: np.random.Generator, max_per_candidate: int
) -> dict[str, float]:
    """Posterior with retirement, graded until the retired lenses reach the target. Each step
    recomputes every posterior with every grader's current skill, as the app does."""
    n, graders = len(field.is_lens), len(field.kinds)
    prior = np.array([swap.prior_from_score(s, cfg.prior_base_rate, cfg.prior_weight)
                      for s in field.scores])  # fmt: skip
    vote_values = np.array([1.0, cfg.c_weight, 0.0])
    votes = np.full((n, graders), -1)  # index into vote_values; -1 not graded by this grader
    n_grades = np.zeros(n, int)
    verdict = np.zeros(n, int)  # 1 lens, -1 not, 0 in the queue
    skills = [swap.Skill(prior_mean=cfg.skill_prior_mean, prior_strength=cfg.skill_prior_strength)
              for _ in range(graders)]  # fmt: skip
    retire = swap.Retirement(cfg.retire_below, cfg.retire_above, cfg.retire_min_grades)
    p = prior.copy()
    total = 0
    result: dict[str, float] = {}
    while total < max_per_candidate * n:
        g = int(rng.integers(graders))
        kind = field.kinds[g]
        if not ((verdict == 0)[:, None] & (votes < 0)).any():
            break  # every open candidate has been graded by everyone: it stays undecided
        total += 1
        if rng.random() < cfg.sentinel_rate:
            truth = bool(rng.random() < 0.5)
            skills[g] = skills[g].add(draw_grade(kind, truth, rng), truth, cfg.c_weight)
            p = posteriors(prior, votes, vote_values, skills)
            verdict = verdicts(p, n_grades, retire)
        else:
            open_ = (verdict == 0) & (votes[:, g] < 0)
            if not open_.any():
                total -= 1  # this grader has seen all that is left: the next one
                continue
            i = int(np.argmax(np.where(open_, swap.expected_information(p, skills[g]), -1.0)))
            grade = draw_grade(kind, bool(field.is_lens[i]), rng)
            votes[i, g] = int(np.flatnonzero(vote_values == swap.lens_vote(grade, cfg.c_weight))[0])
            n_grades[i] += 1
            p = posteriors(prior, votes, vote_values, skills)
            verdict = verdicts(p, n_grades, retire)
        purity, completeness = purity_completeness(verdict == 1, field.is_lens)
        if purity >= TARGET and completeness >= TARGET and "grades_per_candidate" not in result:
            result |= {
                "grades_per_candidate": total / n,
                "grades_per_retired": total / max(1, int((verdict != 0).sum())),
                "purity": purity,
                "completeness": completeness,
            }
    purity, completeness = purity_completeness(verdict == 1, field.is_lens)
    retired = int((verdict != 0).sum())
    return {
        "grades_per_candidate": np.nan,
        "grades_per_retired": np.nan,
        "purity": purity,
        "completeness": completeness,
        **result,
        "end_grades_per_retired": total / max(1, retired),
        "end_retired": retired / n,
        "end_purity": purity,
        "end_completeness": completeness,
    }


def posteriors(
    prior: np.ndarray, votes: np.ndarray, vote_values: np.ndarray, skills: list[swap.Skill]
) -> np.ndarray:
    """Every candidate's posterior from its votes and each grader's current skill
    (``swap.update`` applied to each grader's column: the order of votes does not matter)."""
    p = prior.copy()
    for g, skill in enumerate(skills):
        for index, value in enumerate(vote_values):
            mask = votes[:, g] == index
            if mask.any():
                p[mask] = swap.update(p[mask], float(value), skill)
    return p


def verdicts(p: np.ndarray, n_grades: np.ndarray, retire: swap.Retirement) -> np.ndarray:
    """1 retired as a lens, -1 as not, 0 still in the queue (``swap.Retirement``, vectorised)."""
    ready = n_grades >= retire.min_grades
    return np.where(ready & (p >= retire.above), 1, np.where(ready & (p <= retire.below), -1, 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--lens-fraction", type=float, default=0.1)
    parser.add_argument("--good", type=int, default=6)
    parser.add_argument("--careless", type=int, default=3)
    parser.add_argument("--adversarial", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-per-candidate", type=int, default=10)
    args = parser.parse_args()
    team = ["good"] * args.good + ["careless"] * args.careless + ["adversarial"] * args.adversarial
    cfg = GradingConfig()
    flat = GradingConfig(prior_weight=0.0)
    rows: dict[str, list[dict[str, float]]] = {}
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        field = make_field(args.n, args.lens_fraction, team, rng)
        for name, run in (
            ("majority (A/B votes > half)", lambda f, r: fixed_k(f, "majority", r)),
            ("mean grade (class A or B)", lambda f, r: fixed_k(f, "mean", r)),
            ("posterior + retirement, network prior",
             lambda f, r: swap_run(f, cfg, r, args.max_per_candidate)),
            ("posterior + retirement, flat prior",
             lambda f, r: swap_run(f, flat, r, args.max_per_candidate)),
        ):  # fmt: skip
            rows.setdefault(name, []).append(run(field, np.random.default_rng(seed + 100)))
    print(
        f"{args.n} candidates, {args.lens_fraction:.0%} lenses, graders: {args.good} good, "
        f"{args.careless} careless, {args.adversarial} adversarial; {args.seeds} seeds; "
        f"sentinel rate {cfg.sentinel_rate:g}, retire below {cfg.retire_below:g} / above "
        f"{cfg.retire_above:g}\n"
    )
    print(
        "| method | grades per candidate of the field at 90/90 | purity | completeness | "
        "until the queue is empty: grades per retired candidate | retired | purity | "
        "completeness |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, results in rows.items():
        keys = {k for r in results for k in r}
        mean = {k: float(np.nanmean([r.get(k, np.nan) for r in results])) for k in keys}
        reached = sum(np.isfinite(r["grades_per_candidate"]) for r in results)
        note = "" if reached == len(results) else f" (reached in {reached}/{len(results)})"
        # Fixed K: every candidate is retired after its K grades.
        end = [mean.get(k, np.nan) for k in ("end_grades_per_retired", "end_retired",
                                             "end_purity", "end_completeness")]  # fmt: skip
        if "end_retired" not in keys:
            end = [mean["grades_per_candidate"], 1.0, mean["purity"], mean["completeness"]]
        print(
            f"| {name} | {mean['grades_per_candidate']:.2f}{note} | {mean['purity']:.3f} | "
            f"{mean['completeness']:.3f} | {end[0]:.2f} | {end[1]:.0%} | {end[2]:.3f} | "
            f"{end[3]:.3f} |"
        )


if __name__ == "__main__":
    main()
