"""``scan --tiles``: a survey scanned straight from mosaic tiles and its catalogue.

Two small simulated tiles (one catalogue) are scanned directly and through cutouts -> store ->
scan: the same objects, the same scores. Resume, counted uncuttable objects, one-line errors
and the gallery of a tile scan on the same tiles. One module-scoped 2-worker cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from lensfinder.config import (
    CutoutsConfig,
    GalleryConfig,
    PredictConfig,
    ScanConfig,
    TileSimulateConfig,
)
from lensfinder.data.store import open_store
from lensfinder.data.tile_source import open_tiles
from lensfinder.data.tiles import cutouts
from lensfinder.errors import ConfigError
from lensfinder.scan import scan
from lensfinder.scan.gallery import make_gallery
from lensfinder.simulate.tile import simulate_tile
from lensfinder.testing import cli, make_run, one_line_error, sparse_tile, two_worker_cluster

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TILE_PIXELS = 384
COLUMNS = ("OBJECT_ID", "RIGHT_ASCENSION", "DECLINATION")


@pytest.fixture(scope="module")
def scheduler():
    cluster = two_worker_cluster()
    yield cluster.scheduler_address
    cluster.close()


@pytest.fixture(scope="module")
def sky(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Two simulated tiles side by side on the sky, their catalogues joined into one CSV;
    returns (tiles directory, catalogue, model run)."""
    root = tmp_path_factory.mktemp("sky")
    tables = []
    for k, index in enumerate((101, 202)):
        config = TileSimulateConfig(
            size=TILE_PIXELS, lens_fraction=0.2, seed=k, tile_index=index, ra=150.0 + 0.02 * k
        )
        result = simulate_tile(config, root / "tiles" / f"tile{index}", progress=False)
        cat = fits.getdata(result.catalog)
        tables.append(
            pa.table(
                {c: np.asarray(cat[c]).astype(cat[c].dtype.newbyteorder("=")) for c in COLUMNS}
            )
        )
    catalogue = root / "catalogue.csv"
    pacsv.write_csv(pa.concat_tables(tables), catalogue)
    return root / "tiles", catalogue, make_run(root / "run")


def _cfg(shard_size: int = 5) -> ScanConfig:
    return ScanConfig(predict=PredictConfig(batch_size=4), shard_size=shard_size)


def _table(out: Path) -> dict[str, list]:
    return pq.read_table(out / "candidates.parquet").to_pydict()


