"""The simulator: the challenge layout, labels from the rule, physics, determinism, resume."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from lensfinder import layout
from lensfinder.config import SimulateConfig
from lensfinder.errors import ConfigError
from lensfinder.labels import label_rule
from lensfinder.simulate import simulate, simulate_object
from lensfinder.simulate.simulation import LENS_TWIN, lens_plan, twin_plan
from lensfinder.simulate.writer import RUN_FILE, read_row, row_path, rows_dir
from lensfinder.surveys import EUCLID

# lenstronomy 1.14.2 calls numpy's FFT in a way numpy 2 deprecates; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:lenstronomy")

N = 10
CONFIG = SimulateConfig(n=N, seed=7, workers=1, first_id=200000, lens_twin_fraction=0.25)
IDS = list(range(CONFIG.first_id, CONFIG.first_id + N))


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "datapack"
    result = simulate(CONFIG, out, progress=False)
    return out, result


def read_catalogue(path: Path) -> tuple[list[str], list[str], list[list[str]]]:
    """(comment lines, header fields, row fields) of a challenge catalogue, read plainly."""
    lines = path.read_text().splitlines()
    comments = [line for line in lines if line.startswith("#")]
    body = [line for line in lines if not line.startswith("#")]
    header, *rows = list(csv.reader(body))
    return comments, header, rows


def catalogue_columns(path: Path) -> dict[str, np.ndarray]:
    _, header, rows = read_catalogue(path)
    return {
        name: np.array([float(r[i]) if r[i] else np.nan for r in rows])
        for i, name in enumerate(header)
        if name and name != "kind"
    }


def image_data(root: Path, band: str, object_id: int) -> np.ndarray:
    return fits.getdata(layout.image_path(root, EUCLID.band(band), object_id))


def test_writes_exactly_the_challenge_layout(simulated):
    out, result = simulated
    assert result.written == N and result.skipped == 0
    public = out / layout.PUBLIC_DIR
    assert sorted(p.name for p in public.iterdir()) == ["EUC_H", "EUC_J", "EUC_VIS", "EUC_Y"]
    centres = []
    for band in EUCLID.bands:
        names = sorted(p.name for p in (public / band.directory).iterdir())
        assert names == sorted(f"imageEUC_{band.name}-{i}.fits" for i in IDS)
        for object_id in IDS:
            with fits.open(layout.image_path(out, band, object_id)) as hdul:
                assert len(hdul) == 1
                header, data = hdul[0].header, hdul[0].data
                side = 200 if band.name == "VIS" else 66
                assert data.shape == (side, side)
                assert data.dtype.kind == "f" and data.dtype.itemsize == 4
                assert np.isfinite(data).all() and data.std() > 0
                assert header["BAND"] == band.name
                assert header["PIXSCALE"] == pytest.approx(band.pixel_scale)
                assert header["OBJ_ID"] == object_id
                assert header["BUNIT"]
                wcs = WCS(header)
                assert wcs.has_celestial
                scale = wcs.proj_plane_pixel_scales()[0].to_value("arcsec")
                assert scale == pytest.approx(band.pixel_scale)
                centre = wcs.pixel_to_world((side - 1) / 2, (side - 1) / 2)
                centres.append((object_id, centre.ra.deg, centre.dec.deg))
    # one sky position per object, the same in every band, different between objects
    by_object = {}
    for object_id, ra, dec in centres:
        by_object.setdefault(object_id, []).append((ra, dec))
    for positions in by_object.values():
        assert np.allclose(positions, positions[0], atol=1e-9)
    assert len({round(p[0][0], 6) for p in by_object.values()}) == N
    assert (out / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_catalogue_has_the_challenge_format_and_the_lens_fraction(simulated):
    out, result = simulated
    comments, header, rows = read_catalogue(layout.catalog_path(out))
    assert comments and all(c.startswith("# ") for c in comments)
    assert header == ["", *layout.CATALOG_COLUMNS, "kind"]  # the reader ignores what it lacks
    assert len(rows) == N and all(len(r) == 28 for r in rows)
    assert [int(r[0]) for r in rows] == list(range(N))  # the unnamed index
    columns = catalogue_columns(layout.catalog_path(out))
    assert columns["ID"].astype(int).tolist() == IDS
    labels = label_rule(CONFIG.label_rule).apply(columns)
    assert labels.sum() == round(N * CONFIG.lens_fraction) == result.lenses
    # lenses and the plan agree object by object
    assert labels.astype(bool).tolist() == lens_plan(CONFIG).tolist()
    assert [r[-1] == "lens" for r in rows] == labels.astype(bool).tolist()
    # quantities the simulator defines are filled; the others are left empty
    assert np.isfinite(columns["mag_lens"]).all() and np.isnan(columns["halo_mass"]).all()
    lens = labels == 1
    assert (columns["n_source_im"][lens] >= 1).all() and (columns["mag_eff"][lens] > 1.6).all()
    einstein = np.sqrt(columns["ein_area"][lens] / np.pi)
    assert ((einstein > 0.3) & (einstein < 3.1)).all()


def test_lenses_carry_source_light_around_the_einstein_radius(simulated):
    """Measured on the written VIS images minus the simulator's model of everything but the
    source: lensed light sits within ~2 Einstein radii for lenses, not for non-lenses."""
    out, _ = simulated
    plan = lens_plan(CONFIG)
    twins = twin_plan(CONFIG, plan)
    assert (twins >= 0).sum() == 1  # a quarter of the 5 non-lenses
    x = (np.arange(200) - 99.5) * 0.1
    radius = np.hypot(*np.meshgrid(x, x))
    snr = {True: [], False: []}
    for object_id, is_lens, twin in zip(IDS, plan, twins, strict=True):
        twin_of = IDS[twin] if twin >= 0 else None
        obj = simulate_object(CONFIG, object_id, bool(is_lens), twin_of=twin_of)
        vis = obj.bands["VIS"]
        written = image_data(out, "VIS", object_id)
        assert np.array_equal(vis.image, written)  # an object is a pure function of (seed, ID)
        theta_e = obj.scene.theta_e if np.isfinite(obj.scene.theta_e) else 1.0
        annulus = (radius > 0.3 * theta_e) & (radius < 2 * theta_e + 0.3)
        c = vis.components
        residual = written - c["central"] - c["field"] - c["stars"]
        snr[bool(is_lens)].append(
            residual[annulus].sum() / (vis.background_noise * np.sqrt(annulus.sum()))
        )
    assert np.median(snr[True]) > 5
    assert np.median(snr[True]) > np.median(snr[False]) + 4
    assert max(abs(s) for s in snr[False]) < 5  # noise only


def test_nonlens_with_background_source_fails_the_rule():
    config = SimulateConfig(seed=3, supersampling=2, nonlens_mix={"elliptical+source": 1.0})
    rule = label_rule(config.label_rule)
    for object_id in (1000, 1001):
        obj = simulate_object(config, object_id, False, observe=False)
        row = obj.row
        assert obj.scene.kind == row["kind"] == "elliptical+source"
        assert obj.scene.has_source and row["n_sources"] == 1 and row["n_source_im"] >= 1
        assert row["mag_eff"] < 1.6 and row["source_flux"] > 0
        assert rule.apply({k: np.array([v]) for k, v in row.items()})[0] == 0


def test_subthreshold_nonlenses_are_multiply_imaged_but_fail_the_rule():
    """The rule's hard boundary: lensed sources just too faint or small to count as lenses."""
    config = SimulateConfig(seed=4, supersampling=1, nonlens_mix={"subthreshold": 1.0})
    rule = label_rule(config.label_rule)
    near = 0
    for object_id in range(2000, 2004):
        row = simulate_object(config, object_id, False, observe=False).row
        assert row["kind"] == "subthreshold" and row["n_sources"] == 1
        assert rule.apply({k: np.array([v]) for k, v in row.items()})[0] == 0
        near += row["n_source_im"] >= 2 and row["mag_eff"] >= 1.0 and row["n_pix_source"] >= 5
    assert near >= 3


