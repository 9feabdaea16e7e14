"""Mosaic tiles in, packed store out: the tile simulator, the cutter and their faults.

Small tiles (a few hundred pixels) with planted point sources test the geometry exactly; one
simulated tile tests the simulator's files, catalogue and resume.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from lensfinder import mer
from lensfinder.config import CutoutsConfig, SimulateConfig
from lensfinder.data import tiles as tiles_module
from lensfinder.data.challenge import reason_kind
from lensfinder.data.pixels import square_blocks
from lensfinder.data.store import open_store
from lensfinder.data.tiles import cutouts, parse_selection
from lensfinder.errors import ConfigError
from lensfinder.simulate.tile import image_header, render_scene, tile_wcs, write_image
from lensfinder.surveys import EUCLID
from lensfinder.testing import cli, one_line_error

SIZE = 400  # planted tiles: pixels per side at 0.1"/px
TAG = "ABC123_20250101T000000.000000Z_00.00"


def _sky(x: np.ndarray, y: np.ndarray, sources: list[tuple[float, float]], band) -> np.ndarray:
    """Gaussian point sources of unit flux (global 0.1" pixel coordinates), PSF of ``band``."""
    sigma = band.psf_fwhm / (2 * math.sqrt(2 * math.log(2))) / 0.1
    image = np.zeros(x.shape)
    for sx, sy in sources:
        image += np.exp(-((x - sx) ** 2 + (y - sy) ** 2) / (2 * sigma**2)) / (
            2 * math.pi * sigma**2
        )
    return image


def planted_tile(
    root: Path,
    index: int,
    sources: list[tuple[float, float]],
    x_offset: int = 0,
    bands=EUCLID.bands,
    seed: int = 0,
) -> dict[str, Path]:
    """A tile whose pixel (0, 0) is global pixel (x_offset, 0) of one sky grid, with the point
    sources at global positions; returns the science file of each band."""
    rng = np.random.default_rng(seed)
    wcs = tile_wcs(SIZE, 0.1, 150.0, 2.0)
    wcs.wcs.crpix = [wcs.wcs.crpix[0] - x_offset, wcs.wcs.crpix[1]]
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    paths = {}
    for band in bands:
        image = _sky(xx + x_offset, yy, sources, band) + 1e-4 * rng.standard_normal(xx.shape)
        name = mer.image_name("science", band.name, index, TAG)
        paths[band.name] = write_image(
            root / name, image.astype(np.float32), image_header(wcs, band, "science")
        )
        flag = root / mer.image_name("flag", band.name, index, TAG)
        write_image(flag, np.zeros((SIZE, SIZE), np.int32), image_header(wcs, band, "flag"))
    return paths


def catalogue(path: Path, positions: list[tuple[float, float]], first_id: int = 1) -> Path:
    """A MER-style catalogue of objects at global pixel positions of the planted grid."""
    wcs = tile_wcs(SIZE, 0.1, 150.0, 2.0)
    ra, dec = wcs.pixel_to_world_values(*np.array(positions, dtype=float).T)
    ids = np.arange(first_id, first_id + len(positions), dtype=np.int64)
    Table({"OBJECT_ID": ids, "RIGHT_ASCENSION": ra, "DECLINATION": dec,
           "FLUX_VIS_PSF": np.arange(len(positions), dtype=float)}).write(path)  # fmt: skip
    return path


def centroid(image: np.ndarray) -> tuple[float, float]:
    """First moment (x, y) of the positive light within 8 pixels of the brightest pixel near
    the centre."""
    middle = image.shape[0] // 2
    core = image[middle - 3 : middle + 3, middle - 3 : middle + 3]
    py, px = np.unravel_index(np.argmax(core), core.shape)
    py, px = py + middle - 3, px + middle - 3
    win = image[py - 8 : py + 9, px - 8 : px + 9].clip(min=0)
    yy, xx = np.mgrid[-8:9, -8:9]
    return float(px + (xx * win).sum() / win.sum()), float(py + (yy * win).sum() / win.sum())


# ----------------------------------------------------------------------------- geometry


def test_point_sources_land_at_the_cutout_centre_in_every_band(tmp_path):
    # on pixel corners (exactly centred), and anywhere (centred to within half a pixel, the
    # offset kept in TILE_X/TILE_Y)
    sources = [(150.5, 160.5), (230.5, 250.5), (181.27, 203.81), (240.93, 170.12)]
    planted_tile(tmp_path / "tiles", 1, sources)
    cat = catalogue(tmp_path / "cat.fits", sources)
    result = cutouts(tmp_path / "tiles", cat, tmp_path / "st.zarr", progress=False)
    assert result.n_objects == 4 and not result.problems
    store = open_store(tmp_path / "st.zarr")
    rows = store.read(range(4))
    for k in range(4):
        x, y = store.catalog["TILE_X"][k], store.catalog["TILE_Y"][k]
        c0, r0 = math.floor(x) - 99, math.floor(y) - 99
        expected_vis = (x - c0, y - r0)  # 99.5, 99.5 for a source on a corner
        got = centroid(rows.vis[k])
        assert np.allclose(got, expected_vis, atol=0.1), (k, got, expected_vis)
        expected_nisp = [(v - 1 + 0.5) / 3 - 0.5 for v in expected_vis]  # 32.5 on a corner
        for band in range(3):
            got = centroid(rows.nisp[k, band])
            assert np.allclose(got, expected_nisp, atol=0.1), (k, band, got, expected_nisp)
        # flux-conserving: a 0.3" pixel holds its nine 0.1" pixels' flux (unit total)
        assert abs(rows.nisp[k, 0, 27:39, 27:39].sum() - 1.0) < 0.02
    assert np.allclose(store.ra, Table.read(cat)["RIGHT_ASCENSION"][np.argsort(store.ids)])


def test_non_integer_grid_ratio_is_interpolated(tmp_path):
    """NISP on its own 0.3" grid (ratio 1: cut at the nearest pixel corner, the source 0.3 px
    off it) and on a 0.12" grid (bilinear: exactly at the centre asked for)."""
    from lensfinder.data.tiles import BandGrid, resample_nisp

    for scale, expected in ((0.3, 32.8), (0.12, 32.5)):
        n = 200
        yy, xx = np.mgrid[0:n, 0:n].astype(float)
        sigma = 0.5 / 2.3548 / scale
        cx = cy = n / 2 - 0.5 + 0.3
        image = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)
        path = tmp_path / f"nisp-{scale}.fits"
        fits.PrimaryHDU(image.astype(np.float32)).writeto(path)
        grid = BandGrid(path, None, (n, n), scale)
        with tiles_module._opened(path) as hdu:
            plane = resample_nisp(hdu, grid, (cx, cy), None, 0)
        assert np.allclose(centroid(plane), (expected, expected), atol=0.1), scale
        assert abs(plane.sum() - 1.0) < 0.02, scale


