"""``train --adapt FIELD``: learning from unlabelled cutouts, and training on several data sets.

Tiny data and the ~100k-parameter test network at 32 px keep every training here to seconds.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from lensfinder.cli import app
from lensfinder.config import AdaptConfig, SplitConfig, TrainConfig, load_config
from lensfinder.data import open_source
from lensfinder.data.dataset import CutoutDataset, tensors
from lensfinder.data.source import open_unlabelled
from lensfinder.data.splits import split_indices
from lensfinder.ensemble import is_ensemble, member_dir, write_ensemble
from lensfinder.errors import ConfigError
from lensfinder.layout import CATALOG_NAME
from lensfinder.models.batchnorm import batchnorm_layers
from lensfinder.models.checkpoint import load_model
from lensfinder.models.meta import read_meta
from lensfinder.testing import TINY_INPUT, make_run, tiny_train_config
from lensfinder.train import adapt
from lensfinder.train.adapt import (
    FieldCutouts,
    UnpaintedHoldback,
    adapt_methods,
    finish_adaptation,
    recompute_batchnorm,
)
from lensfinder.train.datamodule import ConcatSource, split_parts
from lensfinder.train.members import train_models
from lensfinder.train.training import check_config

# What ``--adapt`` did by default before painted lenses became the default: AdaBN alone.
ADABN: dict[str, object] = {"method": "adabn", "paint_lenses": False, "adabn_keep": "always"}


def tiny_config(field: Path | None = None, **adapt: object) -> TrainConfig:
    """One short epoch of the test network at 32 px."""
    return tiny_train_config(
        max_train_samples=16,
        channels_last=True,
        adapt=AdaptConfig(field=None if field is None else str(field), **(ADABN | adapt)),  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def train_store(layout_factory, tmp_path_factory) -> Path:
    from lensfinder.data.store import pack

    out = tmp_path_factory.mktemp("adapt_train") / "train.zarr"
    pack(layout_factory("adapt_train_layout", n=40, seed=11), out, progress=False)
    return out


@pytest.fixture(scope="module")
def field_layout(layout_factory) -> Path:
    """A labelled layout used as a field: its catalogue must never matter."""
    return layout_factory("field_layout", n=16, seed=21, lens_fraction=0.25)


@pytest.fixture(scope="module")
def field_store(field_layout, tmp_path_factory) -> Path:
    from lensfinder.data.store import pack

    out = tmp_path_factory.mktemp("field_store") / "field.zarr"
    pack(field_layout, out, progress=False)
    return out


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


# -- the field's labels --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["layout", "store"])
def test_field_source_has_no_labels_or_catalogue(kind, field_layout, field_store):
    path = field_layout if kind == "layout" else field_store
    assert (open_source(path).labels >= 0).all()  # the data itself is labelled
    source = open_unlabelled(path)
    assert (source.labels == -1).all() and source.catalog == {} and source.label_rule is None
    field = FieldCutouts(path, TINY_INPUT, AdaptConfig(field=str(path)))
    assert not hasattr(field, "labels") and len(field) == 16
    assert field.record()["field_kind"] == kind


def test_a_layout_field_is_read_without_its_catalogue(field_layout, tmp_path):
    """A survey catalogue without the label rule's columns must not stop adaptation."""
    copy = tmp_path / "field"
    shutil.copytree(field_layout, copy)
    (copy / CATALOG_NAME).write_text("ID,something_else\n1,2\n")
    assert len(FieldCutouts(copy, TINY_INPUT, AdaptConfig(field=str(copy)))) == 16