@pytest.mark.parametrize("family", ["sersic_clumps", "multi", "edge_on", "shapelets"])
def test_every_source_family_makes_lenses(family: str):
    config = SimulateConfig(seed=5, supersampling=1, source_mix={family: 1.0})
    obj = simulate_object(config, 3000, True, observe=False)
    assert obj.scene.source_family == family and obj.row["mag_eff"] > 1.6
    source = obj.bands["VIS"].components["source"]
    assert source.sum() > 0 and source.min() > -1e-9 * source.max()  # FFT round-off only


def test_unknown_mix_kinds_are_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="nonlens_mix has unknown kind"):
        simulate(SimulateConfig(n=2, nonlens_mix={"blob": 1.0}), tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="source_mix shares"):
        simulate(SimulateConfig(n=2, source_mix={"multi": 0.0}), tmp_path / "x", progress=False)


def test_same_seed_gives_identical_files_with_one_or_two_workers(tmp_path):
    config = SimulateConfig(n=4, seed=11, supersampling=2)
    one = simulate(config, tmp_path / "one", progress=False)
    two = simulate(
        SimulateConfig(**{**vars(config), "workers": 2}), tmp_path / "two", progress=False
    )
    assert two.workers == 2 and one.lenses == two.lenses == 2
    for band in EUCLID.bands:
        for object_id in range(config.first_id, config.first_id + config.n):
            a = layout.image_path(one.out, band, object_id).read_bytes()
            b = layout.image_path(two.out, band, object_id).read_bytes()
            assert a == b
    assert one.catalog.read_text() == two.catalog.read_text()
    other = simulate(SimulateConfig(n=4, seed=12, supersampling=2), tmp_path / "o", progress=False)
    assert not np.array_equal(
        image_data(one.out, "VIS", 200000), image_data(other.out, "VIS", 200000)
    )


