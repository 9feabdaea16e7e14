"""Less CPU per scanned cutout beside inference, with the same scores: a store read one chunk
at a time, cheaper checks for blank and non-finite images, and quieter Dask timers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lensfinder.config import PredictConfig, ScanConfig
from lensfinder.data import open_source
from lensfinder.data.cutouts import Cutouts, _all_finite, mark_blank
from lensfinder.predict import Predictor
from lensfinder.scan import scanning
from lensfinder.testing import make_run


def test_a_store_is_read_one_chunk_at_a_time_with_the_same_scores(kinds_store, tmp_path) -> None:
    """Reads of one chunk of batches (fresh arrays from malloc's heap, not new mappings whose
    page faults cost 0.02 ms per cutout), and exactly the scores of reading four at once, with
    the store's invalid rows skipped alike."""
    source = open_source(kinds_store)
    assert source.read_chunks == 1
    reads: list[int] = []
    plain_read = source.read

    def counted(indices):
        """The store's read, counted, with every seventh object unreadable (skips)."""
        reads.append(len(indices))
        cut = plain_read(indices)
        for row in np.flatnonzero(np.asarray(indices) % 7 == 3).tolist():
            cut.valid[row], cut.reasons[row] = False, "store: unreadable store chunk (test)"
        return cut

    source.read = counted  # type: ignore[method-assign]
    predictor = Predictor([make_run(tmp_path / "run", seed=2)], PredictConfig(batch_size=4))
    indices = np.r_[5 : len(source), 0:5]
    one = predictor.predict_source(source, indices, progress=False)
    assert reads and max(reads) <= predictor.chunk_rows

    source.read_chunks = 4  # the former read size
    reads.clear()
    four = predictor.predict_source(source, indices, progress=False)
    assert max(reads) == 4 * predictor.chunk_rows
    np.testing.assert_array_equal(one.valid, four.valid)
    assert one.valid.sum() == len(indices) - np.count_nonzero(indices % 7 == 3)
    np.testing.assert_array_equal(one.logits, four.logits)
    assert one.reasons == four.reasons


def _plain_blank(images: np.ndarray, valid: np.ndarray) -> np.ndarray:
    flat = images.reshape(len(images), -1)
    with np.errstate(invalid="ignore"):
        return (flat.max(axis=1) == flat.min(axis=1)) & valid


def test_blank_rows_are_exactly_the_constant_ones() -> None:
    """The prefilter on the first pixels marks what max == min marks: constant rows (zeros,
    inf), not a row constant but for its last pixel, nor rows with NaN, nor invalid rows."""
    rng = np.random.default_rng(0)
    vis = rng.normal(size=(8, 200, 200)).astype(np.float32)
    nisp = rng.normal(size=(8, 3, 66, 66)).astype(np.float32)
    vis[0] = 0.0
    vis[1] = 5.0
    vis[1, -1, -1] = 5.5  # equal first pixels, not constant
    vis[2] = np.nan
    vis[3] = np.inf
    vis[4, :, :] = 1.0
    vis[4, 0, 0] = np.nan  # constant but for a NaN
    nisp[5, 2] = 7.0  # one blank NISP band
    vis[6] = 0.0  # blank, but already invalid
    valid = np.ones(8, dtype=bool)
    valid[6] = False
    expected = ~valid.copy()
    expected |= _plain_blank(vis, valid)
    for k in range(3):
        expected |= _plain_blank(nisp[:, k], valid)
    cut = Cutouts(vis, nisp, valid.copy(), [None] * 8)
    mark_blank(cut, Path("store"))
    np.testing.assert_array_equal(~cut.valid, expected)
    assert np.flatnonzero(expected).tolist() == [0, 3, 5, 6]
    assert cut.reasons[5] == "store: blank image (H constant)"
    assert cut.reasons[6] is None  # invalid for its own reason, left alone


def test_all_finite_by_sum_agrees_with_the_pixelwise_check() -> None:
    """A finite sum says every value is finite; a sum that overflows is checked pixel by
    pixel (huge but finite values), and NaN or inf anywhere is found."""
    values = np.ones((3, 50, 50), dtype=np.float32)
    assert _all_finite(values)
    huge = np.full((3, 50, 50), 3e38, dtype=np.float32)  # the sum overflows to inf
    assert _all_finite(huge)
    for bad in (np.nan, np.inf, -np.inf):
        spoiled = values.copy()
        spoiled[2, 49, 49] = bad
        assert not _all_finite(spoiled)
    mixed = huge.copy()
    mixed[0, 0, 0] = -np.inf
    assert not _all_finite(mixed)


def test_the_scan_cluster_starts_with_quiet_timers(monkeypatch) -> None:
    """The LocalCluster is made under settings that slow the event-loop tick, the system
    monitor and the memory monitor (17 -> 2.6 ms of CPU a second per busy worker)."""
    import dask
    import distributed

    seen: dict[str, object] = {}

    class Stop(Exception):
        pass

    def fake_cluster(*args, **kwargs):
        for key in (
            "distributed.admin.tick.interval",
            "distributed.admin.system-monitor.interval",
            "distributed.worker.memory.monitor-interval",
            "distributed.worker.profile.enabled",
        ):
            seen[key] = dask.config.get(key)
        raise Stop

    monkeypatch.setattr(distributed, "LocalCluster", fake_cluster)
    with pytest.raises(Stop), scanning._dask_client(ScanConfig(workers=2), None):
        pass
    assert seen == {
        "distributed.admin.tick.interval": "1s",
        "distributed.admin.system-monitor.interval": "5s",
        "distributed.worker.memory.monitor-interval": "1s",
        "distributed.worker.profile.enabled": False,
    }