def test_field_labels_never_reach_the_weights(train_store, field_layout, tmp_path):
    """Training with every method gives bit-identical weights whether the field's catalogue
    is there, inverted or gone; model.json records the adaptation."""
    runs = {}
    copies = {"labelled": field_layout}
    for name in ("inverted", "removed"):
        copies[name] = tmp_path / name
        shutil.copytree(field_layout, copies[name])
    catalogue = copies["inverted"] / CATALOG_NAME
    lines = catalogue.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    rows = [line.split(",") for line in lines[header + 1 :]]
    ids = [row[1] for row in rows]
    for row, other in zip(rows, ids[1:] + ids[:1], strict=True):
        row[1] = other  # every object gets another's catalogue row, so another's label
    catalogue.write_text("\n".join(lines[: header + 1] + [",".join(r) for r in rows]) + "\n")
    assert (open_source(copies["inverted"]).labels != open_source(field_layout).labels).any()
    (copies["removed"] / CATALOG_NAME).unlink()
    # Fine-tuned from a model with spread logits, so the teacher is confident on some cutouts.
    init = make_run(tmp_path / "init", head_scale=50.0)
    for name, field in copies.items():
        config = tiny_config(field, method="dann+consistency+adabn", consistency_threshold=0.6)
        config = dataclasses.replace(config, init=str(init))
        runs[name] = train_models(config, train_store, tmp_path / f"run-{name}", progress=False)
    reference = weights(runs["labelled"].run_dir)
    for name in ("inverted", "removed"):
        other = weights(runs[name].run_dir)
        assert all(torch.equal(reference[k], other[k]) for k in reference), name

    record = read_meta(runs["labelled"].run_dir)["adapt"]
    assert record["method"] == "dann+consistency+adabn"
    assert record["field"] == str(field_layout.resolve())
    assert record["field_fingerprint"] == open_unlabelled(field_layout).content_fingerprint()
    assert (record["n_used"], record["n_skipped"], record["n_problems"]) == (16, 0, 0)
    assert record["adabn"]["views"] == 2 and record["adabn"]["layers"] > 0
    assert 0 <= record["val_auroc_after_adabn"] <= 1
    with open(runs["labelled"].run_dir / "metrics.csv") as handle:
        rows_csv = [r for r in csv.DictReader(handle) if r.get("adapt_domain_loss")]
    assert rows_csv and all(
        math.isfinite(float(r[k]))
        for r in rows_csv
        for k in ("adapt_domain_loss", "adapt_consistency_loss", "train_loss")
    )
    assert float(rows_csv[0]["adapt_confident"]) > 0  # pseudo-labels were used


