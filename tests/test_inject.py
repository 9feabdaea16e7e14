"""``lensfinder inject``: lensed sources painted onto a field's own galaxies."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from typer.testing import CliRunner

from lensfinder.cli import app
from lensfinder.config import InjectConfig
from lensfinder.data.challenge import read_layout
from lensfinder.data.source import open_unlabelled
from lensfinder.errors import ConfigError
from lensfinder.labels import label_rule
from lensfinder.layout import CATALOG_NAME, image_path
from lensfinder.simulate import writer
from lensfinder.simulate.deflectors import measure, plausible, survey_noise
from lensfinder.simulate.inject import inject, paint
from lensfinder.simulate.render import LightGroup, lens_model
from lensfinder.surveys import EUCLID
from lensfinder.testing import TINY_BAND_FLUX, make_tiny_layout, make_tiny_store

N = 5
FLUX_SCALE = 1e-11  # the tiny layout's noise sigma per pixel, times TINY_BAND_FLUX per band
NOISE_FREE = InjectConfig(paint_fraction=1.0, arc_noise=False, min_snr=10.0, unpainted_twins=False)
NOISY = InjectConfig(paint_fraction=0.6, min_snr=10.0, unpainted_twins=False)  # twins: one test


@pytest.fixture(scope="module")
def field(tmp_path_factory) -> Path:
    """Five cutouts of galaxies, in challenge-like units (~1e-11). Read-only!"""
    return make_tiny_layout(tmp_path_factory.mktemp("field"), n=N, seed=4, lens_fraction=0.0)


@pytest.fixture(scope="module")
def painted(field, tmp_path_factory) -> Path:
    """``field`` with sources painted on 3 of 5 galaxies, with photon noise. Read-only!"""
    return inject(field, tmp_path_factory.mktemp("painted") / "out", NOISY, progress=False).out


def _images(root: Path, object_id: int) -> dict[str, np.ndarray]:
    return {
        b.name: fits.getdata(image_path(root, b, object_id)).astype(np.float64)
        for b in EUCLID.bands
    }


def _records(root: Path) -> dict[int, dict]:
    """Each output's stored row (missing values NaN) and truth, by ID."""
    ids = [int(p.stem) for p in writer.rows_dir(root).glob("*.json") if p.stem.isdigit()]
    return {i: writer.read_row(root, i) for i in ids}


def _lensed_flux(scene, band, half_width: float = 7.0, step: float = 0.02) -> float:
    """The source's flux through the lens (e-/s) by ray-tracing a fine grid directly: no
    pixels, no PSF, no supersampling logic of the renderer."""
    axis = np.arange(-half_width, half_width, step) + step / 2
    x, y = np.meshgrid(axis, axis)
    bx, by = lens_model(scene.lens_models).ray_shooting(x.ravel(), y.ravel(), scene.lens_kwargs)
    lights = LightGroup(scene.source)
    surface = lights.amplitudes(band) @ lights(bx, by).astype(np.float64)
    return float(surface.sum() * step**2)


def test_painted_arc_has_the_simulated_flux_after_the_psf(field):
    """Noise-free painting adds exactly the PSF-convolved arc, and its flux in every band is
    the ray-traced source flux converted by the field's noise scale (the tiny field's true
    scale: its noise sigma over the survey's)."""
    source = open_unlabelled(field)
    cutouts = source.read(range(2))
    rule = label_rule()
    for row in range(2):
        vis, nisp = cutouts.vis[row], cutouts.nisp[row]
        result = paint(
            vis, nisp, 1, np.random.default_rng(row), NOISE_FREE, survey=EUCLID, rule=rule
        )
        fields = {"VIS": vis, **{b: nisp[i] for i, b in enumerate(("Y", "J", "H"))}}
        for band in EUCLID.bands:
            delta = result.images[band.name].astype(np.float64) - fields[band.name]
            arc = result.arc[band.name]
            assert np.allclose(delta, arc, atol=1e-6 * np.abs(fields[band.name]).max())
            scale = result.meta["flux_scale"][band.name]  # measured on the cutout's noise
            ray_traced = _lensed_flux(result.scene, band)
            assert delta.sum() == pytest.approx(ray_traced * scale, rel=0.03), band.name
            true_scale = FLUX_SCALE * TINY_BAND_FLUX[band.name] / survey_noise(band)
            assert scale == pytest.approx(true_scale, rel=0.07), band.name


