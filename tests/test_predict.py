"""The Predictor: same scores as the model itself, TTA, ensembles, BN method 2, skipped rows."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import expit

from lensfinder.config import PredictConfig
from lensfinder.data.cutouts import Cutouts, CutoutSource
from lensfinder.errors import ConfigError, DataError, ModelFileError
from lensfinder.labels import DEFAULT_LABEL_RULE
from lensfinder.predict import Predictor, average_logits, synthetic_cutouts
from lensfinder.testing import TINY_BN_BATCH_MODEL, TINY_INPUT, make_run


def direct_logits(run_dir: Path, vis: np.ndarray, nisp: np.ndarray, k: int | None = None):
    """The model called by hand on ``to_model_input`` (optionally D4 element ``k``)."""
    from lensfinder.data.augment import apply_d4
    from lensfinder.data.transforms import to_model_input
    from lensfinder.models.checkpoint import load_model

    model, _ = load_model(run_dir)
    x = to_model_input(vis, nisp, Predictor([run_dir]).members[0].input)
    if k is not None:
        x = tuple(apply_d4(t, k) for t in x) if isinstance(x, tuple) else apply_d4(x, k)
    with torch.inference_mode():
        out = model(*x) if isinstance(x, tuple) else model(x)
    return out.double().numpy()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("predict_runs")
    return {
        "a": make_run(root / "a", seed=0),
        "b": make_run(root / "b", seed=1, label_rule=DEFAULT_LABEL_RULE),
        "loud": make_run(root / "loud", seed=0, head_scale=300.0),
        "loud_b": make_run(root / "loud_b", seed=1, head_scale=300.0),
        "batch": make_run(root / "batch", seed=2, model_cfg=TINY_BN_BATCH_MODEL),
        "eval_twin": make_run(root / "eval_twin", seed=2),  # same weights as "batch"
        "other_rule": make_run(root / "other_rule", seed=3, label_rule="n_sources > 0"),
        "size48": make_run(root / "size48", seed=4, input_cfg=replace(TINY_INPUT, size=48)),
    }


@pytest.fixture(scope="module")
def cutouts() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_cutouts(11, seed=3)


def test_scores_equal_the_model_called_directly(runs, cutouts):
    vis, nisp = cutouts
    scores = Predictor([runs["a"]], PredictConfig(batch_size=4)).predict_arrays(vis, nisp)
    expected = direct_logits(runs["a"], vis, nisp)
    assert scores.logits.shape == (1, 11) and scores.score.dtype == np.float64
    np.testing.assert_allclose(scores.logits[0], expected, atol=1e-5)
    np.testing.assert_allclose(scores.score, expit(expected), atol=1e-6)
    np.testing.assert_allclose(scores.member_scores, expit(scores.logits), atol=1e-12)
    assert scores.valid.all() and scores.n_valid == 11
    assert np.ptp(scores.logits) > 1e-3  # the objects really get different scores


def _d4_symmetric(image: np.ndarray) -> np.ndarray:
    """The average of ``image`` over the 8 D4 transforms of its last two axes: exactly invariant."""
    views = []
    for flip in (False, True):
        base = np.flip(image, axis=-1) if flip else image
        views += [np.rot90(base, k, axes=(-2, -1)) for k in range(4)]
    return np.mean(views, axis=0).astype(np.float32)


def test_tta_leaves_a_d4_invariant_image_unchanged(runs, cutouts):
    vis, nisp = (_d4_symmetric(a[:3]) for a in cutouts)
    plain = Predictor([runs["a"]], PredictConfig(tta=False)).predict_arrays(vis, nisp)
    for average in ("probability", "logit"):
        cfg = PredictConfig(tta=True, ensemble_average=average)
        tta = Predictor([runs["a"]], cfg).predict_arrays(vis, nisp)
        np.testing.assert_allclose(tta.logits, plain.logits, atol=1e-5)


@pytest.mark.parametrize("average", ["probability", "logit"])
def test_tta_averages_the_eight_views_by_the_ensemble_rule(runs, cutouts, average):
    vis, nisp = cutouts[0][:4], cutouts[1][:4]
    per_view = np.stack([direct_logits(runs["loud"], vis, nisp, k) for k in range(8)])
    by_probability, by_logit = expit(per_view).mean(0), expit(per_view.mean(0))
    assert np.abs(by_probability - by_logit).max() > 1e-3  # the rules differ on these views
    cfg = PredictConfig(tta=True, ensemble_average=average, batch_size=3)
    scores = Predictor([runs["loud"]], cfg).predict_arrays(vis, nisp)
    expected = by_probability if average == "probability" else by_logit
    np.testing.assert_allclose(scores.score, expected, atol=1e-5)
    np.testing.assert_allclose(scores.member_scores[0], expected, atol=1e-6)


@pytest.mark.parametrize("average", ["probability", "logit"])
def test_ensemble_of_identical_members_equals_the_member(runs, cutouts, average):
    cfg = PredictConfig(ensemble_average=average)
    single = Predictor([runs["a"]], cfg).predict_arrays(*cutouts)
    triple = Predictor([runs["a"]] * 3, cfg).predict_arrays(*cutouts)
    np.testing.assert_allclose(triple.score, single.score, rtol=1e-12)
    np.testing.assert_allclose(triple.logits, np.repeat(single.logits, 3, axis=0), rtol=1e-12)


def test_ensemble_rules_of_different_members(runs, cutouts):
    pair = [runs["loud"], runs["loud_b"]]
    solo = [Predictor([run]).predict_arrays(*cutouts).logits[0] for run in pair]
    by_rule = {}
    for average in ("probability", "logit"):
        cfg = PredictConfig(ensemble_average=average)
        scores = Predictor(pair, cfg).predict_arrays(*cutouts)
        np.testing.assert_allclose(scores.logits, np.stack(solo), atol=1e-4)
        by_rule[average] = scores.score
    np.testing.assert_allclose(by_rule["probability"], expit(np.stack(solo)).mean(0), atol=1e-9)
    np.testing.assert_allclose(by_rule["logit"], expit(np.mean(solo, axis=0)), atol=1e-9)
    assert np.abs(by_rule["probability"] - by_rule["logit"]).max() > 1e-3  # different rules


def test_members_with_different_input_configs_get_their_own_input(runs, cutouts):
    both = Predictor([runs["a"], runs["size48"]]).predict_arrays(*cutouts)
    np.testing.assert_allclose(both.logits[1], direct_logits(runs["size48"], *cutouts), atol=1e-5)
    assert [m.input.size for m in Predictor([runs["a"], runs["size48"]]).members] == [32, 48]


def test_average_logits_is_stable_for_large_logits():
    logits = np.array([[40.0, -50.0, 0.3], [45.0, -60.0, -1.2]])
    got = average_logits(logits, axis=0, average="probability")
    assert np.isfinite(got).all()
    np.testing.assert_allclose(expit(got), expit(logits).mean(0), rtol=1e-12)
    np.testing.assert_allclose(average_logits(logits, 0, "logit"), logits.mean(0))


def test_bn_method_2_depends_on_batch_companions_and_eval_does_not(runs):
    vis, nisp = synthetic_cutouts(8, seed=5)
    target_then_a = (vis[:4], nisp[:4])
    target_then_b = (np.concatenate([vis[:1], vis[4:7]]), np.concatenate([nisp[:1], nisp[4:7]]))
    batch = Predictor([runs["batch"]])
    assert batch.members[0].bn_inference == "batch" and batch.members[0].bn_batch_size == 4
    first = batch.predict_arrays(*target_then_a).logits[0, 0]
    second = batch.predict_arrays(*target_then_b).logits[0, 0]
    assert abs(first - second) > 1e-3
    assert batch.predict_arrays(*target_then_a).logits[0, 0] == first  # no statistics updated

    twin = Predictor([runs["eval_twin"]])
    eval_first = twin.predict_arrays(*target_then_a).logits[0, 0]
    assert twin.predict_arrays(*target_then_b).logits[0, 0] == pytest.approx(eval_first, abs=1e-6)
    assert abs(eval_first - first) > 1e-3  # batch statistics are not the running ones

    # The BN study's predictor runs any model in method 2 at any size, or a method 2 model in
    # eval mode (the library Predictor has no such override: it runs what training recorded).
    from lensfinder.experiments.bn_study import StudyPredictor

    forced = StudyPredictor(runs["eval_twin"], PredictConfig(), 4).predict_arrays(*target_then_a)
    assert forced.logits[0, 0] == pytest.approx(first, abs=1e-5)
    as_eval = StudyPredictor(runs["batch"], PredictConfig(), None).predict_arrays(*target_then_a)
    assert as_eval.logits[0, 0] == pytest.approx(eval_first, abs=1e-5)


def test_bn_method_2_groups_consecutive_rows(runs):
    vis, nisp = synthetic_cutouts(8, seed=6)
    predictor = Predictor([runs["batch"]], PredictConfig(batch_size=3))  # groups stay 4 wide
    whole = predictor.predict_arrays(vis, nisp).logits[0]
    halves = [predictor.predict_arrays(vis[s : s + 4], nisp[s : s + 4]).logits[0] for s in (0, 4)]
    np.testing.assert_allclose(whole, np.concatenate(halves), atol=1e-6)


class ArraySource(CutoutSource):
    """An in-memory CutoutSource whose rows can be marked unreadable, as a layout's would be."""

    def __init__(self, vis, nisp, unreadable: dict[int, str]):
        self.path = Path("memory")
        self.vis, self.nisp, self.unreadable = vis, nisp, unreadable
        self.ids = np.arange(500, 500 + len(vis), dtype=np.int64)
        self.labels = np.full(len(vis), -1, dtype=np.int8)
        self.problems, self.label_rule = [], None
        self.reads = []

    ra = dec = property(lambda self: np.full(len(self.ids), np.nan))
    catalog = property(lambda self: {})

    def read(self, indices) -> Cutouts:
        rows = self._as_indices(indices)
        self.reads.append(len(rows))
        out = Cutouts(self.vis[rows].copy(), self.nisp[rows].copy(), np.ones(len(rows), bool), [])
        out.reasons = [self.unreadable.get(int(r)) for r in rows]
        out.valid[:] = [r is None for r in out.reasons]
        out.vis[~out.valid] = 0.0
        return out