def test_rerun_skips_finished_objects_and_completes_a_partial_one(simulated, tmp_path):
    source, _ = simulated
    out = tmp_path / "copy"
    shutil.copytree(source, out)
    partial = IDS[3]
    original = image_data(out, "VIS", partial).copy()
    # a crash after two of the four band files: no row file, a band file missing
    row_path(out, partial).unlink()
    layout.image_path(out, EUCLID.band("H"), partial).unlink()
    layout.catalog_path(out).unlink()
    untouched = layout.image_path(out, EUCLID.band("VIS"), IDS[0])
    mtime = untouched.stat().st_mtime_ns

    result = simulate(CONFIG, out, progress=False)
    assert (result.written, result.skipped) == (1, N - 1)
    assert layout.image_path(out, EUCLID.band("H"), partial).is_file()
    assert np.array_equal(image_data(out, "VIS", partial), original)
    assert untouched.stat().st_mtime_ns == mtime
    assert layout.catalog_path(out).read_text() == layout.catalog_path(source).read_text()
    assert "already done" in result.summary()

    with pytest.raises(ConfigError, match="other settings"):
        simulate(SimulateConfig(**{**vars(CONFIG), "seed": 8}), out, progress=False)


def test_a_lens_twin_is_its_lens_without_the_arc():
    """The same deflector, environment, observing and noise: the observed pair differs by the
    arc's light (and its photon noise) and nowhere else, and the twin fails the label rule."""
    config = SimulateConfig(seed=11, supersampling=1)
    lens = simulate_object(config, 500, True)
    twin = simulate_object(config, 501, False, twin_of=500)
    assert (twin.row["kind"], twin.meta["twin_of"], twin.intended_lens) == (LENS_TWIN, 500, False)
    assert (
        label_rule(config.label_rule).apply({k: np.array([v]) for k, v in twin.row.items()})[0] == 0
    )
    assert twin.row["n_sources"] == 0 and np.isnan(twin.row["mag_eff"])
    for column in ("ein_area", "mag_lens", "n_gal_3", "n_gal_5", "n_gal_10", "z_lens"):
        assert twin.row[column] == lens.row[column]  # the same galaxy, its mass and surroundings
    assert twin.row["ID"] == 501 and (twin.ra, twin.dec) != (lens.ra, lens.dec)
    for band in EUCLID.bands:
        seen, unlensed = lens.bands[band.name], twin.bands[band.name]
        for name in ("central", "field", "stars"):
            assert np.array_equal(seen.components[name], unlensed.components[name])
        arc = seen.components["source"]
        assert unlensed.components["source"].max() == 0 and arc.sum() > 0
        difference = seen.image.astype(np.float64) - unlensed.image
        noise = seen.background_noise
        away = arc < 1e-3 * noise  # the same noise draw: equal up to the arc's photon noise
        assert np.abs(difference[away]).max() < 0.01 * noise
        assert difference.sum() == pytest.approx(arc.sum(), abs=3 * noise * np.sqrt((~away).sum()))


