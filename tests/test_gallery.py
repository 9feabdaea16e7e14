"""The candidate gallery: the right candidates, each with its image, known lenses badged."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lensfinder.config import GalleryConfig
from lensfinder.data.identity import index_of_ids
from lensfinder.errors import DataError
from lensfinder.scan.gallery import make_gallery


@pytest.fixture(scope="module")
def candidates(tiny_store, tmp_path_factory) -> Path:
    """A scan-like catalogue of the tiny store with made-up scores (no model needed here)."""
    from lensfinder.data import open_source

    source = open_source(tiny_store)
    ids = np.asarray(source.ids)
    scores = np.linspace(0.99, 0.02, len(ids))  # rank 1 is the first object, and so on
    table = pa.table(
        {
            "rank": np.arange(1, len(ids) + 1),
            "id": ids,
            "score": scores,
            "ra": np.asarray(source.ra),
            "dec": np.asarray(source.dec),
            "label": np.asarray(source.labels, dtype=np.int8),
        }
    )
    out = tmp_path_factory.mktemp("scan")
    pq.write_table(table, out / "candidates.parquet")
    return out


def _cards(page: str) -> list[str]:
    return re.findall(r'<div class="card">.*?</div></div>', page)


def test_top_candidates_with_images_and_known_lens_badge(candidates, tiny_store, tmp_path):
    table = pq.read_table(candidates / "candidates.parquet").to_pydict()
    known = tmp_path / "known.csv"  # the 2nd-ranked candidate is a known lens
    known.write_text(f"name,ra,dec\nSLACS-X,{table['ra'][1]},{table['dec'][1]}\n")
    out = tmp_path / "gallery"
    result = make_gallery(
        candidates, tiny_store, out, GalleryConfig(top=6, columns=3, known_lenses=str(known))
    )
    page = (out / "index.html").read_text()
    cards = _cards(page)
    assert result.n_shown == len(cards) == 6
    for rank, card in enumerate(cards, start=1):
        assert f"#{rank}<" in card and f"ID {table['id'][rank - 1]}<" in card
        (src,) = re.findall(r'<img src="([^"]+)"', card)
        assert (out / src).is_file() and (out / src).stat().st_size > 500
    assert "known: SLACS-X" in cards[1] and page.count("known:") == 1
    assert result.n_known == 1
    from PIL import Image

    stamp = np.asarray(Image.open(next((out / "stamps").glob("*.png"))))
    assert stamp.shape == (128, 128, 3) and stamp.std() > 0  # a picture, not a blank
    assert (out / "mosaic.png").stat().st_size > 1000


def test_score_range_selects_borderline_candidates(candidates, tiny_store, tmp_path):
    table = pq.read_table(candidates / "candidates.parquet").to_pydict()
    low, high = 0.3, 0.6
    wanted = [i for i, s in zip(table["id"], table["score"], strict=True) if low <= s <= high]
    out = tmp_path / "gallery"
    result = make_gallery(
        candidates / "candidates.parquet",
        tiny_store,
        out,
        GalleryConfig(top=100, score_min=low, score_max=high),
        progress=False,
    )
    shown = [int(i) for i in re.findall(r"ID (\d+)<", (out / "index.html").read_text())]
    assert shown == wanted and result.n_shown == len(wanted) > 0
    capped = make_gallery(
        candidates,
        tiny_store,
        tmp_path / "capped",
        GalleryConfig(top=2, score_min=low, score_max=high),
        progress=False,
    )
    assert capped.n_shown == 2 and capped.n_selected == len(wanted)


def test_ids_missing_from_the_data_are_counted(candidates, tiny_store, tmp_path):
    table = pq.read_table(candidates / "candidates.parquet")
    ids = table["id"].to_numpy().copy()
    ids[0] = 999_999_999
    path = tmp_path / "cands.csv"
    import pyarrow.csv as pacsv

    pacsv.write_csv(table.set_column(1, "id", pa.array(ids)).drop_columns(["rank"]), path)
    result = make_gallery(path, tiny_store, tmp_path / "g", GalleryConfig(top=3), progress=False)
    assert result.n_missing == 1 and result.n_shown == 3
    assert "ID not in the data" in (tmp_path / "g" / "index.html").read_text()
    with pytest.raises(DataError, match="no candidate catalogue"):
        make_gallery(tmp_path / "nowhere", tiny_store, tmp_path / "h", GalleryConfig())


def test_index_of_ids():
    source = np.array([50, 10, 30, 20])
    np.testing.assert_array_equal(index_of_ids(source, np.array([20, 99, 50])), [3, -1, 0])
    assert index_of_ids(np.array([], dtype=np.int64), np.array([1])).tolist() == [-1]