@pytest.mark.parametrize("run", ["a", "batch"])
def test_predict_source_skips_and_counts_invalid_rows(runs, run):
    vis, nisp = synthetic_cutouts(23, seed=7)
    vis[9, ::4, ::4] = np.nan  # 2500 scattered bad pixels the source did not catch: skipped
    vis[11, 5, 5] = np.inf  # one bad pixel: repaired and scored, as the reader would
    unreadable = {
        2: "/data/Public/EUC_VIS/imageEUC_VIS-502.fits: truncated FITS file (80 bytes)",
        3: "/data/Public/EUC_J/imageEUC_J-503.fits: truncated FITS file (2880 bytes)",
        17: "/data/Public/EUC_H/imageEUC_H-517.fits: empty file",
    }
    source = ArraySource(vis, nisp, unreadable)
    predictor = Predictor([runs[run]], PredictConfig(batch_size=2))
    indices = np.arange(22, -1, -1)  # any order; results follow it
    scores = predictor.predict_source(source, indices, progress=False)

    bad = np.isin(indices, [2, 3, 9, 17])
    assert (scores.valid == ~bad).all() and np.isnan(scores.score[bad]).all()
    assert scores.skipped == {"truncated FITS file": 2, "non-finite pixels": 1, "empty file": 1}
    assert scores.reasons[int(np.flatnonzero(indices == 2)[0])] == unreadable[2]
    assert (scores.ids == 500 + indices).all()
    assert max(source.reads) < len(indices)  # streamed in chunks, not read at once
    # The valid rows score as if they alone had been given (method 2 groups only valid rows).
    good = indices[~bad]
    expected = predictor.predict_arrays(vis[good], nisp[good])
    np.testing.assert_allclose(scores.logits[:, ~bad], expected.logits, atol=1e-6)
    kept = scores.only_valid()
    assert len(kept) == len(good) and (kept.ids == 500 + good).all()
    assert "skipped 4" in scores.summary()