def test_galaxy_pixels_untouched_outside_the_arc(field, painted):
    """Where the painted source does not reach (its model is 0), every pixel is the field's,
    bit for bit, noise included; untouched cutouts are copied whole."""
    source = open_unlabelled(field)
    cut = source.read([2])
    vis, nisp = cut.vis[0], cut.nisp[0]
    result = paint(vis, nisp, 1, np.random.default_rng(5), NOISY, survey=EUCLID, rule=label_rule())
    fields = {"VIS": vis, **{b: nisp[i] for i, b in enumerate(("Y", "J", "H"))}}
    for band in EUCLID.bands:
        outside = result.arc[band.name] == 0
        assert 0 < (~outside).sum() < outside.sum()  # an arc, and most of the cutout
        assert np.array_equal(result.images[band.name][outside], fields[band.name][outside])
        assert (result.images[band.name][~outside] != fields[band.name][~outside]).mean() > 0.9

    records = _records(painted)
    assert sum(r["meta"]["kind"] != "field" for r in records.values()) == 3  # round(0.6 * 5)
    for object_id, record in records.items():
        before, after = _images(field, object_id), _images(painted, object_id)
        same = [np.array_equal(before[b.name], after[b.name]) for b in EUCLID.bands]
        assert all(same) if record["meta"]["kind"] == "field" else not any(same)


def test_unpainted_twins_are_the_painted_galaxies_untouched(field, painted, tmp_path):
    """With ``unpainted_twins`` every painted galaxy is written a second time, untouched and a
    non-lens, under a new ID after the others; the rest of the output is what it was without
    twins, and a re-run resumes."""
    twins_config = dataclasses.replace(NOISY, unpainted_twins=True)
    out = tmp_path / "twins"
    result = inject(field, out, twins_config, progress=False)
    assert (result.n, result.twins, result.written) == (N, 3, N + 3)
    assert "3 twins" in result.summary()
    records = _records(out)
    twins = {i: r for i, r in records.items() if r["meta"]["kind"] == "unpainted_twin"}
    assert len(records) == N + 3 and len(twins) == 3
    field_ids = set(open_unlabelled(field).ids.tolist())
    assert min(twins) > max(field_ids)  # new IDs, after the field's
    layout = read_layout(out)
    label_of = dict(zip(layout.ids.tolist(), layout.labels.tolist(), strict=True))
    assert sum(label_of.values()) == result.lenses  # twins add no lens
    painted_by_field = {
        r["row"]["field_id"]: i for i, r in records.items() if r["meta"]["kind"] not in
        ("field", "unpainted_twin")
    }  # fmt: skip
    assert len(painted_by_field) == 3
    for twin_id, record in twins.items():
        field_id = int(record["row"]["field_id"])
        sibling = painted_by_field[field_id]  # the painted copy of the same galaxy
        assert label_of[twin_id] == 0  # a non-lens by the rule
        untouched, painted_copy = _images(field, field_id), _images(out, sibling)
        for band in EUCLID.bands:
            assert np.array_equal(_images(out, twin_id)[band.name], untouched[band.name])
            assert not np.array_equal(painted_copy[band.name], untouched[band.name])
    for object_id in field_ids:  # the rest as without twins, bit for bit
        for band in EUCLID.bands:
            assert np.array_equal(
                _images(out, object_id)[band.name], _images(painted, object_id)[band.name]
            )
    again = inject(field, out, twins_config, progress=False)
    assert (again.written, again.skipped) == (0, N + 3)
    with pytest.raises(ConfigError, match="unpainted_twins"):
        inject(field, out, NOISY, progress=False)


