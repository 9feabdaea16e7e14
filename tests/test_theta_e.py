"""The Einstein-radius head (issue 23): the ein_area conversion, the masked loss, training and
model files, and theta_E through every scoring path (Predictor, TTA, ensembles, ONNX, scan,
evaluate, gallery); models without the head keep scoring exactly as before, with no theta_E."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from lensfinder.config import PredictConfig, ScanConfig, SplitConfig, TrainConfig
from lensfinder.data.augment import N_ELEMENTS, apply_d4
from lensfinder.data.cutouts import synthetic_cutouts
from lensfinder.data.transforms import map_input, to_model_input
from lensfinder.einstein import ARCSEC_PER_RADIAN, lens_theta_e, mixture, theta_e_arcsec
from lensfinder.models.checkpoint import DESCRIPTION_KEY, description_hash, load_model
from lensfinder.predict import Predictor
from lensfinder.testing import TINY_INPUT, TINY_MODEL, make_run
from lensfinder.train.module import LensClassifier, theta_e_nll

HEAD_MODEL = dataclasses.replace(TINY_MODEL, theta_e_head=True)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two members with the head, one without (head_scale spreads their outputs apart)."""
    root = tmp_path_factory.mktemp("theta_runs")
    return {
        "head_a": make_run(root / "head_a", 0, model_cfg=HEAD_MODEL, head_scale=20.0),
        "head_b": make_run(root / "head_b", 1, model_cfg=HEAD_MODEL, head_scale=20.0),
        "plain": make_run(root / "plain", 2),
    }


@pytest.fixture(scope="module")
def cutouts() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_cutouts(5, seed=3)


# -- the target ---------------------------------------------------------------------------------
def test_ein_area_in_steradians_and_in_square_arcsec_give_the_same_radius():
    theta = np.array([0.5, 1.0, 2.5])
    steradians = np.pi * (theta / ARCSEC_PER_RADIAN) ** 2  # the challenge catalogue's unit
    square_arcsec = np.pi * theta**2  # lensfinder's simulator and painter
    np.testing.assert_allclose(theta_e_arcsec(steradians), theta, rtol=1e-12)
    np.testing.assert_allclose(theta_e_arcsec(square_arcsec), theta, rtol=1e-12)
    assert np.isnan(theta_e_arcsec([-1.0, np.nan])).all()
    # the target: lenses with a known, positive radius only
    labels = np.array([1, 0, 1, 1, -1])
    target = lens_theta_e(labels, {"ein_area": [np.pi, np.pi, np.nan, 0.0, np.pi]})
    assert target[0] == pytest.approx(1.0)
    assert np.isnan(target[1:]).all()
    assert np.isnan(lens_theta_e(labels, {})).all()