def test_predict_source_on_a_store_matches_arrays(runs, tiny_store):
    from lensfinder.data import open_source

    source = open_source(tiny_store)
    predictor = Predictor([runs["a"]], PredictConfig(batch_size=5))
    scores = predictor.predict_source(str(tiny_store), progress=False)
    cut = source.read(np.arange(len(source)))
    np.testing.assert_allclose(
        scores.logits, predictor.predict_arrays(cut.vis, cut.nisp).logits, atol=1e-6
    )
    assert (scores.ids == source.ids).all() and scores.valid.all()


def test_clear_errors(runs, cutouts, tmp_path):
    with pytest.raises(ModelFileError, match=r"/b was trained with label rule.*/other_rule"):
        Predictor([runs["a"], runs["b"], runs["other_rule"]])
    with pytest.raises(ConfigError, match="no model"):
        Predictor([])
    with pytest.raises(ModelFileError, match="no such run directory"):
        Predictor([tmp_path / "missing"])
    predictor = Predictor([runs["a"]])
    vis, nisp = cutouts[0].copy(), cutouts[1]
    vis[4, ::4, ::4] = np.inf  # 2500 of 40000 pixels (over 1%), scattered: beyond repair
    with pytest.raises(DataError, match=r"non-finite.*row 4"):
        predictor.predict_arrays(vis, nisp)
    vis[4, ::4, ::4] = 1e-11
    vis[4, 0, 0] = np.inf  # one pixel: repaired on a copy (the median of the rest)
    repaired = vis[4].copy()
    repaired[0, 0] = np.median(repaired[np.isfinite(repaired)])
    np.testing.assert_allclose(
        predictor.predict_arrays(vis[4:5], nisp[4:5]).logits,
        predictor.predict_arrays(repaired[None], nisp[4:5]).logits,
    )
    assert np.isinf(vis[4, 0, 0])
    with pytest.raises(DataError, match="same n"):
        predictor.predict_arrays(vis[:3], nisp[:4])