def test_outputs_made_before_twins_existed_still_resume(tmp_path):
    """A directory whose settings lack ``unpainted_twins`` was made without twins: the same
    settings resume, twins are refused."""
    writer.rows_dir(tmp_path).mkdir()
    (writer.rows_dir(tmp_path) / writer.RUN_FILE).write_text('{"seed": 0}')
    writer.check_run_settings(tmp_path, {"seed": 0, "unpainted_twins": False},
                              added={"unpainted_twins": False})  # fmt: skip
    with pytest.raises(ConfigError, match="unpainted_twins was False, now True"):
        writer.check_run_settings(
            tmp_path, {"seed": 0, "unpainted_twins": True}, added={"unpainted_twins": False}
        )


def test_arc_photon_noise_has_the_effective_gain(field):
    """Averaged over noise draws, painting adds the arc; the scatter is the arc's Poisson
    noise with electrons = field units * exposure / scale."""
    source = open_unlabelled(field)
    cut = source.read([0])
    vis, nisp = cut.vis[0], cut.nisp[0]
    config = InjectConfig(min_snr=10.0)
    draws = [
        paint(vis, nisp, 1, np.random.default_rng(7), config, survey=EUCLID, rule=label_rule())
        for _ in range(2)
    ]
    band = EUCLID.bands[0]
    arc = draws[0].arc["VIS"]
    noise = draws[0].images["VIS"].astype(np.float64) - vis - arc
    where = arc > np.percentile(arc[arc > 0], 50)
    scale = draws[0].meta["flux_scale"]["VIS"]
    expected = np.sqrt(arc[where] * scale / band.total_exposure)
    pulls = noise[where] / expected
    assert abs(pulls.mean()) < 0.15 and pulls.std() == pytest.approx(1.0, abs=0.15)
    assert np.array_equal(draws[0].images["VIS"], draws[1].images["VIS"])  # seeded


def test_labels_follow_the_rule(field, painted, tmp_path):
    """The catalogue's label is the rule's: painted lenses pass it, untouched galaxies are
    non-lenses, n_pix_source counts the painted arc's pixels above the field's noise; with a
    rule no injection can pass, every painted cutout is written as a non-lens."""
    catalogue = read_layout(painted)
    records = _records(painted)
    for index, object_id in enumerate(catalogue.ids.tolist()):
        kind = records[object_id]["meta"]["kind"]
        assert catalogue.labels[index] == (kind == "lens")
        assert catalogue.catalog["field_id"][index] == object_id
    strict = "n_source_im > 0 & mag_eff > 1.6 & n_pix_source > 100000"
    config = InjectConfig(paint_fraction=0.4, min_snr=10.0, label_rule=strict, source_tries=2)
    out = inject(field, tmp_path / "strict", config, progress=False)
    assert out.painted == 2 and out.lenses == 0
    strict_layout = read_layout(out.out, label_rule=strict)
    assert (strict_layout.labels == 0).all()
    kinds = [r["meta"]["kind"] for r in _records(out.out).values()]  # twins: the default
    assert sorted(kinds) == ["field"] * 3 + ["painted_subthreshold"] * 2 + ["unpainted_twin"] * 2
    painted_rows = [
        r for r in _records(out.out).values() if r["meta"]["kind"] == "painted_subthreshold"
    ]
    assert all(r["meta"]["source_tries"] == 2 for r in painted_rows)
    assert all(r["row"]["n_pix_source"] > 0 for r in painted_rows)


