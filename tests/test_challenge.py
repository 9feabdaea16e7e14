"""Reading the challenge layout: round trip, labels by rule, and every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from lensfinder.data.challenge import read_catalog, read_layout, reason_kind
from lensfinder.data.source import open_source
from lensfinder.errors import DataError
from lensfinder.layout import CATALOG_NAME, KNOWN_MISSING_IDS, image_path
from lensfinder.surveys import EUCLID
from lensfinder.testing import write_fits

VIS, Y, J, H = EUCLID.bands


def test_reads_ids_labels_pixels_and_positions(tiny_layout: Path) -> None:
    layout = read_layout(tiny_layout)
    assert layout.ids.dtype == np.int64
    assert layout.ids.tolist() == list(range(200000, 200024))
    assert layout.problems == []
    cat = layout.catalog
    expected = (cat["n_source_im"] > 0) & (cat["mag_eff"] > 1.6) & (cat["n_pix_source"] > 20)
    assert layout.labels.dtype == np.int8
    np.testing.assert_array_equal(layout.labels, expected.astype(np.int8))
    assert layout.labels.sum() == 12  # the fixture makes exactly half lenses

    obj = layout.load(3)
    raw_vis = fits.getdata(image_path(tiny_layout, VIS, 200003))
    raw_h = fits.getdata(image_path(tiny_layout, H, 200003))
    assert obj.vis.dtype == np.float32 and obj.vis.dtype.isnative
    np.testing.assert_array_equal(obj.vis, raw_vis.astype(np.float32))
    np.testing.assert_array_equal(obj.nisp[2], raw_h.astype(np.float32))
    assert obj.nisp.shape == (3, 66, 66)

    header = fits.getheader(image_path(tiny_layout, VIS, 200003))
    assert layout.ra[3] == pytest.approx(header["CRVAL1"], abs=1e-9)
    assert layout.dec[3] == pytest.approx(header["CRVAL2"], abs=1e-9)


def test_label_rule_is_a_setting(tiny_layout: Path) -> None:
    other = read_layout(tiny_layout, label_rule="mag_eff > 5")
    np.testing.assert_array_equal(other.labels, (other.catalog["mag_eff"] > 5).astype(np.int8))
    assert other.label_rule == "mag_eff > 5"


def test_no_catalogue_means_unlabelled_and_no_wcs_means_nan(layout_factory) -> None:
    root = layout_factory("unlabelled", n=3, catalog=False, wcs=False)
    layout = read_layout(root)
    assert layout.labels.tolist() == [-1, -1, -1]
    assert not layout.has_catalog and layout.catalog == {}
    assert np.isnan(layout.ra).all() and np.isnan(layout.dec).all()


def test_public_folder_is_accepted_as_root(tiny_layout: Path) -> None:
    assert read_layout(tiny_layout / "Public").root == tiny_layout


def test_catalogue_parsing_comments_empty_fields_and_bad_rows(tmp_path: Path) -> None:
    text = (
        "# a comment\n# another\n"
        ",ID,mag_eff,n_source_im,n_pix_source\n"
        "0,200000,2.5,1,30\n"
        "1,200001,,1,30\n"  # empty field -> NaN
        "2,200002,3.0,1\n"  # too few fields
        "3,200003,abc,1,30\n"  # not a number
        "4,200000,9,9,99\n"  # duplicate ID keeps the first
    )
    path = tmp_path / "cat.csv"
    path.write_text(text)
    columns, problems = read_catalog(path)
    assert columns["ID"].tolist() == [200000, 200001]
    assert np.isnan(columns["mag_eff"][1]) and columns["mag_eff"][0] == 2.5
    reasons = sorted(p.reason for p in problems)
    assert reasons == [
        "catalogue row has 4 fields, header has 5",
        "catalogue row holds a non-number",
        "duplicate catalogue ID",
    ]
    assert any(p.path.endswith("cat.csv:6") for p in problems)  # real line numbers


def test_kind_text_is_carried_and_other_unknown_columns_are_ignored(tmp_path: Path) -> None:
    text = (
        ",ID,mag_eff,kind,note,weight\n"
        "0,200000,2.5,lens,bright arc,1.5\n"
        "1,200001,0.5, spiral ,,2\n"
        "2,200002,1.0,,x,\n"
        "3,200003,abc,ring,,1\n"  # a non-number in a challenge column is still a bad row
    )
    path = tmp_path / "cat.csv"
    path.write_text(text)
    columns, problems = read_catalog(path)
    assert sorted(columns) == ["ID", "kind", "mag_eff", "weight"]  # 'note' holds text: ignored
    assert columns["kind"].tolist() == ["lens", "spiral", ""]
    assert columns["kind"].dtype.kind == "U"
    np.testing.assert_array_equal(columns["weight"], [1.5, 2.0, np.nan])
    assert [p.reason for p in problems] == ["catalogue row holds a non-number"]


def test_layout_with_and_without_kind(kinds_layout: Path, tiny_layout: Path) -> None:
    from lensfinder.testing import TINY_KINDS

    layout = read_layout(kinds_layout)
    kinds = layout.catalog["kind"]
    assert len(kinds) == len(layout) == 40
    assert set(kinds[layout.labels == 1]) == {"lens"}
    assert set(kinds[layout.labels == 0]) == set(TINY_KINDS)
    assert open_source(kinds_layout).catalog["kind"].tolist() == kinds.tolist()
    assert "kind" not in read_layout(tiny_layout).catalog  # real catalogues have none


@pytest.fixture()
def broken_layout(layout_factory) -> Path:
    """Eight objects, six of them broken in different ways, plus catalogue mismatches."""
    root = layout_factory("broken", n=8, seed=3)
    image_path(root, VIS, 200000).write_bytes(b"this is not a FITS file" * 50)  # corrupt
    j_file = image_path(root, J, 200001)
    j_file.write_bytes(j_file.read_bytes()[:5000])  # truncated
    bad = fits.getdata(image_path(root, H, 200002)).astype(np.float32)
    bad[::2, ::2] = np.nan  # 25% non-finite, scattered (no region of no data): rejected
    write_fits(image_path(root, H, 200002), bad)
    few = fits.getdata(image_path(root, VIS, 200003)).astype(np.float32)
    few[5, 5], few[6, 7] = np.inf, np.nan  # two pixels: repaired
    write_fits(image_path(root, VIS, 200003), few)
    write_fits(image_path(root, Y, 200004), np.zeros((60, 60), np.float32))  # wrong shape
    image_path(root, H, 200005).unlink()  # missing band
    for band in EUCLID.bands:  # images without a catalogue row
        write_fits(image_path(root, band, 299999), np.zeros((band.cutout_pixels,) * 2))
    catalog = root / CATALOG_NAME
    lines = catalog.read_text().splitlines()
    last = lines[-1].split(",")
    for extra in (213913, 255555):  # catalogue IDs without images
        lines.append(",".join([str(int(last[0]) + 1), str(extra), *last[2:]]))
    catalog.write_text("\n".join(lines) + "\n")
    return root


def test_listing_problems_are_counted_not_raised(broken_layout: Path) -> None:
    layout = read_layout(broken_layout)
    assert 200005 not in layout.ids and 299999 not in layout.ids
    assert layout.ids.tolist() == [200000, 200001, 200002, 200003, 200004, 200006, 200007]
    by_id = {p.id: p.reason for p in layout.problems}
    assert by_id[200005] == "missing band H"
    assert by_id[299999] == "images without a catalogue row"
    assert 213913 in KNOWN_MISSING_IDS
    assert by_id[213913] == "catalogue ID without images (known missing in the challenge set)"
    assert by_id[255555] == "catalogue ID without images"
    assert len(layout.problems) == 4
    assert "4 skipped" in layout.summary()


def test_unreadable_files_give_reasons_when_read(broken_layout: Path) -> None:
    source = open_source(broken_layout)
    cutouts = source.read(range(len(source)))
    reasons = dict(zip(source.ids.tolist(), cutouts.reasons, strict=True))
    assert "corrupt FITS: not a FITS file" in reasons[200000] and "EUC_VIS" in reasons[200000]
    assert "truncated FITS file (5000 bytes)" in reasons[200001]
    assert "non-finite pixels: 1089 of 4356" in reasons[200002]
    assert reasons[200003] is None  # two NaN/inf pixels are repaired, not rejected
    assert "wrong shape (60, 60) for band Y" in reasons[200004]
    assert cutouts.valid.tolist() == [False, False, False, True, False, True, True]
    assert not cutouts.vis[~cutouts.valid].any() and not cutouts.nisp[~cutouts.valid].any()
    repaired = cutouts.vis[3]
    others = np.delete(repaired.ravel(), [5 * 200 + 5, 6 * 200 + 7])
    assert np.isfinite(repaired).all() and repaired[5, 5] == repaired[6, 7] == np.median(others)
    assert source.repaired_pixels == 2
    assert source.validate().tolist() == cutouts.valid.tolist()


def test_catalogue_missing_rule_columns_is_one_clear_error(layout_factory) -> None:
    root = layout_factory("nocols", n=2)
    catalog = root / CATALOG_NAME
    catalog.write_text(catalog.read_text().replace("mag_eff", "magnification"))
    with pytest.raises(DataError) as info:
        read_layout(root)
    message = str(info.value)
    assert "\n" not in message
    assert str(catalog) in message and "mag_eff" in message
    assert read_layout(root, label_rule="n_sources > 0").labels.shape == (2,)


@pytest.mark.parametrize("kind", ["empty", "missing", "file", "no_images"])
def test_not_a_layout_is_one_clear_error(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "data"
    if kind == "empty":
        target.mkdir()
    elif kind == "file":
        target.write_text("hello")
    elif kind == "no_images":
        (target / "Public" / "EUC_VIS").mkdir(parents=True)
        (target / "Public" / "EUC_VIS" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=str(target)) as info:
        read_layout(target)
    assert "\n" not in str(info.value)


def test_position_of_the_centre_from_an_offset_reference_pixel(layout_factory) -> None:
    """CRPIX 10 px right of the centre (CDELT1 < 0): the centre lies 1" east of CRVAL."""
    root = layout_factory("offset_wcs", n=1)
    path = image_path(root, VIS, 200000)
    with fits.open(path, mode="update") as hdul:
        hdul[0].header["CRPIX1"] = 110.5
        hdul[0].header["CRVAL1"], hdul[0].header["CRVAL2"] = 150.0, 2.0
    layout = read_layout(root)
    assert layout.ra[0] == pytest.approx(150.0 + 1 / 3600 / np.cos(np.radians(2.0)), abs=1e-9)
    assert layout.dec[0] == pytest.approx(2.0, abs=1e-7)
    assert layout.load(0).ra == layout.ra[0]