def test_masked_loss_ignores_non_lenses_exactly():
    """Whatever the non-lenses' (and radius-less lenses') targets say, the loss and every
    gradient are bit-identical; a lens's target does count."""
    torch.manual_seed(0)
    raw = torch.randn(6, 2)
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    base = torch.tensor([1.2, np.nan, 0.7, np.nan, np.nan, np.nan])
    other = torch.tensor([1.2, 5.0, 0.7, -3.0, np.nan, 1e6])  # non-lens rows changed

    def loss_and_grad(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = raw.clone().requires_grad_(True)
        prediction = torch.stack([x[:, 0].exp(), x[:, 1].exp()], dim=1)
        loss = theta_e_nll(prediction, target, labels)
        loss.backward()
        assert x.grad is not None
        return loss.detach(), x.grad

    loss_a, grad_a = loss_and_grad(base)
    loss_b, grad_b = loss_and_grad(other)
    assert torch.isfinite(loss_a)
    assert torch.equal(loss_a, loss_b)
    assert torch.equal(grad_a, grad_b)
    assert (grad_a[[1, 3, 4, 5]] == 0).all()  # masked rows get no gradient at all
    moved = base.clone()
    moved[0] = 2.0
    assert not torch.equal(loss_and_grad(moved)[0], loss_a)


def test_the_head_adds_its_loss_to_the_classifier_loss_only_with_targets():
    config = TrainConfig(input=TINY_INPUT, model=HEAD_MODEL, theta_e_weight=2.0)
    lit = LensClassifier(config)
    x = to_model_input(*synthetic_cutouts(4, seed=0), TINY_INPUT)
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    theta = torch.tensor([1.0, np.nan, 1.5, np.nan])
    outputs = lit.outputs(x)
    plain, _, _ = lit.loss_of(outputs, labels)
    both, _, got_labels = lit.loss_of(outputs, torch.stack([labels, theta], dim=1))
    assert torch.equal(got_labels, labels)
    assert outputs[1] is not None
    expected = plain + 2.0 * theta_e_nll(outputs[1], theta, labels)
    assert torch.allclose(both, expected)


# -- combining Gaussians ------------------------------------------------------------------------
def test_mixture_is_the_moments_of_the_members_gaussians():
    mean = np.array([[1.0, 2.0], [1.4, 2.0], [np.nan, 2.0]])
    sigma = np.array([[0.1, 0.3], [0.2, 0.3], [np.nan, 0.3]])
    mu, sd = mixture(mean, sigma, axis=0)
    # column 0: the two finite members; variance = mean of sigma^2 + spread of the means
    assert mu[0] == pytest.approx(1.2)
    assert sd[0] == pytest.approx(math.sqrt((0.01 + 0.04) / 2 + 0.04))
    assert (mu[1], sd[1]) == pytest.approx((2.0, 0.3))  # identical members: that member
    rng = np.random.default_rng(0)  # and as the moments of samples drawn from the mixture
    draws = np.concatenate([rng.normal(1.0, 0.1, 200_000), rng.normal(1.4, 0.2, 200_000)])
    assert sd[0] == pytest.approx(draws.std(), rel=5e-3)


# -- predictor, TTA, ensembles ------------------------------------------------------------------
def _member_theta(run: Path, vis: np.ndarray, nisp: np.ndarray, k: int = 0) -> np.ndarray:
    model, _ = load_model(run)
    x = map_input(to_model_input(vis, nisp, TINY_INPUT), lambda t: apply_d4(t, k))
    with torch.no_grad():
        return model.with_theta_e(x)[1].numpy().astype(np.float64)


def test_predictor_gives_theta_e_with_the_head_and_none_without(runs, cutouts):
    vis, nisp = cutouts
    scores = Predictor(runs["head_a"], PredictConfig(batch_size=2)).predict_arrays(vis, nisp)
    expected = _member_theta(runs["head_a"], vis, nisp)
    assert scores.theta_e is not None and scores.theta_e_sigma is not None
    np.testing.assert_allclose(scores.theta_e, expected[:, 0], rtol=1e-5)
    np.testing.assert_allclose(scores.theta_e_sigma, expected[:, 1], rtol=1e-5)
    assert (scores.theta_e > 0).all() and (scores.theta_e_sigma > 0).all()
    plain = Predictor(runs["plain"]).predict_arrays(vis, nisp)
    assert plain.theta_e is None and plain.theta_e_sigma is None
    assert plain.only_valid().theta_e is None


def test_tta_combines_the_eight_views_as_a_mixture(runs, cutouts):
    vis, nisp = cutouts
    scores = Predictor(runs["head_a"], PredictConfig(tta=True)).predict_arrays(vis, nisp)
    views = np.stack([_member_theta(runs["head_a"], vis, nisp, k) for k in range(N_ELEMENTS)])
    mu, sd = mixture(views[..., 0], views[..., 1], axis=0)
    np.testing.assert_allclose(scores.theta_e, mu, rtol=1e-5)
    np.testing.assert_allclose(scores.theta_e_sigma, sd, rtol=1e-5)


def test_an_ensemble_mixes_the_members_with_the_head(runs, cutouts):
    vis, nisp = cutouts
    members = [runs["head_a"], runs["head_b"], runs["plain"]]
    scores = Predictor(members).predict_arrays(vis, nisp)
    each = np.stack([_member_theta(runs[k], vis, nisp) for k in ("head_a", "head_b")])
    mu, sd = mixture(each[..., 0], each[..., 1], axis=0)  # the member without the head: left out
    np.testing.assert_allclose(scores.theta_e, mu, rtol=1e-5)
    np.testing.assert_allclose(scores.theta_e_sigma, sd, rtol=1e-5)
    assert (sd > each[..., 1].min(axis=0)).all()  # the members' disagreement widens it


def test_an_old_run_dir_without_the_head_loads_and_scores_as_before(runs, cutouts, tmp_path):
    """A model.json written before the head existed (no ``theta_e_head`` key) loads, scores
    with the logits its network gives, and has no theta_E."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(runs["plain"], old)
    meta = json.loads((old / "model.json").read_text())
    del meta["model"]["theta_e_head"]
    meta[DESCRIPTION_KEY] = description_hash(meta)
    (old / "model.json").write_text(json.dumps(meta))
    model, _ = load_model(old)
    assert not model.theta_e_head
    vis, nisp = cutouts
    x = to_model_input(vis, nisp, TINY_INPUT)
    with torch.no_grad():
        logits = model.backbone(x).squeeze(1).numpy()  # the network's one output, as it was
    scores = Predictor(old, PredictConfig(batch_size=2)).predict_arrays(vis, nisp)
    np.testing.assert_allclose(scores.logits[0], logits, rtol=1e-5, atol=1e-6)
    assert scores.theta_e is None


# -- ONNX ---------------------------------------------------------------------------------------
def test_onnx_export_has_two_outputs_matching_torch(runs, cutouts, tmp_path):
    import onnx

    from lensfinder.predict import export_onnx

    vis, nisp = cutouts
    head = export_onnx(runs["head_a"], tmp_path / "head.onnx")
    names = [o.name for o in onnx.load(str(head.path)).graph.output]
    assert names == ["logit", "theta_e"]
    plain = export_onnx(runs["plain"], tmp_path / "plain.onnx")
    assert [o.name for o in onnx.load(str(plain.path)).graph.output] == ["logit"]
    cfg = PredictConfig(backend="onnx", batch_size=3)
    torch_scores = Predictor(runs["head_a"]).predict_arrays(vis, nisp)
    onnx_scores = Predictor(tmp_path / "head.onnx", cfg).predict_arrays(vis, nisp)
    assert onnx_scores.theta_e is not None and torch_scores.theta_e is not None
    np.testing.assert_allclose(onnx_scores.theta_e, torch_scores.theta_e, atol=1e-4)
    np.testing.assert_allclose(onnx_scores.theta_e_sigma, torch_scores.theta_e_sigma, atol=1e-4)
    np.testing.assert_allclose(onnx_scores.logits, torch_scores.logits, atol=1e-4)
    single = Predictor(tmp_path / "plain.onnx", cfg).predict_arrays(vis, nisp)
    assert single.theta_e is None and np.isfinite(single.score).all()


def test_an_exported_ensemble_mixes_theta_e_as_the_predictor_does(runs, cutouts, tmp_path):
    from lensfinder.ensemble import write_ensemble
    from lensfinder.predict import export_onnx

    vis, nisp = cutouts
    ensemble = tmp_path / "ens"
    members = [  # the same seeds as head_a and head_b: the same weights
        make_run(ensemble / f"member-{k}", k, model_cfg=HEAD_MODEL, head_scale=20.0) for k in (0, 1)
    ]
    write_ensemble(ensemble, members, "probability")
    export_onnx(ensemble, tmp_path / "ens.onnx")
    cfg = PredictConfig(backend="onnx")
    graph = Predictor(tmp_path / "ens.onnx", cfg).predict_arrays(vis, nisp)
    direct = Predictor([runs["head_a"], runs["head_b"]]).predict_arrays(vis, nisp)
    np.testing.assert_allclose(graph.theta_e, direct.theta_e, atol=1e-4)
    np.testing.assert_allclose(graph.theta_e_sigma, direct.theta_e_sigma, atol=1e-4)


# -- training ----------------------------------------------------------------------------------
def test_a_tiny_model_with_the_head_trains_and_its_run_dir_round_trips(tiny_store, tmp_path):
    from lensfinder.train import train

    config = TrainConfig(
        input=TINY_INPUT,
        model=HEAD_MODEL,
        split=SplitConfig(seed=0, test_fraction=0.1, val_fraction=0.3),
        max_epochs=1,
        batch_size=4,
        batch_size_max=4,
        max_train_samples=8,
    )
    result = train(config, tiny_store, tmp_path / "run", progress=False)
    model, meta = load_model(result.run_dir)
    assert meta["model"]["theta_e_head"] is True and meta["train"]["theta_e_weight"] == 1.0
    assert model.theta_e_head
    vis, nisp = synthetic_cutouts(3, seed=0)
    first = Predictor(result.run_dir).predict_arrays(vis, nisp)
    again = Predictor(result.run_dir).predict_arrays(vis, nisp)
    assert first.theta_e is not None and np.isfinite(first.theta_e).all()
    np.testing.assert_array_equal(first.theta_e, again.theta_e)
    # the head trained: its theta_E rows moved away from the zeroed start (mean softplus(0))
    assert not np.allclose(first.theta_e, math.log(2.0))


# -- scan, gallery, evaluate ---------------------------------------------------------------------
def test_scan_catalogue_has_theta_e_columns_only_with_the_head(runs, tiny_store, tmp_path):
    from distributed import LocalCluster

    from lensfinder.config import GalleryConfig, InspectConfig
    from lensfinder.inspection.app import Inspector
    from lensfinder.scan import scan
    from lensfinder.scan.gallery import make_gallery

    cfg = ScanConfig(predict=PredictConfig(batch_size=4), shard_size=12)
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:  # one in-process worker for both scans
        address = cluster.scheduler_address
        scan([runs["head_a"]], tiny_store, tmp_path / "head", cfg, address, progress=False)
        scan([runs["plain"]], tiny_store, tmp_path / "plain", cfg, address, progress=False)
    head = pq.read_table(tmp_path / "head" / "candidates.parquet")
    plain = pq.read_table(tmp_path / "plain" / "candidates.parquet")
    assert {"theta_e", "theta_e_sigma"} <= set(head.column_names)
    assert not {"theta_e", "theta_e_sigma"} & set(plain.column_names)
    assert all(v > 0 for v in head["theta_e"].to_pylist())
    gallery = make_gallery(
        tmp_path / "head", tiny_store, tmp_path / "gallery", GalleryConfig(top=3), progress=False
    )
    assert "θE" in gallery.html.read_text()
    shown = json.loads((tmp_path / "gallery" / "gallery.json").read_text())
    assert all(row["theta_e"] > 0 for row in shown)
    # the grading page's detail shows the estimate beside the scan's columns
    inspector = Inspector(tmp_path / "head", tiny_store, InspectConfig(stamp_pixels=32))
    first = int(head["id"][0].as_py())
    assert inspector.detail(first, "ann")["scan"]["Einstein radius (model)"].startswith("θE ")
    plain_page = Inspector(tmp_path / "plain", tiny_store, InspectConfig(stamp_pixels=32))
    assert "Einstein radius (model)" not in plain_page.detail(first, "ann")["scan"]


def test_evaluate_writes_theta_e_metrics_and_plot(runs, tiny_store, tmp_path):
    from lensfinder.config import EvaluateConfig
    from lensfinder.evaluate import evaluate

    cfg = EvaluateConfig(split="all", bootstrap=0, calibrate=False, failures=0)
    result = evaluate([runs["head_a"]], tiny_store, tmp_path / "head", cfg)
    metrics = json.loads(result.metrics_json.read_text())
    theta = metrics["theta_e"]
    overall = theta["overall"]
    assert overall["n_lenses"] == 12  # every tiny lens has an ein_area
    assert overall["mse"] == pytest.approx(overall["rmse"] ** 2)
    assert 0 <= overall["coverage_68"] <= 1
    assert sum(row["n_lenses"] for row in theta["rows"]) == overall["n_lenses"]
    assert (tmp_path / "head" / "theta_e.png").is_file()
    header = result.scores_csv.read_text().splitlines()[0].split(",")
    assert header[-2:] == ["theta_e", "theta_e_sigma"]
    assert "Einstein radius estimate" in result.report.read_text()
    plain = evaluate([runs["plain"]], tiny_store, tmp_path / "plain", cfg)
    assert "theta_e" not in json.loads(plain.metrics_json.read_text())
    assert "theta_e" not in plain.scores_csv.read_text().splitlines()[0]