def test_simulate_writes_lens_twins_by_the_plan_and_resumes_only_with_the_same_share(tmp_path):
    config = SimulateConfig(n=6, seed=2, supersampling=1, lens_twin_fraction=0.5)
    plan = lens_plan(config)
    twins = twin_plan(config, plan)
    assert (twins >= 0).sum() == 2 and plan[twins[twins >= 0]].all() and not plan[twins >= 0].any()
    assert len(set(twins[twins >= 0])) == 2  # twins of two different lenses
    out = tmp_path / "sim"
    result = simulate(config, out, progress=False)
    assert result.lenses == 3 and "(2 non-lenses are lens twins)" in result.summary()
    _, header, rows = read_catalogue(layout.catalog_path(out))
    kinds = [row[header.index("kind")] for row in rows]
    assert [k == LENS_TWIN for k in kinds] == (twins >= 0).tolist()
    for position in np.flatnonzero(twins >= 0):
        twin_id, lens_id = 200000 + int(position), 200000 + int(twins[position])
        assert read_row(out, twin_id)["meta"]["twin_of"] == lens_id
        expected = simulate_object(config, twin_id, False, twin_of=lens_id).bands["H"].image
        assert np.array_equal(image_data(out, "H", twin_id), expected)
    with pytest.raises(ConfigError, match=r"lens_twin_fraction was 0\.5, now 0\.25"):
        simulate(
            SimulateConfig(**{**vars(config), "lens_twin_fraction": 0.25}), out, progress=False
        )
    # a simulation made before twins existed (no such setting recorded) resumes without them
    settings = rows_dir(out) / RUN_FILE
    recorded = json.loads(settings.read_text())
    settings.write_text(
        json.dumps({k: v for k, v in recorded.items() if k != "lens_twin_fraction"})
    )
    with pytest.raises(ConfigError, match=r"lens_twin_fraction was 0\.0, now 0\.5"):
        simulate(config, out, progress=False)