def test_n_pix_source_counts_painted_pixels_above_noise(field):
    source = open_unlabelled(field)
    cut = source.read([1])
    result = paint(
        cut.vis[0], cut.nisp[0], 1, np.random.default_rng(3), NOISE_FREE,
        survey=EUCLID, rule=label_rule(),
    )  # fmt: skip
    sigma = measure(cut.vis[0], cut.nisp[0], EUCLID).noise["VIS"].scale * survey_noise(
        EUCLID.bands[0]
    )
    counted = int((result.arc["VIS"] > sigma).sum())
    assert abs(counted - result.row["n_pix_source"]) <= max(2, 0.02 * counted)
    assert result.row["ein_area"] == pytest.approx(math.pi * result.meta["theta_e"] ** 2)
    assert 0.5 <= result.meta["theta_e"] <= 2.5


def test_store_and_layout_give_the_same_output(field, painted, tmp_path):
    store = make_tiny_store(field, tmp_path / "field.zarr")
    out = inject(store, tmp_path / "from_store", NOISY, progress=False).out
    for object_id in read_layout(painted).ids.tolist():
        a, b = _images(painted, object_id), _images(out, object_id)
        for band in EUCLID.bands:
            assert np.array_equal(a[band.name], b[band.name])


def test_field_labels_are_never_read(field, painted, tmp_path):
    """A field whose catalogue is scrambled (labels and truth) or deleted paints the same."""
    for variant in ("scrambled", "deleted"):
        copy = tmp_path / variant
        shutil.copytree(field, copy)
        catalogue = copy / CATALOG_NAME
        if variant == "deleted":
            catalogue.unlink()
        else:
            lines = catalogue.read_text().splitlines()
            body = [ln.split(",") for ln in lines if ln and not ln.startswith(("#", ","))]
            rng = np.random.default_rng(0)
            for fields in body:
                fields[2:] = [str(v) for v in rng.permutation(fields[2:])]
            header = [ln for ln in lines if ln.startswith(("#", ","))]
            catalogue.write_text("\n".join(header + [",".join(f) for f in body]) + "\n")
        out = inject(copy, tmp_path / f"out-{variant}", NOISY, progress=False)
        reference = _records(painted)
        for object_id, record in _records(out.out).items():
            assert record["row"] == reference[object_id]["row"]
            assert (
                record["meta"]["field_fingerprint"]
                == reference[object_id]["meta"]["field_fingerprint"]
            )
            a, b = _images(painted, object_id), _images(out.out, object_id)
            assert all(np.array_equal(a[n], b[n]) for n in a)


def test_flux_units_do_not_matter(field, painted, tmp_path):
    """The same field in units 1000x larger gets the same lenses, 1000x brighter."""
    scaled = tmp_path / "scaled"
    shutil.copytree(field, scaled)
    for path in (scaled / "Public").rglob("*.fits"):
        with fits.open(path, mode="update") as hdul:
            hdul[0].data = (hdul[0].data.astype(np.float64) * 1000).astype(">f4")
    out = inject(scaled, tmp_path / "out", NOISY, progress=False).out
    records, reference = _records(out), _records(painted)
    for object_id, record in records.items():
        assert record["meta"]["kind"] == reference[object_id]["meta"]["kind"]
        assert record["row"]["mag_eff"] == pytest.approx(
            reference[object_id]["row"]["mag_eff"], rel=1e-4, nan_ok=True
        )
        before, after = _images(field, object_id), _images(painted, object_id)
        before_k, after_k = _images(scaled, object_id), _images(out, object_id)
        for band in EUCLID.bands:
            arc, arc_k = (
                after[band.name] - before[band.name],
                after_k[band.name] - before_k[band.name],
            )
            tolerance = 1e-3 * max(np.abs(arc).max() * 1000, 1e-30)
            np.testing.assert_allclose(arc_k, 1000 * arc, atol=tolerance)


