"""Known-lens flags: matches within the radius, never across a degree, never without coordinates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lensfinder.errors import DataError
from lensfinder.scan.crossmatch import flag_known_lenses, load_lens_catalog


def _write_catalog(path: Path, header: str = "Name,RA,DEC") -> Path:
    path.write_text(f"{header}\nLENS-A,150.1,2.2\nLENS-B,210.5,-30.25\nLENS-C,,\n")
    return path


def test_flags_object_at_catalogue_position_and_not_one_degree_away(tmp_path):
    catalog = _write_catalog(tmp_path / "known.csv")
    offset = 0.5 / 3600  # half an arcsec in Dec
    ra = np.array([150.1, 150.1, 210.5, np.nan, 150.1])
    dec = np.array([2.2 + offset, 3.2, -30.25, 2.2, 2.2 + 5 / 3600])
    matched, names, sep = flag_known_lenses(ra, dec, catalog, radius_arcsec=2.0)
    assert matched.tolist() == [True, False, True, False, False]
    assert names == ["LENS-A", None, "LENS-B", None, None]
    assert sep[0] == pytest.approx(0.5, abs=1e-3)
    assert sep[1] == pytest.approx(3600.0, rel=1e-3)  # the nearest entry is a degree away
    assert np.isnan(sep[3])  # no coordinates: no distance, never matched
    assert sep[4] == pytest.approx(5.0, abs=1e-3)


def test_column_names_found_case_insensitively_and_rows_without_coords_dropped(tmp_path):
    known = load_lens_catalog(_write_catalog(tmp_path / "known.csv", "object,Ra_Deg,dec"))
    assert known.names == ["LENS-A", "LENS-B"]
    np.testing.assert_allclose(known.dec, [2.2, -30.25])


def test_fits_catalogue(tmp_path):
    from astropy.table import Table

    path = tmp_path / "known.fits"
    Table({"NAME": ["X"], "RAJ2000": [10.0], "DEJ2000": [-5.0]}).write(path)
    matched, names, _ = flag_known_lenses(np.array([10.0]), np.array([-5.0]), path, 1.0)
    assert matched.tolist() == [True] and names == ["X"]


def test_catalogue_without_coordinates_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("name,x,y\nA,1,2\n")
    with pytest.raises(DataError, match=r"bad\.csv.*RA and Dec"):
        flag_known_lenses(np.array([1.0]), np.array([2.0]), path, 2.0)
    with pytest.raises(DataError, match="no such"):
        load_lens_catalog(tmp_path / "missing.csv")


def test_lenscat_mode_finds_a_published_lens_at_its_position_only():
    """RXJ1131-1231, a quadruply imaged quasar (Sluse et al. 2003): RA 11h31m51.5s,
    Dec -12d31m58s, i.e. (172.9644, -12.5329) deg as lenscat lists it."""
    pytest.importorskip("lenscat")
    ra0, dec0 = 172.9644, -12.5329
    arcsec = 1 / 3600
    # Our objects: on the lens, 1" north of it, 10" east of it, and 1 deg south (empty sky).
    ra = np.array([ra0, ra0, ra0 + 10 * arcsec / np.cos(np.radians(dec0)), ra0])
    dec = np.array([dec0, dec0 + arcsec, dec0, dec0 - 1.0])
    matched, names, sep = flag_known_lenses(ra, dec, "lenscat", radius_arcsec=2.0)
    assert matched.tolist() == [True, True, False, False]
    assert "RXJ1131" in names[0] and names[1] == names[0]
    assert names[2] is None and names[3] is None
    assert sep[1] == pytest.approx(1.0, abs=0.05)
    assert sep[2] == pytest.approx(10.0, abs=0.1)
