"""SWAP's arithmetic (data.swap) against hand-computed cases, Fleiss' kappa against a textbook
example, the sentinel mixing rate of the queue, and the colour views."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from lensfinder.config import ColourViewConfig, GradingConfig
from lensfinder.data import swap
from lensfinder.errors import ConfigError, DataError
from lensfinder.inspection.queue import Item, pick
from lensfinder.presentation.composite import VIEWS, draw_view, mtf, mtf_stretch


def test_skill_is_a_beta_posterior_with_soft_c_votes():
    skill = swap.skill_from([("A", True), ("B", True), ("X", True)])  # prior Beta(3, 1)
    assert skill.p_lens.mean == pytest.approx(5 / 7)
    assert skill.p_lens.sigma == pytest.approx(math.sqrt(5 * 2 / (7 * 7 * 8)))
    assert skill.p_not.mean == pytest.approx(0.75) and skill.dud_seen == 0  # the prior alone
    assert swap.skill_from([("C", True)]).p_lens.mean == pytest.approx(3.5 / 5)  # half a hit
    assert swap.skill_from([("C", False)]).p_not.mean == pytest.approx(3.5 / 5)
    many = swap.skill_from([("A", True)] * 40)
    assert many.p_lens.sigma < skill.p_lens.sigma  # more sentinels, less uncertainty


def test_posterior_updates_by_hand():
    skill = swap.Skill(lens_seen=10, lens_said_lens=10, prior_mean=0.6, prior_strength=10.0)
    assert skill.p_lens.mean == pytest.approx(16 / 20) and skill.p_not.mean == pytest.approx(0.6)
    # P(lens vote | lens) = 0.8, P(lens vote | not) = 0.4: odds x2.
    assert swap.update(0.5, 1.0, skill) == pytest.approx(0.4 / (0.4 + 0.2))
    # P(not vote | lens) = 0.2, P(not vote | not) = 0.6: odds / 3.
    assert swap.update(0.5, 0.0, skill) == pytest.approx(0.1 / (0.1 + 0.3))
    # C, half a vote: P = 0.5 x 0.8 + 0.5 x 0.2 = 0.5 given lens, 0.5 given not: no change.
    assert swap.update(0.3, 0.5, skill) == pytest.approx(0.3)
    # An adversary's "lens" lowers the probability.
    adversary = swap.skill_from([("X", True)] * 20 + [("A", False)] * 20)
    assert swap.update(0.5, 1.0, adversary) < 0.2
    votes = [(1.0, skill), (0.0, skill), (1.0, skill)]
    assert swap.posterior(0.5, votes) == pytest.approx(swap.posterior(0.5, votes[::-1]))
    assert swap.posterior(0.5, votes) == pytest.approx(2 * 2 / 3 / (1 + 2 * 2 / 3))


def test_prior_from_score():
    assert swap.prior_from_score(0.9, 0.5, 1.0) == pytest.approx(0.9)  # the score itself
    assert swap.prior_from_score(0.9, 0.3, 0.0) == pytest.approx(0.3)  # the base rate only
    # logit = ln(1/9) + 0.5 ln(4) = ln(2/9): prior 2/11.
    assert swap.prior_from_score(0.8, 0.1, 0.5) == pytest.approx(2 / 11)
    assert swap.prior_from_score(None, 0.2) == 0.2 and swap.prior_from_score(float("nan")) == 0.5
    assert 0 < swap.prior_from_score(0.0, 0.5, 1.0) < swap.prior_from_score(1.0, 0.5, 1.0) < 1


def test_expected_information_and_retirement():
    sharp = swap.Skill(prior_mean=0.9, prior_strength=1e6)
    assert swap.expected_information(0.5, sharp) == pytest.approx(1 - swap.binary_entropy(0.9))
    assert swap.expected_information(0.99, sharp) < swap.expected_information(0.5, sharp)
    coin = swap.Skill(prior_mean=0.5, prior_strength=1e6)
    assert swap.expected_information(0.5, coin) == pytest.approx(0.0, abs=1e-9)
    assert swap.binary_entropy(0.5) == pytest.approx(1.0) and swap.binary_entropy(0.0) == 0.0
    retire = swap.Retirement(below=0.05, above=0.95, min_grades=2)
    assert retire.verdict(0.99, 1) is None  # too few grades
    assert retire.verdict(0.99, 2) == "lens" and retire.verdict(0.01, 3) == "not"
    assert retire.verdict(0.5, 9) is None


def test_mean_grade_and_class():
    assert swap.mean_grade(["A", "B", "X"]) == pytest.approx(5 / 3)
    assert math.isnan(swap.mean_grade([]))
    classes = {m: swap.grade_class(m) for m in (3.0, 2.51, 2.5, 1.5, 1.49, 0.5, 0.49, 0.0)}
    assert classes == {3.0: "A", 2.51: "A", 2.5: "B", 1.5: "B", 1.49: "C", 0.5: "C", 0.49: "X",
                       0.0: "X"}  # fmt: skip


def test_fleiss_kappa_textbook_example():
    """Fleiss (1971) as in Wikipedia's worked example: 10 subjects, 14 raters, 5 categories,
    P-bar 0.378, P_e 0.213, kappa 0.210."""
    counts = np.array(
        [
            [0, 0, 0, 0, 14],
            [0, 2, 6, 4, 2],
            [0, 0, 3, 5, 6],
            [0, 3, 9, 2, 0],
            [2, 2, 8, 1, 1],
            [7, 7, 0, 0, 0],
            [3, 2, 6, 3, 0],
            [2, 5, 3, 2, 2],
            [6, 5, 2, 1, 0],
            [0, 2, 2, 3, 7],
        ]
    )
    assert swap.fleiss_kappa(counts) == pytest.approx(0.210, abs=5e-4)
    assert swap.pair_agreement(counts)[0] == 1.0
    assert swap.pair_agreement(counts)[1] == pytest.approx(0.253, abs=5e-4)
    # Subjects with one grader do not count; none with two: NaN.
    assert swap.fleiss_kappa(np.vstack([counts, [[1, 0, 0, 0, 0]]])) == pytest.approx(
        0.210, abs=5e-4
    )
    assert math.isnan(swap.fleiss_kappa(np.array([[1, 0], [0, 1]])))
    perfect = swap.category_counts([["A", "A"], ["X", "X", "X"], ["B", "B"]])
    assert swap.fleiss_kappa(perfect) == pytest.approx(1.0)


def test_sentinels_are_mixed_in_at_the_rate():
    rng = random.Random(7)
    candidates, sentinels = list(range(100)), list(range(1000, 1500))
    picks = [pick(0.05, candidates, sentinels, rng) for _ in range(20000)]
    share = sum(p is not None and p.kind == "sentinel" for p in picks) / len(picks)
    assert share == pytest.approx(0.05, abs=0.007)
    assert all(p == Item("candidate", 0) for p in picks if p and p.kind == "candidate")
    assert pick(0.0, candidates, sentinels, rng) == Item("candidate", 0)
    assert pick(1.0, candidates, [], rng) == Item("candidate", 0)  # none left to show
    assert pick(1.0, [], sentinels, rng) is None  # no sentinels alone in an empty queue


def test_grading_config_is_checked():
    with pytest.raises(ConfigError, match="retire_below"):
        GradingConfig(retire_below=0.9, retire_above=0.5)
    with pytest.raises(ConfigError, match="sentinel_rate"):
        GradingConfig(sentinel_rate=1.5)
    with pytest.raises(ConfigError, match="asinh_band_softening"):
        ColourViewConfig(asinh_band_softening=(1.0, 2.0))


def test_colour_views():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    galaxy = 40 * np.exp(-((xx - 32) ** 2 + (yy - 32) ** 2) / 30.0)
    vis = rng.normal(size=(64, 64)) + galaxy
    nisp = rng.normal(size=(3, 22, 22)) + 5 * galaxy[::3, ::3][:22, :22][None] * [
        [[1]],
        [[2]],
        [[3]],
    ]
    pictures = {view: draw_view(vis, nisp, view) for view in VIEWS}
    for picture in pictures.values():
        assert picture.shape == (64, 64, 3) and picture.dtype == np.uint8
    vis_only = pictures["vis"]
    assert (vis_only[..., 0] == vis_only[..., 2]).all()  # grey
    assert (pictures["asinh"][..., 0] != pictures["asinh"][..., 2]).any()  # coloured
    assert len({p.tobytes() for p in pictures.values()}) == len(VIEWS)
    # The MTF: 0, the midtone and 1 go to 0, 1/2 and 1; the sky goes to the chosen grey.
    assert mtf(np.array([0.0, 0.3, 1.0]), 0.3) == pytest.approx([0.0, 0.5, 1.0])
    sky = rng.normal(size=(64, 64))
    assert np.median(mtf_stretch(sky, background=0.25)) == pytest.approx(0.25, abs=0.03)
    soft = ColourViewConfig(asinh_band_softening=(30.0, 30.0, 30.0, 30.0))
    assert (draw_view(vis, nisp, "asinh", soft) != pictures["asinh"]).any()
    with pytest.raises(ValueError, match="expected one of"):
        draw_view(vis, nisp, "rainbow")


def test_posterior_labels_for_training_and_gallery_view(tmp_path):
    from lensfinder.config import TrainConfig
    from lensfinder.data.grades import posterior_grades, read_graded_posteriors
    from lensfinder.presentation.gallery import StampStyle, _stamp

    assert posterior_grades({1: 0.95, 2: 0.5, 3: 0.02, 4: 0.9}, 0.9, 0.1) == {
        1: "A",
        3: "X",
        4: "A",
    }
    export = tmp_path / "grades.csv"
    export.write_text("id,grade,posterior\n1,C,0.95\n2,C,0.4\n")
    assert read_graded_posteriors(export) == {1: 0.95, 2: 0.4}
    export.write_text("id,grade,posterior\n1,C,1.5\n")
    with pytest.raises(DataError, match="no valid posterior"):
        read_graded_posteriors(export)
    with pytest.raises(ConfigError, match="graded_posterior"):
        TrainConfig(graded_by="posterior", graded_posterior_lens=0.1, graded_posterior_nonlens=0.5)
    rng = np.random.default_rng(1)
    vis, nisp = rng.normal(size=(40, 40)), rng.normal(size=(3, 14, 14))
    grey = _stamp(vis, nisp, StampStyle(3.0, 40, ColourViewConfig(view="vis")))
    assert (grey[..., 0] == grey[..., 1]).all()
    assert (_stamp(vis, nisp, StampStyle(3.0, 40)) != grey).any()  # vis-nisp by default