def test_deflector_measurements():
    """An elliptical Gaussian galaxy at the centre is measured with its axis ratio, angle and
    half-light radius; a cutout of pure noise has no deflector."""
    rng = np.random.default_rng(0)
    band = EUCLID.bands[0]
    axis = (np.arange(200) - 99.5) * band.pixel_scale
    x, y = np.meshgrid(axis, axis)
    q, phi, sigma = 0.5, 0.4, 0.4
    u = x * np.cos(phi) + y * np.sin(phi)
    v = -x * np.sin(phi) + y * np.cos(phi)
    galaxy = 40 * np.exp(-0.5 * (u**2 + (v / q) ** 2) / sigma**2)
    nisp = rng.normal(size=(3, 66, 66))
    measured = measure(galaxy + rng.normal(size=(200, 200)), nisp, EUCLID)
    assert measured.galaxy is not None
    assert measured.galaxy.q == pytest.approx(q, abs=0.08)
    assert measured.galaxy.phi == pytest.approx(phi, abs=0.08)
    # half-light radius of an elliptical Gaussian: sigma sqrt(2 ln 2) along the circle's mean
    assert measured.galaxy.half_light_radius == pytest.approx(
        sigma * math.sqrt(2 * math.log(2) * q), rel=0.2
    )
    assert plausible(measured, InjectConfig())
    noise_only = measure(rng.normal(size=(200, 200)), nisp, EUCLID)
    assert noise_only.galaxy is None and not plausible(noise_only, InjectConfig())


def test_resume_and_refusals(field, painted, tmp_path):
    out = tmp_path / "out"
    first = inject(field, out, NOISY, progress=False)
    again = inject(field, out, NOISY, progress=False)
    assert again.skipped == N and again.written == 0
    assert (out / CATALOG_NAME).read_text() == (first.catalog).read_text()
    other = make_tiny_layout(tmp_path / "other", n=3, seed=9, lens_fraction=0.0)
    with pytest.raises(ConfigError, match="other settings"):
        inject(other, out, NOISY, progress=False)
    with pytest.raises(ConfigError, match="input"):
        inject(field, field, NOISY, progress=False)
    with pytest.raises(ConfigError, match=r"lies inside .*an input of inject"):
        inject(field, field / "Public" / "painted", NOISY, progress=False)


def test_blue_field_galaxies_become_source_looks_never_behind_themselves(field, tmp_path):
    """``field_stamps``: the blue plausible central galaxies are cut as source looks (red ones
    are deflectors, not looks); with ``stamp_fraction`` 1 every painted source is one, except
    behind the galaxy whose own light would be the only look (a parametric source there)."""
    source = open_unlabelled(field)
    cutouts = source.read(list(range(N)))
    colours = [measure(cutouts.vis[i], cutouts.nisp[i], EUCLID).galaxy.colour for i in range(N)]
    bluest = int(source.ids[int(np.argmin(colours))])
    only_bluest = float(np.sort(colours)[1])  # the bluest alone is bluer than this
    config = dataclasses.replace(
        NOISE_FREE, field_stamps=True, stamp_fraction=1.0, red_colour=only_bluest
    )
    out = tmp_path / "looks"
    result = inject(field, out, config, progress=False)
    assert result.field_stamps == 1 and "1 blue galaxies as source looks" in result.summary()
    families = {
        int(r["row"]["field_id"]): r["meta"]["source_family"] for r in _records(out).values()
    }
    assert len(families) == N
    assert families.pop(bluest) != "stamp"
    assert set(families.values()) == {"stamp"}
    without = inject(field, tmp_path / "off", dataclasses.replace(config, field_stamps=False),
                     progress=False)  # fmt: skip
    assert without.field_stamps == 0 and "source looks" not in without.summary()
    off = {r["meta"]["source_family"] for r in _records(tmp_path / "off").values()}
    assert "stamp" not in off
    with pytest.raises(ConfigError, match="field_stamps"):  # resuming asks for the same looks
        inject(field, out, dataclasses.replace(config, field_stamps=False), progress=False)