def test_scan_from_tiles_equals_cutouts_then_scan(sky, scheduler, tmp_path):
    tiles, catalogue, run = sky
    store = tmp_path / "st.zarr"
    cutouts(tiles, catalogue, store, progress=False)
    via_store = scan([run], store, tmp_path / "a", _cfg(), scheduler=scheduler, progress=False)
    direct = scan([run], tiles, tmp_path / "b", _cfg(), scheduler=scheduler, progress=False,
                  catalog=catalogue)  # fmt: skip
    a, b = _table(tmp_path / "a"), _table(tmp_path / "b")
    assert direct.n_scored == via_store.n_scored == len(open_store(store)) > 10
    assert b["id"] == a["id"] and len(set(b["id"])) == len(b["id"])
    np.testing.assert_allclose(b["score"], a["score"], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(b["ra"], a["ra"])
    # each candidate carries its tile and its VIS pixel there, as the store's catalogue does
    st = open_store(store)
    row = {int(i): k for k, i in enumerate(np.asarray(st.ids))}
    order = [row[i] for i in b["id"]]
    for column in ("TILE_INDEX", "TILE_X", "TILE_Y"):
        np.testing.assert_array_equal(b[column.lower()], np.asarray(st.catalog[column])[order])
    assert set(b["tile_index"]) == {101, 202}
    # a shard is rows of one tile: a shard size larger than both tiles still gives two
    one_shard = scan([run], tiles, tmp_path / "c", _cfg(shard_size=1000), scheduler=scheduler,
                     progress=False, catalog=catalogue)  # fmt: skip
    assert one_shard.shards_total == 2
    by_shard = [pq.read_table(p)["tile_index"].to_pylist() for p in
                sorted((tmp_path / "c" / "shards").glob("shard-*.parquet"))]  # fmt: skip
    assert sorted(len(set(t)) for t in by_shard) == [1, 1]
    # and the gallery of the tile scan reads its candidates back from the tiles
    gallery = make_gallery(tmp_path / "b", tiles, tmp_path / "g", GalleryConfig(top=6),
                           progress=False)  # fmt: skip
    assert (gallery.n_shown, gallery.n_missing, gallery.n_unreadable) == (6, 0, 0)
    shown = json.loads((tmp_path / "g" / "gallery.json").read_text())
    assert [s["id"] for s in shown] == b["id"][:6] and all(s["stamp"] for s in shown)


def test_killed_tile_scan_resumes_to_the_same_catalogue(sky, scheduler, tmp_path):
    tiles, catalogue, run = sky
    out = tmp_path / "scan"
    first = scan([run], tiles, out, _cfg(), scheduler=scheduler, progress=False,
                 catalog=catalogue)  # fmt: skip
    clean = _table(out)
    shards = sorted((out / "shards").glob("shard-*.parquet"))
    # killed mid-scan: a shard never written, one half-written, a temp file left behind
    shards[0].unlink()
    shards[-1].write_bytes(shards[-1].read_bytes()[:100])
    (out / "shards" / ".shard-0-5.parquet.x.tmp").write_bytes(b"partial")
    (out / "candidates.parquet").unlink()
    again = scan([run], tiles, out, _cfg(), scheduler=scheduler, progress=False,
                 catalog=catalogue)  # fmt: skip
    assert (again.shards_done, again.shards_reused) == (2, first.shards_total - 2)
    resumed = _table(out)
    assert resumed["id"] == clean["id"] and len(set(resumed["id"])) == len(resumed["id"])
    np.testing.assert_allclose(resumed["score"], clean["score"], rtol=1e-6)
    assert not list((out / "shards").glob(".*.tmp"))
    # another selection of the catalogue is other objects: refused, never mixed in
    other = _cfg()
    other.cutouts = CutoutsConfig(select="OBJECT_ID < 200000000")  # tile 101 only
    with pytest.raises(ConfigError, match="objects in the data"):
        scan([run], tiles, out, other, scheduler=scheduler, progress=False, catalog=catalogue)


def test_objects_that_cannot_be_cut_are_counted(sky, scheduler, tmp_path):
    tiles, catalogue, run = sky
    table = pacsv.read_csv(catalogue)
    vis = next((tiles / "tile101").glob("EUC_MER_BGSUB-MOSAIC-VIS_*.fits"))
    wcs = WCS(fits.getheader(vis))
    edge_ra, edge_dec = wcs.pixel_to_world_values(4.0, TILE_PIXELS / 2)
    extra = pa.table({"OBJECT_ID": [9001, 9002],
                      "RIGHT_ASCENSION": [float(edge_ra), 10.0],
                      "DECLINATION": [float(edge_dec), -40.0]})  # fmt: skip
    cat = tmp_path / "cat.csv"
    pacsv.write_csv(pa.concat_tables([table, extra]), cat)
    # a copy of the tiles whose VIS flag map flags pixels all over one cuttable object
    copy = tmp_path / "tiles"
    for path in tiles.rglob("*.fits"):
        (copy / path.relative_to(tiles)).parent.mkdir(parents=True, exist_ok=True)
        (copy / path.relative_to(tiles)).write_bytes(path.read_bytes())
    planned = open_tiles(copy, cat)
    x, y = (float(planned.catalog[c][0]) for c in ("TILE_X", "TILE_Y"))
    tile = int(planned.catalog["TILE_INDEX"][0])
    flag = next(copy.rglob(f"EUC_MER_MOSAIC-VIS-FLAG_TILE{tile}-*.fits"))
    with fits.open(flag, mode="update") as hdul:
        # scattered flagged pixels (a region would be scored as missing data)
        hdul[0].data[round(y) - 60 : round(y) + 60 : 2, round(x) - 60 : round(x) + 60 : 2] = 1

    result = scan([run], copy, tmp_path / "scan", _cfg(), scheduler=scheduler, progress=False,
                  catalog=cat)  # fmt: skip
    summary = json.loads((tmp_path / "scan" / "summary.json").read_text())
    assert summary["source_problems"]["outside every tile"] == 1
    assert summary["source_problems"]["cutout crosses the tile edge"] >= 1
    assert summary["skipped"].get("non-finite pixels", 0) >= 1  # the flagged object(s)
    assert result.n_scored < len(planned)
    # every catalogue row is scored or counted, none silently lost
    counted = result.n_scored + sum(result.skipped.values()) + sum(result.source_problems.values())
    assert counted == cat.read_text().count("\n") - 1
    assert 9001 not in _table(tmp_path / "scan")["id"]
    assert "outside every tile: 1" in result.summary()


def test_tile_scan_input_errors_are_one_line(sky, tmp_path):
    tiles, catalogue, run = sky
    base = ("scan", "--model", run, "--out", tmp_path / "o")
    missing = cli(*base, "--tiles", tiles, "--catalog", catalogue, "--id-column", "NOPE")
    one_line_error(missing, str(catalogue), "no column NOPE")
    nowhere = cli(*base, "--tiles", tmp_path / "absent", "--catalog", catalogue)
    one_line_error(nowhere, "absent", "no such tiles directory")
    (tmp_path / "empty").mkdir()
    empty = cli(*base, "--tiles", tmp_path / "empty", "--catalog", catalogue)
    one_line_error(empty, "no MER mosaic files")
    one_line_error(cli(*base, "--tiles", tiles), "--catalog")
    one_line_error(cli(*base, "--tiles", tiles, "--catalog", tmp_path / "no.csv"), "no.csv")
    one_line_error(cli(*base), "--data", "--tiles")


_PEAK_GROWTH = """
import sys
import numpy as np
from lensfinder.data.tile_source import open_tiles

def peak_mib():  # VmHWM: this process's peak RSS
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024

source = open_tiles(sys.argv[1], sys.argv[2])
before = peak_mib()
cut = source.read(np.arange(len(source)))
print(int(cut.valid.sum()), peak_mib() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_cutting_a_wide_tile_keeps_memory_flat(tmp_path):
    """60 objects cut from an 8,000^2 tile (mostly empty, sparse files) in one read, as a scan
    worker reads them: its peak RSS grows by the cutouts, not by the pages of the tile (a map
    of whole files kept hundreds of MB of them resident)."""
    tiles, catalog = sparse_tile(tmp_path / "wide", 8000, 60, seed=1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", _PEAK_GROWTH, str(tiles), str(catalog)],
                          capture_output=True, text=True, env=env, check=True)  # fmt: skip
    valid, growth = done.stdout.split()
    assert int(valid) == 60
    assert float(growth) < 100, f"peak RSS grew {float(growth):.0f} MiB cutting 60 objects"