def test_a_simulation_made_before_irregular_neighbours_resumes_and_a_new_share_is_refused(
    tmp_path,
):
    config = SimulateConfig(n=2, seed=2, supersampling=1)
    out = tmp_path / "sim"
    simulate(config, out, progress=False)
    settings = rows_dir(out) / RUN_FILE
    recorded = json.loads(settings.read_text())
    assert recorded["irregular_neighbour_fraction"] == 0.0
    del recorded["irregular_neighbour_fraction"]
    settings.write_text(json.dumps(recorded))
    assert simulate(config, out, progress=False).lenses == 1  # absent means 0: it resumes
    changed = SimulateConfig(**{**vars(config), "irregular_neighbour_fraction": 0.5})
    with pytest.raises(ConfigError, match=r"irregular_neighbour_fraction was 0\.0, now 0\.5"):
        simulate(changed, out, progress=False)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n": 0}, "n must be >= 1, got 0"),
        ({"lens_fraction": 1.5}, "lens_fraction must be in"),
        ({"lens_fraction": -0.1}, "lens_fraction must be in"),
        ({"lens_twin_fraction": 1.5}, "lens_twin_fraction must be in"),
        ({"workers": 0}, "workers"),
        ({"label_rule": "halo_mass > 1e12"}, "does not compute"),
        ({"label_rule": "mag_eff >> 2"}, "cannot read clause"),
        ({"survey": "lsst"}, "unknown survey"),
    ],
)
def test_bad_config_is_a_clear_config_error(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):  # as the config is made, or by simulate
        config = SimulateConfig(**{**vars(SimulateConfig(n=2)), **overrides})
        simulate(config, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_lens_fraction_is_exact_at_the_extremes(tmp_path):
    for fraction, expected in ((0.0, 0), (1.0, 3)):
        config = SimulateConfig(n=3, seed=5, lens_fraction=fraction, supersampling=1)
        result = simulate(config, tmp_path / f"f{fraction}", progress=False)
        assert result.lenses == expected


def test_fits_files_are_byte_for_byte_what_astropy_writes():
    """The writer patches three cards of a cached header block: the same bytes as astropy's
    own ``PrimaryHDU(image, band_header(...)).writeto``, NaN pixels and extreme values too."""
    import io

    from lensfinder.simulate.writer import band_header, fits_bytes

    rng = np.random.default_rng(1)
    for band in EUCLID.bands:
        image = rng.normal(size=(band.cutout_pixels,) * 2).astype(np.float32)
        image[0, 0] = np.nan
        for object_id, ra, dec in [(200001, 150.123456789, -2.5), (9999999, 359.9, -1.2e-4)]:
            expected = io.BytesIO()
            fits.PrimaryHDU(image, band_header(band, object_id, ra, dec)).writeto(expected)
            assert fits_bytes(band, object_id, image, ra, dec) == expected.getvalue()


def test_planned_seconds_times_only_the_objects_left_and_writes_nothing(simulated, tmp_path):
    """A time budget plans a simulation before making it: the unfinished objects times a
    measured object's seconds over the workers the cores run (0 when all are done), and the
    timed objects go to a scratch folder, never into the simulation's own."""
    from lensfinder.simulate.simulation import planned_seconds

    source, _ = simulated
    assert planned_seconds(CONFIG, source) == 0.0
    out = tmp_path / "partial"
    shutil.copytree(source, out)
    for object_id in IDS[:4]:
        row_path(out, object_id).unlink()
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    one = planned_seconds(CONFIG, out, timed=2)
    assert 0.0 < one < 60.0
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    fresh = planned_seconds(CONFIG, tmp_path / "nothing-yet", timed=2)
    assert fresh > one  # 10 objects left against 4, each timed afresh (noisy, but 2.5x)
    assert not (tmp_path / "nothing-yet").exists()


def test_planned_seconds_leaves_out_what_a_first_rendering_costs_once(monkeypatch, tmp_path):
    """The first rendering of a kind of object compiles and caches (numba profiles, stamps):
    timed on it, a 6,000-object pool was planned at 4x its real minutes. The objects are
    rendered once to warm up, then timed: an object 50x slower the first time it is made
    plans as its warm self."""
    import time

    from lensfinder.simulate import simulation

    made: set[int] = set()

    def render(task: tuple) -> tuple[int, bool]:
        object_id = task[2]
        time.sleep(0.001 if object_id in made else 0.05)
        made.add(object_id)
        return object_id, task[3]

    monkeypatch.setattr(simulation, "_make_and_write", render)
    config = SimulateConfig(n=100, seed=1, workers=1)
    seconds = simulation.planned_seconds(config, tmp_path / "new", timed=4)
    assert 0.1 <= seconds < 0.5  # 100 warm objects of ~1 ms; timed cold it would say 5 s
    assert len(made) == 4


def test_nisp_shifted_against_vis_moves_its_light_and_leaves_vis_and_label_alone():
    """NISP's images shifted together (``band_shift_pixels``): the scene, row, label and VIS
    image are those of the aligned object; each NISP band's noise-free light moves by the
    recorded shift."""
    aligned = SimulateConfig(seed=11, supersampling=1)
    shifted = SimulateConfig(seed=11, supersampling=1, band_shift_pixels=0.5)
    before = simulate_object(aligned, 602, True)
    after = simulate_object(shifted, 602, True)
    np.testing.assert_equal(after.row, before.row)
    assert np.array_equal(after.bands["VIS"].image, before.bands["VIS"].image)
    assert (
        "band_shifts" not in before.meta
        and after.meta["band_offsets"] == before.meta["band_offsets"]
    )
    (_, x, y), *_ = after.meta["band_shifts"]
    for name in ("Y", "J", "H"):
        pixel = after.bands[name].band.pixel_scale
        moved, still = after.bands[name].model, before.bands[name].model
        axis = np.arange(moved.shape[0])
        for axis_sum, offset in ((0, x), (1, y)):  # columns carry x, rows y
            centre = [(m.sum(axis_sum) * axis).sum() / m.sum() for m in (moved, still)]
            assert centre[0] - centre[1] == pytest.approx(offset / pixel, abs=0.02)
        assert np.abs(after.bands[name].image - before.bands[name].image).max() > 0


def test_nisp_bands_own_depth_and_psf_leave_the_scene_vis_and_label_alone():
    """Each NISP band's own depth and PSF change only that band's image: the scene, its row
    (and so the label, measured in VIS) and the VIS image are those of the shared draws."""
    apart = SimulateConfig(seed=11, supersampling=1)  # the defaults draw them
    assert (apart.band_depth_scatter_mag, apart.band_psf_scatter) == (0.5, 0.15)
    shared = SimulateConfig(seed=11, supersampling=1, band_depth_scatter_mag=0, band_psf_scatter=0)
    for object_id, intended_lens in ((600, True), (601, False)):
        before = simulate_object(shared, object_id, intended_lens)
        after = simulate_object(apart, object_id, intended_lens)
        np.testing.assert_equal(after.row, before.row)  # NaN where a non-lens has no source
        assert "band_offsets" not in before.meta
        assert [name for name, _, _ in after.meta["band_offsets"]] == ["Y", "J", "H"]
        assert np.array_equal(after.bands["VIS"].image, before.bands["VIS"].image)
        for name, depth, fwhm in after.meta["band_offsets"]:
            observed, nominal = after.bands[name], before.bands[name]
            assert observed.band.exposure_time == pytest.approx(
                nominal.band.exposure_time * 10 ** (0.8 * depth)
            )
            shallower = observed.background_noise > nominal.background_noise
            assert shallower == (depth < 0)
            assert observed.band.psf_fwhm == pytest.approx(nominal.band.psf_fwhm * fwhm)