# ----------------------------------------------------------------------------- edges, faults


@pytest.fixture
def two_tiles(tmp_path) -> tuple[Path, Path, dict, dict]:
    """Tile 1 covers global x 0-399, tile 2 x 250-649 (overlap 150 px), y 0-399 both."""
    sources = [(150.5, 200.5), (370.5, 200.5), (330.5, 200.5), (-300.5, 200.5)]
    root = tmp_path / "tiles"
    first = planted_tile(root, 1, sources)
    second = planted_tile(root, 2, sources, x_offset=250)
    cat = catalogue(tmp_path / "cat.fits", sources)
    return root, cat, first, second


def test_edge_objects_come_from_the_neighbour_or_are_counted(two_tiles, tmp_path):
    root, cat, _, _ = two_tiles
    result = cutouts(root, cat, tmp_path / "st.zarr", progress=False)
    store = open_store(tmp_path / "st.zarr")
    tile_of = dict(zip(store.ids.tolist(), store.catalog["TILE_INDEX"].tolist(), strict=True))
    assert tile_of == {1: 1, 2: 2}  # object 2 lies whole only in the neighbouring tile
    kinds = {p.id: reason_kind(p.reason) for p in result.problems}
    assert kinds == {3: "cutout crosses the tile edge", 4: "outside every tile"}
    assert "2 skipped" in result.summary()