# -- AdaBN ---------------------------------------------------------------------------------------
def test_adabn_sets_running_stats_to_the_fields_and_keeps_weights(field_store, tmp_path):
    model, _ = load_model(make_run(tmp_path / "init", random_bn_stats=True))
    field = FieldCutouts(field_store, TINY_INPUT, AdaptConfig(field=str(field_store)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = batchnorm_layers(model)[0]
    seen: list[torch.Tensor] = []
    handle = first.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    record = recompute_batchnorm(model, field, views=8, batch_size=8)
    handle.remove()
    # The field's own mean of the first BN layer's input, over every cutout and D4 view.
    inputs = torch.cat(seen)
    assert len(inputs) == 16 * 8 and record["batches"] == 2 * 8
    assert torch.allclose(first.running_mean, inputs.mean((0, 2, 3)), atol=1e-5)
    assert not torch.allclose(first.running_mean, before["backbone.bn1.running_mean"])
    after = model.state_dict()
    for key, value in before.items():
        if "running" not in key and "num_batches" not in key:
            assert torch.equal(value, after[key]), key
    assert first.momentum == 0.1 and not model.training  # restored


def test_adabn_depth_recomputes_only_the_leading_layers(field_store, tmp_path):
    """adapt.adabn_depth 0.25: the first quarter of the BN layers take the field's statistics,
    every later layer keeps the training statistics bit for bit."""
    model, _ = load_model(make_run(tmp_path / "init", random_bn_stats=True))
    layers = batchnorm_layers(model)
    before = [(layer.running_mean.clone(), layer.running_var.clone()) for layer in layers]
    field = FieldCutouts(field_store, TINY_INPUT, AdaptConfig(field=str(field_store)))
    record = recompute_batchnorm(model, field, views=2, batch_size=8, depth=0.25)
    n = math.ceil(0.25 * len(layers))
    assert 0 < n < len(layers) and (record["layers"], record["of_layers"]) == (n, len(layers))
    for k, (layer, (mean, var)) in enumerate(zip(layers, before, strict=True)):
        kept = torch.equal(layer.running_mean, mean) and torch.equal(layer.running_var, var)
        assert kept == (k >= n), k
    with pytest.raises(ConfigError, match=r"adapt.adabn_depth 0.0 not in \(0, 1\]"):
        AdaptConfig(adabn_depth=0.0)


def test_adabn_moves_stats_towards_a_brighter_field(field_layout, tmp_path):
    """A field whose galaxies are brighter (relative to the noise) moves the first BN layer's
    running mean the same way as the field's own mean."""
    from lensfinder.testing import make_tiny_layout

    bright = make_tiny_layout(tmp_path / "bright", n=16, seed=21, lens_fraction=0.25)
    from astropy.io import fits

    for path in (bright / "Public").rglob("*.fits"):
        with fits.open(path, mode="update") as hdul:
            data = hdul[0].data.astype(np.float32)
            hdul[0].data = data + 3.0 * np.clip(data - np.median(data), 0, None)
    model, _ = load_model(make_run(tmp_path / "init"))
    means = {}
    for name, path in (("plain", field_layout), ("bright", bright)):
        field = FieldCutouts(path, TINY_INPUT, AdaptConfig(field=str(path)))
        recompute_batchnorm(model, field, views=1, batch_size=16)
        means[name] = batchnorm_layers(model)[0].running_mean.clone()
    assert not torch.allclose(means["plain"], means["bright"], atol=1e-3)


# -- --init, --members, the CLI ------------------------------------------------------------------
def test_init_and_adapt_only_adapts_a_model_and_an_ensemble(field_store, train_store, tmp_path):
    init = make_run(tmp_path / "init", data=train_store)
    config = tiny_config(field_store, method="adabn", only=True)
    config = dataclasses.replace(config, init=str(init))
    train_models(config, train_store, tmp_path / "adapted", progress=False)
    meta, source_meta = read_meta(tmp_path / "adapted"), read_meta(init)
    assert meta["adapt"]["method"] == "adabn" and meta["init"] == str(init.resolve())
    assert meta["data"] == source_meta["data"]  # evaluate still finds the init's test split
    old, new = weights(init), weights(tmp_path / "adapted")
    changed = [k for k in old if not torch.equal(old[k], new[k])]
    assert changed and all("running" in k or "num_batches" in k for k in changed)

    ensemble = tmp_path / "ensemble"
    members = [make_run(member_dir(ensemble, k), seed=k) for k in range(2)]
    write_ensemble(ensemble, members, "probability")
    config = dataclasses.replace(config, init=str(ensemble))
    result = train_models(config, train_store, tmp_path / "adapted-ensemble", progress=False)
    assert is_ensemble(tmp_path / "adapted-ensemble") and "2 ensemble members" in result.summary()
    for k in range(2):
        assert read_meta(member_dir(tmp_path / "adapted-ensemble", k))["adapt"]["n_used"] == 16


def test_cli_adabn_only_without_data(field_layout, tmp_path):
    init = make_run(tmp_path / "init")
    argv = ["train", "--init", str(init), "--adapt", str(field_layout), "--config", "adabn-only"]
    result = CliRunner().invoke(app, [*argv, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "adapted the model" in result.output
    assert read_meta(tmp_path / "out")["adapt"]["field_kind"] == "layout"
    missing = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "o2")])
    assert missing.exit_code == 2 and "give --data" in missing.output


def test_members_with_adapt_adapt_every_member(train_store, field_store, tmp_path):
    config = dataclasses.replace(tiny_config(field_store, method="dann+adabn"), members=2)
    train_models(config, train_store, tmp_path / "ens", progress=False)
    for k in range(2):
        record = read_meta(member_dir(tmp_path / "ens", k))["adapt"]
        assert record["method"] == "dann+adabn" and record["field_kind"] == "store"


# -- settings ------------------------------------------------------------------------------------
def test_methods_and_their_checks(field_store):
    assert adapt_methods(AdaptConfig(field="f", method="adabn+dann")) == ("dann", "adabn")
    assert adapt_methods(AdaptConfig(field=None, method="dann")) == ()
    assert adapt_methods(AdaptConfig(field="f", method="none")) == ()
    with pytest.raises(ConfigError, match=r"adapt\.method"):
        check_config(tiny_config(field_store, method="adabn+magic"))
    with pytest.raises(ConfigError, match="give --init"):
        train_models(tiny_config(field_store, only=True), field_store, field_store.parent / "o")
    with pytest.raises(ConfigError, match="AdaBN alone"):
        check_config(
            dataclasses.replace(tiny_config(field_store, method="dann", only=True), init="x")
        )
    shipped = load_config(TrainConfig, "adabn-only")
    assert shipped.adapt.only and shipped.adapt.method == "adabn"


@pytest.mark.parametrize("joint", [False, True])
def test_joint_batch_norm_puts_both_batches_through_one_forward_pass(
    joint, train_store, field_store, tmp_path, monkeypatch
):
    """With ``joint_batch_norm`` the labelled and the field batch are one batch to the network
    (batch norm normalises both with the same statistics: what the domain head must see);
    without, two passes, each normalised by its own statistics."""
    sizes: list[int] = []
    original = adapt.JointAdaptation._forward_with_features

    def recorded(self, lit, x, call=None):
        sizes.append(len(x[0] if isinstance(x, tuple) else x))
        return original(self, lit, x, call)

    monkeypatch.setattr(adapt.JointAdaptation, "_forward_with_features", recorded)
    config = tiny_config(field_store, method="dann", joint_batch_norm=joint)
    run = train_models(config, train_store, tmp_path / "run", progress=False)
    assert sizes and sizes == ([8 + 4] if joint else [8, 4]) * (len(sizes) // (1 if joint else 2))
    with open(run.run_dir / "metrics.csv") as handle:
        losses = [
            float(r["adapt_domain_loss"])
            for r in csv.DictReader(handle)
            if r.get("adapt_domain_loss")
        ]
    assert losses and all(math.isfinite(v) for v in losses)


@pytest.mark.parametrize(("painted_after", "kept"), [(0.8, True), (0.6, False), (0.7, False)])
def test_adabn_if_better_keeps_the_statistics_only_where_the_painted_field_gains(
    monkeypatch, painted_after, kept
):
    """``adabn_keep: if_better``: AdaBN is judged on the painted field's validation cutouts
    alone (the last data set's rows), and where its AUROC there does not rise (0.7 before),
    every batch-norm statistic of training is put back."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    trained = model[1].running_mean.clone()
    lit = type("Lit", (), {"model": model})()
    parts = [np.zeros(6), np.zeros(4)]  # 6 simulated cutouts, then 4 painted
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1, 1, 0])
    datamodule = type(
        "DM", (), {"parts": parts, "val_indices": np.array([1, 2, 6, 7, 9]), "labels": labels}
    )()
    judged = []

    def auroc(lit, dm, positions=None, views=1):
        judged.append(None if positions is None else (positions.tolist(), views))
        if positions is None:
            return 0.5
        return 0.7 if len(judged) == 2 else painted_after

    def fake_adabn(model, field, config):
        model[1].running_mean.fill_(5.0)
        return {"layers": 1}

    monkeypatch.setattr(adapt, "validation_auroc", auroc)
    monkeypatch.setattr(adapt, "adabn_as_configured", fake_adabn)
    config = tiny_config(Path("field"), paint_lenses=True, adabn_keep="if_better")
    field = type("Field", (), {"record": lambda self: {}})()
    record = finish_adaptation(config, lit, field, datamodule)
    # the painted rows 6, 7, 9 of the validation set, scored with all D4 views (as scans do)
    assert judged[1] == judged[2] == ([2, 3, 4], 8)
    assert record["adabn"]["kept"] is kept
    assert record["adabn"]["painted_val_auroc_before"] == 0.7
    expected = torch.full((2,), 5.0) if kept else trained
    assert torch.equal(model[1].running_mean, expected)


def test_adabn_if_better_needs_painted_lenses_and_a_known_choice():
    with pytest.raises(ConfigError, match=r"needs adapt\.paint_lenses"):
        AdaptConfig(field="f", method="adabn", paint_lenses=False, adabn_keep="if_better")
    with pytest.raises(ConfigError, match="adabn_keep 'sometimes'"):
        AdaptConfig(field="f", method="adabn", adabn_keep="sometimes")


def test_a_painted_run_with_adabn_if_better_records_its_judgement(
    train_store, field_layout, tmp_path
):
    from lensfinder.config import InjectConfig

    config = tiny_config(
        field_layout,
        method="adabn",
        paint_lenses=True,
        paint=InjectConfig(paint_fraction=0.5, min_snr=10.0),
        adabn_keep="if_better",
    )
    out = tmp_path / "run"
    result = train_models(config, train_store, out, progress=False)
    adabn = read_meta(out)["adapt"]["adabn"]
    verdict = "kept" if adabn["kept"] else "left out"
    assert any(f"AdaBN on the field {verdict}" in note for note in result.notes)
    store = open_source(out / "field-painted.zarr")
    val = split_indices(np.asarray(store.ids), config.split)["val"]
    assert adabn["painted_val_cutouts"] == len(val)
    before, after = adabn["painted_val_auroc_before"], adabn["painted_val_auroc_after"]
    assert adabn["kept"] is (after > before)


# -- several labelled data sets ------------------------------------------------------------------
def test_training_on_two_data_sets(train_store, field_store, tmp_path):
    parts = [open_source(train_store), open_source(field_store)]
    both = ConcatSource(parts)
    rows = np.array([3, 45, 0, 55])
    got = both.read(rows)
    assert np.array_equal(got.vis[1], parts[1].read([5]).vis[0])
    assert np.array_equal(got.vis[0], parts[0].read([3]).vis[0])
    splits = split_parts(parts, SplitConfig(seed=0, test_fraction=0.1, val_fraction=0.3))
    assert (splits["val"] >= 40).any() and (splits["val"] < 40).any()  # validation from both

    result = train_models(tiny_config(), [train_store, field_store], tmp_path / "run", False)
    data = read_meta(result.run_dir)["data"]
    assert data["store"] == str(train_store.resolve())
    assert [d["store"] for d in data["data_sets"]] == [
        str(train_store.resolve()),
        str(field_store.resolve()),
    ]
    assert data["n_train"] + data["n_val"] + data["n_test"] == 56

    from lensfinder.data.selection import resolve_split

    meta = read_meta(result.run_dir)
    assert resolve_split("auto", open_source(field_store), [meta])[0] == "test"
    json.dumps(meta)  # plain JSON


# -- lenses painted on the field -----------------------------------------------------------------
def test_paint_lenses_trains_on_the_painted_field_beside_the_simulations(
    train_store, field_layout, tmp_path
):
    """``adapt.paint_lenses``: the field is painted and packed inside the run, trained on as a
    second labelled set, recorded in model.json; a rerun reuses it and is already trained."""
    from lensfinder.config import InjectConfig

    paint = InjectConfig(paint_fraction=0.5, min_snr=10.0)
    config = tiny_config(
        field_layout, method="none", paint_lenses=True, paint=paint, unpainted_holdback=0.4
    )
    config = dataclasses.replace(config, max_epochs=2)
    out = tmp_path / "run"
    result = train_models(config, train_store, out, progress=False)
    meta = read_meta(out)
    painted = meta["adapt"]["painted"]
    assert (out / "field-painted.zarr").is_dir() and (out / "field-painted").is_dir()
    assert painted["lenses"] >= 1 and painted["nonlenses"] >= 1
    store = open_source(out / "field-painted.zarr")
    assert painted["lenses"] + painted["nonlenses"] == len(store)
    # every painted galaxy is there untouched too, as a non-lens (the default twins)
    assert painted["settings"]["unpainted_twins"] is True
    kinds = np.asarray(store.catalog["kind"])
    twins = kinds == "unpainted_twin"
    assert twins.sum() == np.isin(kinds, ["lens", "painted_subthreshold"]).sum() >= 1
    assert (np.asarray(store.labels)[twins] == 0).all()
    assert len(meta["data"]["data_sets"]) == 2
    # the second epoch held back the unpainted field cutouts the model scored highest
    holdback = meta["adapt"]["unpainted_holdback"]
    assert holdback["epochs"] == 1 and holdback["n_unpainted_train"] >= 2
    held = holdback["held_back_ids"]
    assert len(held) == round(0.4 * holdback["n_unpainted_train"]) >= 1
    unpainted = set(np.asarray(store.ids)[np.asarray(store.labels) == 0].tolist())
    assert set(held) <= unpainted
    again = train_models(config, train_store, out, progress=False)
    assert again.already_trained and result.run_dir == again.run_dir


class _MeanScorer:
    """A stand-in LightningModule whose logit is the mean pixel of the first channel."""

    def __init__(self) -> None:
        self.model = torch.nn.Identity()
        self.device = torch.device("cpu")

    def __call__(self, x: object) -> torch.Tensor:
        return tensors(x)[0][:, 0].mean(dim=(1, 2))  # type: ignore[arg-type]


def test_unpainted_holdback_holds_back_the_highest_scoring_only_from_the_second_epoch(
    train_store,
):
    """The sampler's labels lose exactly the top share of the unpainted positions by the
    model's score (never a painted lens or another non-lens), from the second epoch; scoring
    draws nothing from the augmentation stream, so training's draws are as without it."""
    source = open_source(train_store)
    dataset = CutoutDataset(source, None, TINY_INPUT, augment=True, seed=3)
    twin = CutoutDataset(source, None, TINY_INPUT, augment=True, seed=3)
    negatives = np.flatnonzero(dataset.labels == 0)
    holdback = UnpaintedHoldback(negatives, share=0.25)
    scorer = _MeanScorer()
    assert np.array_equal(holdback(dataset, 0, scorer), dataset.labels)  # first epoch: none
    labels = holdback(dataset, 1, scorer)
    held = np.flatnonzero(labels == -1)
    assert len(held) == round(0.25 * len(negatives)) and set(held) <= set(negatives.tolist())
    scores = tensors(dataset.plain_input(negatives))[0][:, 0].mean(dim=(1, 2)).numpy()
    assert scores[np.isin(negatives, held)].min() >= scores[~np.isin(negatives, held)].max()
    kept = labels != -1
    assert np.array_equal(labels[kept], dataset.labels[kept])
    assert holdback.held_back_ids == sorted(np.asarray(dataset.ids)[held].tolist())
    x, _ = dataset.get_batch(np.arange(6))
    y, _ = twin.get_batch(np.arange(6))
    assert torch.equal(tensors(x)[0], tensors(y)[0])  # same augmentation draws as the twin
    with pytest.raises(ConfigError, match=r"unpainted_holdback 1\.0 not in"):
        AdaptConfig(unpainted_holdback=1.0)