def test_cli_inject(field, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(
        app, ["inject", str(field), "--out", str(out), "--paint-fraction", "0.2", "--min-snr", "10"]
    )
    assert result.exit_code == 0, result.output
    assert "painted 1 of 5" in result.output
    assert (out / "preview.png").is_file()
    missing = runner.invoke(app, ["inject", str(tmp_path / "nope"), "--out", str(out)])
    assert missing.exit_code == 2
    assert missing.output.strip().startswith("error:") and len(missing.output.splitlines()) == 1


def test_cli_settings_come_from_the_config_file_then_flags(field, tmp_path, monkeypatch):
    captured = {}

    def fake(field_arg, out, config):
        captured.update(field=field_arg, out=out, config=config)

        class Result:
            def summary(self) -> str:
                return "captured"

        return Result()

    monkeypatch.setattr("lensfinder.simulate.inject.inject", fake)
    yaml_file = tmp_path / "inject.yaml"
    yaml_file.write_text("paint_fraction: 0.2\nseed: 3\ntheta_e_range: [0.6, 2.0]\n")
    result = CliRunner().invoke(
        app,
        ["inject", str(field), "--out", str(tmp_path / "o"), "--config", str(yaml_file),
         "--seed", "5"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    config = captured["config"]
    assert (config.paint_fraction, config.seed, config.theta_e_range) == (0.2, 5, (0.6, 2.0))
    assert not config.field_stamps
    looks = CliRunner().invoke(
        app, ["inject", str(field), "--out", str(tmp_path / "o"), "--field-stamps"]
    )
    assert looks.exit_code == 0, looks.output
    assert captured["config"].field_stamps
    bad = CliRunner().invoke(
        app, ["inject", str(field), "--out", str(tmp_path / "b"), "--paint-fraction", "2"]
    )
    assert bad.exit_code == 2 and bad.output.startswith("error:")


def test_zero_filled_regions_are_missing_to_the_measurement_and_stay_empty(field):
    """A cutout partly off the survey's footprint (regions of exact zeros): the noise and the
    galaxy are measured on the data alone, and a painted arc never fills the empty region."""
    cutouts = open_unlabelled(field).read(range(2))
    rule = label_rule()
    for row in range(2):
        vis, nisp = cutouts.vis[row], cutouts.nisp[row]
        whole = measure(vis, nisp, EUCLID)
        edge_vis, edge_nisp = vis.copy(), nisp.copy()
        edge_vis[:, :60] = 0.0  # 30% of the cutout off the footprint
        edge_nisp[:, :, :20] = 0.0
        edge = measure(edge_vis, edge_nisp, EUCLID)
        as_data_vis = vis.copy()
        as_data_vis[:, :60] = 1e-30  # not exact zeros: noiseless data
        as_data = measure(as_data_vis, nisp, EUCLID)
        assert as_data.noise["VIS"].sigma < 0.8 * whole.noise["VIS"].sigma  # what zeros did
        for band in EUCLID.bands:
            assert edge.noise[band.name].sigma == pytest.approx(
                whole.noise[band.name].sigma, rel=0.06
            )
        assert whole.galaxy is not None and edge.galaxy is not None
        assert edge.galaxy.half_light_radius == pytest.approx(
            whole.galaxy.half_light_radius, rel=0.02
        )
        assert edge.galaxy.mag["VIS"] == pytest.approx(whole.galaxy.mag["VIS"], abs=0.1)

        masked_vis, masked_nisp = vis.copy(), nisp.copy()
        masked_vis[:, 106:120] = 0.0  # a masked column through the arc's ring
        masked_nisp[:, :, 35:40] = 0.0
        rng = np.random.default_rng(row)
        result = paint(masked_vis, masked_nisp, 1, rng, NOISE_FREE, survey=EUCLID, rule=rule)
        assert (result.images["VIS"][:, 106:120] == 0).all()
        assert (result.arc["VIS"][:, 100:106] > 0).any()  # the arc reaches the mask's edge
        for i, band in enumerate(("Y", "J", "H")):
            assert (result.images[band][:, 35:40] == 0).all()
            assert (result.images[band] != masked_nisp[i]).any()
