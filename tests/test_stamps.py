"""Galaxy stamps as light: a user's FITS folder and random shapelets."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from lensfinder.config import SimulateConfig
from lensfinder.errors import DataError
from lensfinder.simulate import simulate_object
from lensfinder.simulate.stamps import (
    STAMP_PAD,
    StampLibrary,
    cut_stamp,
    half_light_radius,
    random_shapelets,
)


def _write_stamps(folder, n: int = 3, pixscale: float | None = 0.03) -> None:
    folder.mkdir()
    axis = np.arange(41) - 20.0
    x, y = np.meshgrid(axis, axis)
    for i in range(n):
        image = np.exp(-0.5 * ((x - 3 * i) ** 2 / 16 + y**2 / 4)) + 0.3 * np.exp(
            -0.5 * ((x + 6) ** 2 + (y - 5) ** 2) / 2
        )
        header = fits.Header()
        if pixscale is not None:
            header["PIXSCALE"] = pixscale
        fits.PrimaryHDU(image.astype(np.float32), header=header).writeto(folder / f"g{i}.fits")


def test_half_light_radius_of_a_gaussian() -> None:
    axis = np.arange(101) - 50.0
    image = np.exp(-0.5 * np.hypot(*np.meshgrid(axis, axis)) ** 2 / 5.0**2)
    assert half_light_radius(image) == pytest.approx(5.0 * np.sqrt(2 * np.log(2)), rel=0.05)


def test_shapelet_galaxies_are_positive_normalised_and_differ() -> None:
    rng = np.random.default_rng(0)
    a, b = random_shapelets(rng), random_shapelets(rng)
    for stamp in (a, b):
        assert (stamp.image >= 0).all() and stamp.image.sum() == pytest.approx(1.0)
    assert not np.allclose(a.image, b.image)


def test_user_stamps_become_sources_and_nonlens_galaxies(tmp_path) -> None:
    _write_stamps(tmp_path / "stamps")
    config = SimulateConfig(
        seed=2, supersampling=1, source_stamps=str(tmp_path / "stamps"), stamp_fraction=1.0,
        nonlens_mix={"spiral": 1.0},
    )  # fmt: skip
    lens = simulate_object(config, 100, True, observe=False)
    assert lens.scene.source_family == "stamp" and lens.row["mag_eff"] > 1.6
    assert lens.bands["VIS"].components["source"].sum() > 0
    galaxy = simulate_object(config, 101, False, observe=False)
    assert galaxy.scene.kind == "stamp_galaxy"
    assert galaxy.bands["VIS"].components["central"].sum() > 0


def test_bad_stamp_folders_give_one_line_errors(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no FITS stamps"):
        StampLibrary.from_folder(tmp_path / "empty")
    _write_stamps(tmp_path / "noscale", n=1, pixscale=None)
    with pytest.raises(DataError, match="PIXSCALE"):
        StampLibrary.from_folder(tmp_path / "noscale")


def test_a_galaxy_cut_from_an_image_keeps_only_its_segment() -> None:
    """``cut_stamp``: the segment's light on its bounding box plus a zero border; a neighbour
    outside the segment and missing pixels are not part of it; unit sum."""
    axis = np.arange(60) - 30.0
    x, y = np.meshgrid(axis, axis)
    galaxy = np.exp(-0.5 * (x**2 + y**2) / 9.0)
    neighbour = 5.0 * np.exp(-0.5 * ((x - 20) ** 2 + y**2) / 2.0)
    image = galaxy + neighbour
    image[30, 31] = np.nan  # a missing pixel inside the galaxy
    segment = np.hypot(x, y) < 9.0
    stamp = cut_stamp(image, segment, "field:7")
    assert stamp.name == "field:7"
    assert stamp.image.shape == (17 + 2 * STAMP_PAD, 17 + 2 * STAMP_PAD)
    assert stamp.image.sum() == pytest.approx(1.0) and (stamp.image >= 0).all()
    inner = stamp.image[STAMP_PAD:-STAMP_PAD, STAMP_PAD:-STAMP_PAD]
    expected = np.where(segment, np.nan_to_num(galaxy), 0.0)[22:39, 22:39]
    expected[8, 9] = 0.0
    np.testing.assert_allclose(inner, expected / expected.sum(), rtol=1e-12)
    assert stamp.image[:STAMP_PAD].sum() == 0 and stamp.image[:, -STAMP_PAD:].sum() == 0
    with pytest.raises(DataError, match="field:8: the galaxy's segment is empty"):
        cut_stamp(image, np.zeros_like(segment), "field:8")


def test_a_library_less_one_stamp() -> None:
    rng = np.random.default_rng(1)
    library = StampLibrary([random_shapelets(rng) for _ in range(2)])
    assert library.without("nothing") is library
    assert library.without("shapelets") is None  # both are called "shapelets"