def test_reason_kind():
    assert reason_kind("/d/EUC_VIS/imageEUC_VIS-2.fits: truncated FITS file (80 bytes)") == (
        "truncated FITS file"
    )
    assert reason_kind("non-finite pixels: 3 of 40000 are NaN") == "non-finite pixels"
    assert reason_kind(None) == "invalid"


def test_label_gaps_count_only_rows_the_missing_value_decides() -> None:
    """A galaxy without a source has no mag_eff, but n_source_im > 0 already fails: not a gap.
    An imaged source with an empty or infinite mag_eff is one (it could have been a lens)."""
    from lensfinder.data.challenge import label_gaps
    from lensfinder.labels import label_rule

    rule = label_rule()
    columns = {
        "n_source_im": np.array([0.0, 2, 2, 2]),
        "mag_eff": np.array([np.nan, np.nan, np.inf, 3.0]),
        "n_pix_source": np.array([0.0, 50, 50, 50]),
    }
    labels = rule.apply(columns)
    assert labels.tolist() == [0, 0, 0, 1]
    assert label_gaps(rule, columns, labels) == {"rows": 2, "mag_eff": 2}
    columns["n_source_im"][1:3] = 0  # no images either: the gaps no longer decide anything
    assert label_gaps(rule, columns, rule.apply(columns)) == {}
