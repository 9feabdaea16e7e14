"""The packed store: equals the layout, reads any index set, resumes, refuses foreign dirs."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from astropy.io import fits

from lensfinder.data import store as store_module
from lensfinder.data.challenge import ChallengeLayout, read_layout
from lensfinder.data.source import LayoutSource, open_source
from lensfinder.data.store import StoreSource, open_store, pack
from lensfinder.errors import DataError
from lensfinder.testing import write_fits


def test_store_equals_layout(tiny_layout: Path, tiny_store: Path) -> None:
    store = open_store(tiny_store)
    layout = open_source(tiny_layout)
    assert isinstance(store, StoreSource) and isinstance(layout, LayoutSource)
    np.testing.assert_array_equal(store.ids, layout.ids)
    np.testing.assert_array_equal(store.labels, layout.labels)
    assert store.labels.dtype == np.int8 and store.ids.dtype == np.int64
    np.testing.assert_allclose(store.ra, layout.ra, rtol=0, atol=1e-12)
    np.testing.assert_allclose(store.dec, layout.dec, rtol=0, atol=1e-12)
    assert list(store.catalog) == list(layout.catalog)
    for name, values in layout.catalog.items():
        np.testing.assert_array_equal(store.catalog[name], values)
    everything = np.arange(len(layout))
    a, b = store.read(everything), layout.read(everything)
    np.testing.assert_array_equal(a.vis, b.vis)
    np.testing.assert_array_equal(a.nisp, b.nisp)
    assert a.vis.shape == (24, 200, 200) and a.nisp.shape == (24, 3, 66, 66)
    assert a.valid.all() and a.reasons == [None] * 24
    assert store.label_rule == layout.label_rule
    attrs = store.attrs
    assert attrs["bands"] == ["VIS", "Y", "J", "H"] and attrs["nisp_bands"] == ["Y", "J", "H"]
    assert attrs["survey"] == "euclid" and attrs["source"] == str(tiny_layout.resolve())
    assert attrs["lensfinder_store"] == 1 and "lensfinder_version" in attrs


def test_read_any_order_with_repeats(tiny_store: Path) -> None:
    store = open_store(tiny_store)
    full = store.read(slice(None))
    picks = [17, 3, 3, 0, 23, 9]
    part = store.read(picks)
    np.testing.assert_array_equal(part.vis, full.vis[picks])
    np.testing.assert_array_equal(part.nisp, full.nisp[picks])
    contiguous = store.read(range(5, 13))
    np.testing.assert_array_equal(contiguous.vis, full.vis[5:13])
    assert len(store.read([])) == 0
    with pytest.raises(IndexError, match="out of range"):
        store.read([24])
    in_memory = open_store(tiny_store).to_memory()
    np.testing.assert_array_equal(in_memory.read(picks).vis, part.vis)


@pytest.mark.parametrize("chunk", [8, 5])  # 5: the last chunk only partly used
def test_plain_chunks_are_read_from_their_files_exactly_as_zarr_reads_them(
    tiny_layout: Path, tmp_path: Path, chunk: int
) -> None:
    out = tmp_path / f"chunk{chunk}.zarr"
    pack(tiny_layout, out, chunk=chunk, progress=False)
    store = open_store(out)
    arrays = store._open()
    assert all(store._raw[name] is not None for name in ("vis", "nisp"))  # the fast path
    for lo, hi in [(0, 24), (3, 9), (4, 5), (7, 17), (20, 24), (0, chunk)]:
        read = store.read(range(lo, hi))
        np.testing.assert_array_equal(read.vis, arrays["vis"][lo:hi])
        np.testing.assert_array_equal(read.nisp, arrays["nisp"][lo:hi])
    # A chunk file of the wrong size is an error, as in Zarr: its rows come back invalid.
    key = arrays["vis"].metadata.encode_chunk_key((1, 0, 0))
    chunk_file = out / "vis" / key
    chunk_file.write_bytes(chunk_file.read_bytes()[:-4])
    broken = open_store(out).read(range(24))
    bad = np.flatnonzero(~broken.valid)
    assert bad.tolist() == list(range(chunk, 2 * chunk))
    assert (
        "unreadable store chunk" in broken.reasons[chunk]
        and str(chunk_file) in broken.reasons[chunk]
    )


def test_compressed_arrays_are_read_through_zarr(tmp_path: Path) -> None:
    from lensfinder.data.store import _RawChunks

    kinds = {
        "plain": {"compressors": None},
        "compressed": {"compressors": zarr.codecs.ZstdCodec()},
    }
    for name, options in kinds.items():
        array = zarr.create_array(
            tmp_path / name, shape=(10, 4), chunks=(8, 4), dtype="float32", **options
        )
        array[:] = np.arange(40, dtype=np.float32).reshape(10, 4)
        raw = _RawChunks.of(array, tmp_path / name)
        assert (raw is not None) == (name == "plain")
        if raw is not None:
            np.testing.assert_array_equal(raw.read(2, 10), array[2:10])


def test_store_source_pickles_for_worker_processes(tiny_store: Path) -> None:
    store = open_store(tiny_store)
    store.read([1])  # opens the arrays, which must not travel
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone.read([2, 4]).vis, store.read([2, 4]).vis)


def test_pack_twice_is_a_no_op_and_other_rule_is_refused(tiny_layout: Path, tmp_path) -> None:
    out = tmp_path / "s.zarr"
    first = pack(tiny_layout, out, progress=False)
    assert first.n_objects == 24 and first.n_lenses == 12 and "packed 24 objects" in first.summary()
    again = pack(tiny_layout, out, progress=False)
    assert again.already_packed and "already packed" in again.summary()
    with pytest.raises(DataError, match="another label rule"):
        pack(tiny_layout, out, label_rule="mag_eff > 3", progress=False)
    redone = pack(tiny_layout, out, label_rule="mag_eff > 3", progress=False, overwrite=True)
    assert open_store(out).label_rule == "mag_eff > 3"
    assert redone.n_lenses == int((read_layout(tiny_layout).catalog["mag_eff"] > 3).sum())
    with pytest.raises(DataError, match="packed with label rule"):
        open_source(out, label_rule="n_sources > 0")


def test_interrupted_pack_resumes(tiny_layout: Path, tmp_path, monkeypatch) -> None:
    out = tmp_path / "resumed.zarr"
    monkeypatch.setattr(store_module, "FLUSH_OBJECTS", 4)
    real_load = ChallengeLayout.load
    calls = {"n": 0}

    def dying_load(self, index, want_position=True):
        calls["n"] += 1
        if calls["n"] == 11:
            raise KeyboardInterrupt
        return real_load(self, index, want_position)

    monkeypatch.setattr(ChallengeLayout, "load", dying_load)
    with pytest.raises(KeyboardInterrupt):
        pack(tiny_layout, out, chunk=2, progress=False, workers=1)
    partial = out.with_name(out.name + ".partial")
    assert not out.exists() and partial.is_dir()
    assert zarr.open_group(partial, mode="r").attrs["written"] == 8
    with pytest.raises(DataError, match="unfinished pack"):
        open_source(partial)

    monkeypatch.setattr(ChallengeLayout, "load", real_load)
    result = pack(tiny_layout, out, chunk=2, progress=False, workers=1)
    assert result.resumed and result.n_objects == 24 and not partial.exists()
    fresh = pack(tiny_layout, tmp_path / "fresh.zarr", chunk=2, progress=False)
    a, b = open_store(out), open_store(fresh.out)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.read(range(24)).vis, b.read(range(24)).vis)
    np.testing.assert_array_equal(a.read(range(24)).nisp, b.read(range(24)).nisp)


def test_broken_objects_are_skipped_and_recorded(layout_factory, tmp_path) -> None:
    root = layout_factory("pack_broken", n=5, seed=7)
    vis_file = root / "Public" / "EUC_VIS" / "imageEUC_VIS-200002.fits"
    vis_file.write_bytes(vis_file.read_bytes()[:3000])
    h_file = root / "Public" / "EUC_H" / "imageEUC_H-200003.fits"
    h_pixels = fits.getdata(h_file).astype(np.float32)
    h_pixels[0, :2] = np.nan
    write_fits(h_file, h_pixels)
    result = pack(root, tmp_path / "b.zarr", progress=False)
    assert result.n_objects == 4 and result.repaired_objects == 1
    assert [p.id for p in result.problems] == [200002]
    assert "truncated" in result.problems[0].reason and "1 skipped" in result.summary()
    store = open_store(result.out)
    assert 200002 not in store.ids.tolist()
    assert [p.id for p in store.problems] == [200002]
    assert store.attrs["repairs"][0]["reason"] == "replaced 2 NaN/inf pixels in H"
    assert np.isfinite(store.read(range(4)).nisp).all()


def test_a_layout_without_usable_objects_is_an_error(layout_factory, tmp_path) -> None:
    root = layout_factory("all_broken", n=2)
    for path in (root / "Public" / "EUC_VIS").iterdir():
        path.write_bytes(b"x")
    out = tmp_path / "none.zarr"
    with pytest.raises(DataError, match="no usable objects; 2 skipped"):
        pack(root, out, progress=False)
    assert not out.exists() and not out.with_name("none.zarr.partial").exists()


def test_not_a_store_is_one_clear_error(tmp_path: Path, tiny_layout: Path) -> None:
    with pytest.raises(DataError, match="no such store"):
        open_store(tmp_path / "nothing")
    with pytest.raises(DataError, match="not a lensfinder store"):
        open_store(tiny_layout)
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(foreign, mode="w").create_array("x", shape=(3,), dtype="f4")
    with pytest.raises(DataError, match="not one written by lensfinder"):
        open_store(foreign)
    with pytest.raises(DataError, match="not one written by lensfinder"):
        open_source(foreign)


def test_newer_store_format_is_refused(tiny_store: Path, tmp_path: Path) -> None:
    copy = tmp_path / "newer.zarr"
    shutil.copytree(tiny_store, copy)
    group = zarr.open_group(copy, mode="r+")
    group.attrs["lensfinder_store"] = 99
    with pytest.raises(DataError, match="newer than this lensfinder"):
        open_store(copy)


def test_kind_column_survives_packing(kinds_layout, kinds_store, tiny_store):
    layout, store = read_layout(kinds_layout), open_store(kinds_store)
    assert store.catalog["kind"].dtype.kind == "U"
    by_id = dict(zip(layout.ids.tolist(), layout.catalog["kind"].tolist(), strict=True))
    assert store.catalog["kind"].tolist() == [by_id[i] for i in store.ids.tolist()]
    assert "kind" not in open_store(tiny_store).catalog
