"""The Euclid band table: its numbers agree with lenstronomy's and with the challenge geometry."""

import math

import pytest

from lensfinder.surveys import EUCLID, Band, get_survey


def test_band_order_and_geometry_of_the_challenge_cutouts():
    assert EUCLID.band_names == ("VIS", "Y", "J", "H")
    vis = EUCLID.band("VIS")
    assert (vis.pixel_scale, vis.cutout_pixels) == (0.1, 200)
    for name in ("Y", "J", "H"):
        band = EUCLID.band(name)
        assert (band.pixel_scale, band.cutout_pixels) == (0.3, 66)
        # NISP covers the VIS field to within one NISP pixel
        side = band.pixel_scale * band.cutout_pixels
        assert abs(side - vis.pixel_scale * vis.cutout_pixels) < band.pixel_scale


@pytest.mark.parametrize("name", ["VIS", "Y", "J", "H"])
def test_observing_numbers_match_lenstronomy(name):
    from lenstronomy.SimulationAPI.ObservationConfig.Euclid import Euclid

    theirs = Euclid(band=name).kwargs_single_band()
    ours = EUCLID.band(name).lenstronomy_kwargs()
    for key in ("read_noise", "ccd_gain", "exposure_time", "sky_brightness", "num_exposures"):
        assert ours[key] == pytest.approx(theirs[key]), key
    assert ours["magnitude_zero_point"] == pytest.approx(theirs["magnitude_zero_point"])
    assert ours["seeing"] == pytest.approx(theirs["seeing"])
    # the challenge grid uses 0.1"/px for VIS where lenstronomy has 0.101"
    assert ours["pixel_scale"] == pytest.approx(theirs["pixel_scale"], abs=0.0011)


def test_psf_sigma_in_pixels():
    vis = EUCLID.band("VIS")
    assert vis.psf_sigma_pixels == pytest.approx(0.16 / (2 * math.sqrt(2 * math.log(2))) / 0.1)
    assert EUCLID.band("H").psf_fwhm > EUCLID.band("VIS").psf_fwhm  # NISP is blurrier


def test_unknown_band_and_survey_are_clear_errors():
    with pytest.raises(ValueError, match="no band 'K'"):
        EUCLID.band("K")
    with pytest.raises(ValueError, match="unknown survey 'lsst'"):
        get_survey("lsst")
    assert get_survey("Euclid") is EUCLID


def test_band_validation():
    kwargs = EUCLID.band("VIS").__dict__ | {"pixel_scale": 0.0}
    with pytest.raises(ValueError, match="pixel_scale must be positive"):
        Band(**kwargs)