def test_bf16_autocast_scores_close_to_float32_and_only_for_torch(runs, cutouts):
    """torch_precision: "auto" is float32 on CPU (bf16 only on a CUDA GPU that has it);
    "bfloat16" runs the same model under bf16 autocast: close, not identical, scores."""
    vis, nisp = cutouts
    auto = Predictor([runs["a"]])
    assert auto.device.type != "cuda" or torch.cuda.is_bf16_supported() == auto.bf16
    if auto.device.type == "cpu":
        assert not auto.bf16
    bf16 = Predictor([runs["a"]], PredictConfig(torch_precision="bfloat16"))
    assert bf16.bf16
    full = auto.predict_arrays(vis, nisp).logits
    half = bf16.predict_arrays(vis, nisp).logits
    assert half.dtype == np.float64 and not np.array_equal(full, half)
    np.testing.assert_allclose(half, full, atol=0.02 * max(1.0, np.abs(full).max()))  # bf16: 8 bits
    with pytest.raises(ConfigError, match="bfloat16 is for the torch backend"):
        Predictor([runs["a"]], PredictConfig(backend="onnx", torch_precision="bfloat16"))
    with pytest.raises(ConfigError, match="torch_precision 'half'"):
        Predictor([runs["a"]], PredictConfig(torch_precision="half"))  # type: ignore[arg-type]
