"""The challenge layout's names and catalogue format, shared by the simulator and the reader."""

import numpy as np
import pytest

from lensfinder.layout import (
    CATALOG_COLUMNS,
    KNOWN_MISSING_IDS,
    format_catalog,
    image_path,
    parse_image_name,
)
from lensfinder.surveys import EUCLID


def test_paths_follow_the_challenge():
    path = image_path("/d", EUCLID.band("VIS"), 200123)
    assert path.as_posix() == "/d/Public/EUC_VIS/imageEUC_VIS-200123.fits"
    assert parse_image_name(path.name) == ("VIS", 200123)
    assert parse_image_name("imageEUC_J-7.fits") == ("J", 7)
    assert parse_image_name("notes.txt") is None


def test_catalog_text_has_header_index_and_empty_missing_fields():
    text = format_catalog(
        [{"ID": 200000, "mag_eff": 2.5, "n_source_im": 2}, {"ID": 200001, "mag_eff": np.nan}],
        comments=["simulated by lensfinder"],
    )
    lines = text.splitlines()
    assert lines[0] == "# simulated by lensfinder"
    assert lines[1].split(",") == ["", *CATALOG_COLUMNS]
    assert len(CATALOG_COLUMNS) == 26  # plus the unnamed index: 27 fields
    row0, row1 = (line.split(",") for line in lines[2:])
    assert len(row0) == 27 and row0[0] == "0" and row0[1] == "200000"
    assert row0[1 + CATALOG_COLUMNS.index("mag_eff")] == "2.5"
    assert row1[1 + CATALOG_COLUMNS.index("mag_eff")] == ""


def test_known_missing_ids():
    assert len(KNOWN_MISSING_IDS) == 9 and 213913 in KNOWN_MISSING_IDS


def test_extra_text_columns_follow_the_challenge_columns():
    rows = [{"ID": 1, "kind": "lens", "mag_eff": 2.0}, {"ID": 2, "kind": None}, {"ID": 3}]
    lines = format_catalog(rows).splitlines()
    assert lines[0].split(",") == ["", *CATALOG_COLUMNS, "kind"]
    assert [line.split(",")[-1] for line in lines[1:]] == ["lens", "", ""]
    assert all(len(line.split(",")) == 28 for line in lines)
    only = format_catalog(rows, extra_columns=()).splitlines()
    assert only[0].split(",") == ["", *CATALOG_COLUMNS]


def test_text_that_would_break_the_csv_is_refused():
    with pytest.raises(ValueError, match=r"row 0, column kind: 'ring, big'"):
        format_catalog([{"ID": 1, "kind": "ring, big"}])