def test_missing_band_and_corrupt_tile_cost_only_their_objects(two_tiles, tmp_path):
    root, cat, _, second = two_tiles
    second["J"].unlink()
    result = cutouts(root, cat, tmp_path / "a.zarr", progress=False)
    assert open_store(tmp_path / "a.zarr").ids.tolist() == [1]
    problem = next(p for p in result.problems if p.id == 2)
    assert "no NIR-J mosaic for tile 2" in problem.reason

    planted_tile(root, 2, [(370.5, 200.5)], x_offset=250)  # J back; now damage Y
    data = second["Y"].read_bytes()
    second["Y"].write_bytes(data[: len(data) // 2])
    result = cutouts(root, cat, tmp_path / "b.zarr", progress=False)
    problem = next(p for p in result.problems if p.id == 2)
    assert problem.path == str(second["Y"]) and "truncated FITS file" in problem.reason


def test_flagged_pixels_go_through_the_nonfinite_policy(tmp_path):
    sources = [(150.5, 150.5), (250.5, 250.5)]
    planted_tile(tmp_path / "tiles", 1, sources)
    flag_path = tmp_path / "tiles" / mer.image_name("flag", "VIS", 1, TAG)
    with fits.open(flag_path, mode="update") as hdul:
        hdul[0].data[100:130, 100:130] = 4  # a 30x30 mask in object 1's cutout: no data
        hdul[0].data[280:340:2, 280:340:2] = 1  # 900 scattered pixels of object 2's (> 1%)
    cat = catalogue(tmp_path / "cat.fits", sources)
    result = cutouts(tmp_path / "tiles", cat, tmp_path / "st.zarr", progress=False)
    assert result.n_objects == 1 and result.repaired_objects == 1
    assert [reason_kind(p.reason) for p in result.problems] == ["non-finite pixels"]
    vis = open_store(tmp_path / "st.zarr").read([0]).vis[0]
    assert int((square_blocks(vis == 0)).sum()) == 900  # the mask, as a zero-filled region
    off = CutoutsConfig(flag_mask=0)
    assert cutouts(tmp_path / "tiles", cat, tmp_path / "b.zarr", off, progress=False).n_objects == 2


def test_selection_is_parsed_never_evaluated(tmp_path):
    sources = [(150.5, 150.5), (250.5, 250.5)]
    planted_tile(tmp_path / "tiles", 1, sources)
    cat = catalogue(tmp_path / "cat.fits", sources)
    config = CutoutsConfig(select="FLUX_VIS_PSF > 0.5 and FLUX_VIS_PSF <= 1e3")
    result = cutouts(tmp_path / "tiles", cat, tmp_path / "st.zarr", config, progress=False)
    assert result.n_objects == 1 and open_store(tmp_path / "st.zarr").ids.tolist() == [2]
    assert [c.op for c in parse_selection("A >= 1 & B != -2.5e3")] == [">=", "!="]
    for bad in ("__import__('os').system('true')", "FLUX > x", "A > 1 or B < 2"):
        with pytest.raises(ConfigError, match="selection"):
            parse_selection(bad)


def test_bad_inputs_are_one_line_errors_naming_the_file(two_tiles, tmp_path):
    root, cat, first, _ = two_tiles
    out = tmp_path / "st.zarr"
    args = ("cutouts", "--tiles", root, "--catalog", cat, "--out", out)
    # a catalogue without the named columns
    result = cli("cutouts", "--tiles", root, "--catalog", cat, "--out", out, "--ra-column", "RA")
    one_line_error(result, str(cat), "no column RA")
    # bands of one tile on different footprints
    with fits.open(first["Y"], mode="update") as hdul:
        hdul[0].header["CRPIX1"] += 50
    one_line_error(cli(*args), str(first["Y"]), "does not match the VIS mosaic")
    with fits.open(first["Y"], mode="update") as hdul:
        hdul[0].header["CRPIX1"] -= 50
    # a wrong WCS
    with fits.open(first["VIS"], mode="update") as hdul:
        hdul[0].header["CTYPE1"], hdul[0].header["CTYPE2"] = "PIXEL", "PIXEL"
    one_line_error(cli(*args), str(first["VIS"]), "WCS")
    assert not out.exists() and not out.with_name("st.zarr.partial").exists()


def test_resume_after_an_interrupted_run(tmp_path, monkeypatch):
    sources = [(110.5 + 30 * k, 120.5 + 25 * k) for k in range(6)]
    planted_tile(tmp_path / "tiles", 1, sources)
    cat = catalogue(tmp_path / "cat.fits", sources)
    config = CutoutsConfig(chunk=1)
    monkeypatch.setattr("lensfinder.data.store.FLUSH_OBJECTS", 1)
    monkeypatch.setattr(tiles_module, "TASK_OBJECTS", 2)
    real, calls = tiles_module.cut_tile, []

    def dies_on_the_third_task(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # kill -9 between two tasks
        return real(*args, **kwargs)

    monkeypatch.setattr(tiles_module, "cut_tile", dies_on_the_third_task)
    out = tmp_path / "st.zarr"
    with pytest.raises(KeyboardInterrupt):
        cutouts(tmp_path / "tiles", cat, out, config, progress=False)
    assert out.with_name("st.zarr.partial").is_dir() and not out.exists()
    monkeypatch.setattr(tiles_module, "cut_tile", real)
    resumed = cutouts(tmp_path / "tiles", cat, out, config, progress=False)
    assert resumed.resumed and resumed.n_objects == 6
    fresh = cutouts(tmp_path / "tiles", cat, tmp_path / "fresh.zarr", config, progress=False)
    a, b = open_store(out), open_store(tmp_path / "fresh.zarr")
    assert a.ids.tolist() == b.ids.tolist()
    assert np.array_equal(a.read(range(6)).vis, b.read(range(6)).vis)
    assert a.content_fingerprint() == b.content_fingerprint() and fresh.n_objects == 6


def test_a_cutouts_run_killed_by_sigkill_resumes_to_the_same_store(tmp_path, monkeypatch):
    """A real kill -9 in the middle of ``cutouts`` (the process dies on its third task, with
    finished objects written): the re-run resumes and gives the store a fresh run gives."""
    sources = [(110.5 + 30 * k, 120.5 + 25 * k) for k in range(6)]
    planted_tile(tmp_path / "tiles", 1, sources)
    cat = catalogue(tmp_path / "cat.fits", sources)
    out = tmp_path / "st.zarr"
    code = (
        "import os, signal\n"
        "import lensfinder.data.store as store\n"
        "import lensfinder.data.tiles as tiles\n"
        "from lensfinder.config import CutoutsConfig\n"
        "store.FLUSH_OBJECTS, tiles.TASK_OBJECTS = 1, 2\n"
        "real, calls = tiles.cut_tile, []\n"
        "def dies(*args, **kwargs):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 3:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(*args, **kwargs)\n"
        "tiles.cut_tile = dies\n"
        f"tiles.cutouts({str(tmp_path / 'tiles')!r}, {str(cat)!r}, {str(out)!r}, "
        "CutoutsConfig(chunk=1), progress=False)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert out.with_name("st.zarr.partial").is_dir() and not out.exists()
    monkeypatch.setattr(tiles_module, "TASK_OBJECTS", 2)  # the plan the killed run made
    monkeypatch.setattr("lensfinder.data.store.FLUSH_OBJECTS", 1)  # and its writes
    resumed = cutouts(tmp_path / "tiles", cat, out, CutoutsConfig(chunk=1), progress=False)
    assert resumed.resumed and resumed.n_objects == 6
    cutouts(
        tmp_path / "tiles", cat, tmp_path / "fresh.zarr", CutoutsConfig(chunk=1), progress=False
    )
    a, b = open_store(out), open_store(tmp_path / "fresh.zarr")
    assert a.ids.tolist() == b.ids.tolist()
    assert np.array_equal(a.read(range(6)).vis, b.read(range(6)).vis)
    assert a.content_fingerprint() == b.content_fingerprint()


# ----------------------------------------------------------------------------- one model input


def test_same_sky_as_challenge_cutouts_and_from_a_tile_gives_the_same_input(tmp_path):
    """A simulated lens rendered by the challenge simulator (NISP on its 0.3" grid, written by
    its writer) and into a MER-like tile (NISP on the 0.1" grid, cut and summed back to 0.3")
    becomes nearly the same model input and the same score."""
    import torch

    from lensfinder.config import PredictConfig
    from lensfinder.data import open_source
    from lensfinder.data.transforms import to_model_input
    from lensfinder.predict import Predictor
    from lensfinder.simulate import writer
    from lensfinder.simulate.observing import NOMINAL
    from lensfinder.simulate.render import SceneRenderer, _exposure
    from lensfinder.simulate.simulation import draw_scene
    from lensfinder.testing import TINY_INPUT, make_run

    population = SimulateConfig()
    scene, _ = draw_scene(population, 7, True, np.random.default_rng([0, 7]))
    rng = np.random.default_rng(1)
    # the challenge cutouts: the cutout simulator's renderer and writer
    renderer = SceneRenderer(scene, EUCLID, population.supersampling, 0.02, NOMINAL)
    noise = {b.name: rng.standard_normal((b.cutout_pixels,) * 2) * _exposure(b).background_noise
             for b in EUCLID.bands}  # fmt: skip
    layout = tmp_path / "layout"
    for band in EUCLID.bands:
        image = (renderer.render(band).model + noise[band.name]).astype(np.float32)
        writer.write_band_fits(layout, band, 7, image, 150.0, 2.0)
    # the tile: the same scene on the common 0.1" grid; the same noise (NISP's spread evenly
    # over each 3x3 block, so a block sums to the challenge pixel's noise)
    stamp = render_scene(scene, 0.1, 200, population)
    wcs = tile_wcs(SIZE, 0.1, 150.0, 2.0)
    for k, band in enumerate(EUCLID.bands):
        mosaic = rng.standard_normal((SIZE, SIZE)) * _exposure(band).background_noise / 3
        mosaic[100:300, 100:300] = stamp[k]
        if k == 0:
            mosaic[100:300, 100:300] += noise["VIS"]
        else:
            mosaic[101:299, 101:299] += np.kron(noise[band.name], np.ones((3, 3))) / 9
        name = mer.image_name("science", band.name, 5, TAG)
        write_image(tmp_path / "tiles" / name, mosaic.astype(np.float32),
                    image_header(wcs, band, "science"))  # fmt: skip
    ra, dec = wcs.pixel_to_world_values(199.5, 199.5)
    Table({"OBJECT_ID": [7], "RIGHT_ASCENSION": [ra], "DECLINATION": [dec]}).write(
        tmp_path / "cat.parquet"
    )
    cutouts(tmp_path / "tiles", tmp_path / "cat.parquet", tmp_path / "st.zarr", progress=False)
    challenge = open_source(layout).read([0])
    tile = open_store(tmp_path / "st.zarr").read([0])
    x_challenge = to_model_input(challenge.vis, challenge.nisp, TINY_INPUT)
    x_tile = to_model_input(tile.vis, tile.nisp, TINY_INPUT)
    assert isinstance(x_challenge, torch.Tensor) and isinstance(x_tile, torch.Tensor)
    assert torch.allclose(x_challenge[:, 0], x_tile[:, 0], atol=1e-3)  # VIS: the same grid
    span = float(x_challenge.max() - x_challenge.min())
    # NISP differs only where the challenge renderer samples its PSF at 0.3" pixel centres
    # and the tile integrates it over 0.1" pixels: the bright core (measured: mean difference
    # 0.1% of the input's range, at most 7% in the core pixel; correlation 0.9997)
    diff = (x_challenge - x_tile).abs()
    assert float(diff.mean()) < 0.005 * span and float(diff.max()) < 0.1 * span
    pair = torch.stack([x_challenge.flatten(), x_tile.flatten()])
    assert float(torch.corrcoef(pair)[0, 1]) > 0.999
    run = make_run(tmp_path / "run", head_scale=30.0)
    predictor = Predictor([run], PredictConfig())
    scores = [predictor.predict_arrays(c.vis, c.nisp).score[0] for c in (challenge, tile)]
    assert abs(scores[0] - scores[1]) < 0.01, scores


# ----------------------------------------------------------------------------- the simulator


def test_simulated_tile_files_catalogue_truth_and_resume(tmp_path):
    import pyarrow.csv as pacsv

    out = tmp_path / "tile"
    args = ("simulate-tile", "--out", out, "--size", 256, "--lens-fraction", 0.2, "--seed", 3)
    result = cli(*args)
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    for band in ("VIS", "NIR-Y", "NIR-J", "NIR-H"):
        assert any(n.startswith(f"EUC_MER_BGSUB-MOSAIC-{band}_TILE") for n in names)
        assert any(n.startswith(f"EUC_MER_MOSAIC-{band}-RMS_TILE") for n in names)
        assert any(n.startswith(f"EUC_MER_MOSAIC-{band}-FLAG_TILE") for n in names)
    cat_path = next(out.glob("EUC_MER_FINAL-CAT_TILE*.fits"))
    cat = Table.read(cat_path)
    assert {"OBJECT_ID", "RIGHT_ASCENSION", "DECLINATION", "FLUX_VIS_PSF"} <= set(cat.colnames)
    assert not {"is_lens", "kind", "theta_E"} & set(cat.colnames)  # no labels
    truth = pacsv.read_csv(out / "truth.csv").to_pandas().set_index("OBJECT_ID")
    assert truth["is_lens"].sum() >= 1
    listed = truth.loc[np.asarray(cat["OBJECT_ID"])]
    assert np.allclose(listed["ra"], cat["RIGHT_ASCENSION"], atol=1e-9)
    assert np.allclose(listed["dec"], cat["DECLINATION"], atol=1e-9)
    vis_path = next(out.glob("EUC_MER_BGSUB-MOSAIC-VIS_TILE*.fits"))
    header = fits.getheader(vis_path)
    from astropy.wcs import WCS

    x, y = WCS(header).world_to_pixel_values(listed["ra"], listed["dec"])
    assert np.allclose(x, listed["x"], atol=1e-6) and np.allclose(y, listed["y"], atol=1e-6)
    # a lens's light is where the truth puts it
    vis = fits.getdata(vis_path)
    lens = truth[truth["is_lens"] == 1].iloc[0]
    window = vis[round(lens["y"]) - 20 : round(lens["y"]) + 20,
                 round(lens["x"]) - 20 : round(lens["x"]) + 20]  # fmt: skip
    assert window.mean() > 5 * np.median(fits.getdata(next(out.glob("EUC_MER_MOSAIC-VIS-RMS*"))))
    # resume: a band file lost is rendered again, the same bytes; the others are kept
    j_path = next(out.glob("EUC_MER_BGSUB-MOSAIC-NIR-J_TILE*.fits"))
    j_bytes, vis_time = j_path.read_bytes(), vis_path.stat().st_mtime_ns
    j_path.unlink()
    (out / "tile.json").unlink()
    again = cli(*args)
    assert again.exit_code == 0 and "1 band(s) written" in again.output, again.output
    assert j_path.read_bytes() == j_bytes and vis_path.stat().st_mtime_ns == vis_time
    # and the catalogue cuts from it
    store = tmp_path / "st.zarr"
    assert cli("cutouts", "--tiles", out, "--catalog", cat_path, "--out", store).exit_code == 0
    assert len(open_store(store)) >= 1


def test_dask_workers_give_the_same_store(tmp_path, monkeypatch):
    sources = [(110.5 + 30 * k, 120.5 + 25 * k) for k in range(5)]
    planted_tile(tmp_path / "tiles", 1, sources)
    cat = catalogue(tmp_path / "cat.fits", sources)
    monkeypatch.setattr(tiles_module, "TASK_OBJECTS", 2)  # three tasks on two workers
    one = cutouts(tmp_path / "tiles", cat, tmp_path / "one.zarr", progress=False)
    two = cutouts(tmp_path / "tiles", cat, tmp_path / "two.zarr", CutoutsConfig(workers=2),
                  progress=False)  # fmt: skip
    assert one.n_objects == two.n_objects == 5
    a, b = open_store(tmp_path / "one.zarr"), open_store(tmp_path / "two.zarr")
    assert a.content_fingerprint() == b.content_fingerprint()
