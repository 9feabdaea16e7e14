"""The reading interface every stage takes, apart from where the pixels come from.

``CutoutSource`` (``ids``, ``labels``, ``ra``, ``dec``, ``catalog``, ``problems``,
``read(indices) -> Cutouts``) is implemented by the packed store (``data.store``) and by a
layout read on the fly (``data.source``); both import this module, and nothing here imports them.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lensfinder.data.challenge import Problem, reason_kind
from lensfinder.data.nonfinite import repair_nonfinite
from lensfinder.data.pixels import NO_DATA_AT_CENTRE, centre_missing
from lensfinder.stages import progress_bar
from lensfinder.surveys import EUCLID

VIS_SHAPE: tuple[int, int] = (EUCLID.bands[0].cutout_pixels,) * 2
NISP_SHAPE: tuple[int, int, int] = (
    len(EUCLID.bands) - 1,
    EUCLID.bands[1].cutout_pixels,
    EUCLID.bands[1].cutout_pixels,
)

Indices = Sequence[int] | np.ndarray | slice | range
CHECK_ROWS = 256  # objects read at once by ``CutoutSource.check`` (~55 MB of pixels)
BLANK_PREFILTER_PIXELS = 16  # mark_blank tests whole images only where these are all equal


@dataclass
class Cutouts:
    """A batch of objects: pixels in native float32, and which rows are usable."""

    vis: np.ndarray  # (n, 200, 200) float32
    nisp: np.ndarray  # (n, 3, 66, 66) float32, Y J H
    valid: np.ndarray  # (n,) bool
    reasons: list[str | None]  # why a row is invalid (None for valid rows)

    def __len__(self) -> int:
        return len(self.valid)

    @classmethod
    def empty(cls, n: int) -> Cutouts:
        return cls(
            np.zeros((n, *VIS_SHAPE), np.float32),
            np.zeros((n, *NISP_SHAPE), np.float32),
            np.ones(n, dtype=bool),
            [None] * n,
        )


@dataclass
class RowCheck:
    """Which objects can be used, and why each of the others cannot (``CutoutSource.check``)."""

    valid: np.ndarray  # (n,) bool, in the order asked
    reasons: list[str | None]  # in full (file and details); None for valid rows

    @property
    def n_invalid(self) -> int:
        return int((~self.valid).sum())

    def kinds(self) -> dict[str, int]:
        """Invalid rows counted by kind of reason (``reason_kind``), most common first."""
        pairs = zip(self.reasons, self.valid.tolist(), strict=True)
        counts = Counter(reason_kind(reason) for reason, ok in pairs if not ok)
        return dict(counts.most_common())


def _all_finite(values: np.ndarray) -> bool:
    """Whether every value is finite: a finite sum says so in one pass with no temporary (NaN
    and inf carry through a sum); only a sum that is not finite (or overflows) is checked
    value by value."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(values.sum(dtype=np.float32)):
            return True
    return bool(np.isfinite(values).all())


def repair_rows(cutouts: Cutouts) -> int:
    """Apply the non-finite policy (``data.nonfinite``) to every valid row, band by band, in
    place: a few bad pixels are repaired, a row with more is marked invalid with the reason.
    Returns the number of pixels repaired."""
    if _all_finite(cutouts.vis) and _all_finite(cutouts.nisp):
        return 0
    repaired = 0
    for row in np.flatnonzero(cutouts.valid).tolist():
        for image in (cutouts.vis[row], *cutouts.nisp[row]):
            count, reason = repair_nonfinite(image)
            if reason is not None:
                cutouts.valid[row] = False
                cutouts.reasons[row] = reason
                break
            repaired += count
    return repaired


def mark_blank(cutouts: Cutouts, where: Path) -> None:
    """Mark valid rows with a constant (e.g. all-zero) band, or one without data at its centre
    (``pixels.centre_missing``), invalid, with the reason: their scores would mean nothing.
    Each band on its own, as the FITS reader does (``read_band``): a zeroed Y plane beside
    good J and H is still blank."""
    planes = [("VIS", cutouts.vis)] + [
        (band.name, cutouts.nisp[:, k]) for k, band in enumerate(EUCLID.bands[1:])
    ]
    for name, images in planes:
        flat = images.reshape(len(images), -1) if len(images) else images.reshape(0, 1)
        # Only a row whose first pixels are all equal can be constant (NaN equals nothing,
        # as NaN's max never equals its min): the full test runs on those rows alone.
        head = flat[:, :BLANK_PREFILTER_PIXELS]
        maybe = np.flatnonzero((head == head[:, :1]).all(axis=1) & cutouts.valid)
        with np.errstate(invalid="ignore"):
            constant = flat[maybe].max(axis=1) == flat[maybe].min(axis=1)
        for row in maybe[constant].tolist():
            cutouts.valid[row] = False
            cutouts.reasons[row] = f"{where}: blank image ({name} constant)"
        for row in np.flatnonzero(centre_missing(images) & cutouts.valid).tolist():
            cutouts.valid[row] = False
            cutouts.reasons[row] = f"{where}: {NO_DATA_AT_CENTRE} ({name} masked or zero-filled)"


ARC_UNKNOWN = 255  # an arc map's value for an object that has none (training ignores it)


def combined_arc_maps(
    n: int, pieces: Iterable[tuple[np.ndarray, CutoutSource, np.ndarray]]
) -> np.ndarray | None:
    """Arc maps of ``n`` rows drawn from several sources: each piece is (where its rows go:
    a mask or indices, the source, their positions in it); ``ARC_UNKNOWN`` for the rows of a
    source without arc maps, None when no source has any."""
    out: np.ndarray | None = None
    for where, source, positions in pieces:
        if not len(positions):
            continue
        maps = source.arc_maps(positions)
        if maps is None:
            continue
        if out is None:
            out = np.full((n, *maps.shape[1:]), ARC_UNKNOWN, np.uint8)
        out[where] = maps
    return out


class CutoutSource(ABC):
    """Objects with pixels, labels and positions; subclasses say where the pixels come from."""

    path: Path
    ids: np.ndarray  # int64
    labels: np.ndarray  # int8, -1 where unknown
    problems: list[Problem]
    label_rule: str | None
    # Chunks of a predictor's batches read in one call: a read with a fixed cost per call
    # (a tile's files opened, its WCS parsed) is spread over several.
    read_chunks: int = 4

    def __len__(self) -> int:
        return len(self.ids)

    @property
    @abstractmethod
    def ra(self) -> np.ndarray: ...

    @property
    @abstractmethod
    def dec(self) -> np.ndarray: ...

    @property
    @abstractmethod
    def catalog(self) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def read(self, indices: Indices) -> Cutouts:
        """Pixels of the objects at these positions (0..len-1), in the order given."""

    def arc_maps(self, indices: Indices) -> np.ndarray | None:
        """The simulator's arc maps of these objects ((n, 200, 200) uint8: 1 on the lensed
        source's pixels, ``ARC_UNKNOWN`` for an object without one), or None when the source
        has none at all (this default: real data, layouts simulated without them)."""
        return None

    def check(self, indices: Indices | None = None, progress: bool = True) -> RowCheck:
        """Read ``indices`` (default all) once, with the checks every reader applies: ``read``
        (missing or unreadable files and store chunks, blank images) then ``repair_rows``
        (non-finite pixels), exactly as prediction does (``Predictor.predict_source``); so
        training drops what a scan or an evaluation skips. Read in position order (contiguous
        store ranges), ``CHECK_ROWS`` objects at a time; results in the order asked."""
        positions = self._as_indices(range(len(self)) if indices is None else indices)
        valid = np.ones(len(positions), dtype=bool)
        reasons: list[str | None] = [None] * len(positions)
        order = np.argsort(positions, kind="stable")
        starts: Iterable[int] = range(0, len(positions), CHECK_ROWS)
        if progress:
            total = -(-len(positions) // CHECK_ROWS)
            starts = progress_bar(starts, total=total, desc="checking data")
        for start in starts:
            rows = order[start : start + CHECK_ROWS]
            cutouts = self.read(positions[rows])
            repair_rows(cutouts)
            valid[rows] = cutouts.valid
            for row, ok, reason in zip(rows.tolist(), cutouts.valid, cutouts.reasons, strict=True):
                if not ok:
                    reasons[row] = reason or "invalid"
        return RowCheck(valid, reasons)

    def validate(self, indices: Indices | None = None, progress: bool = True) -> np.ndarray:
        """Which of ``indices`` (default all) can be used (``check``, without the reasons)."""
        return self.check(indices, progress).valid

    def _as_indices(self, indices: Indices) -> np.ndarray:
        """Positions as int64, checked against the length (a clear IndexError, not garbage)."""
        if isinstance(indices, slice):
            return np.arange(len(self), dtype=np.int64)[indices]
        array = np.asarray(indices, dtype=np.int64).reshape(-1)
        if array.size and (array.min() < 0 or array.max() >= len(self)):
            raise IndexError(
                f"{self.path}: index out of range (valid 0..{len(self) - 1}, got "
                f"{int(array.min())}..{int(array.max())})"
            )
        return array

    def content_fingerprint(self) -> str:
        """A short hash that changes when the pixels or labels change, even with the same IDs
        (what a resumed scan checks before reusing old results). Sources that cannot tell
        (this default) hash their IDs and labels only."""
        digest = hashlib.sha256(np.ascontiguousarray(self.ids, dtype="<i8").tobytes())
        digest.update(np.ascontiguousarray(self.labels, dtype="i1").tobytes())
        return digest.hexdigest()[:16]

    def summary(self) -> str:
        lenses, non = int((self.labels == 1).sum()), int((self.labels == 0).sum())
        unknown = len(self) - lenses - non
        return (
            f"{self.path}: {len(self)} objects ({lenses} lenses, {non} non-lenses, {unknown} "
            f"unlabelled), {len(self.problems)} skipped"
        )


def synthetic_cutouts(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` raw cutouts shaped and scaled like the challenge's (noise plus a central galaxy, VIS
    ~1e-11 and NISP ~1e-10 per pixel): real-shaped input when no data is at hand (export checks,
    benchmarks). Returns ``(vis (n,200,200), nisp (n,3,66,66))`` float32.
    """
    rng = np.random.default_rng(seed)
    vis_band, nisp_bands = EUCLID.bands[0], EUCLID.bands[1:]

    def galaxy(pixels: int, pixel_scale: float, sigma_arcsec: np.ndarray) -> np.ndarray:
        axis = (np.arange(pixels) - (pixels - 1) / 2.0) * pixel_scale
        r2 = axis[None, :] ** 2 + axis[:, None] ** 2
        return np.exp(-0.5 * r2[None] / sigma_arcsec[:, None, None] ** 2)

    sigma = rng.uniform(0.3, 0.8, size=n)
    amplitude = rng.uniform(5.0, 30.0, size=n)[:, None, None]
    vis = amplitude * galaxy(vis_band.cutout_pixels, vis_band.pixel_scale, sigma)
    vis = (vis + rng.normal(size=vis.shape)) * 1e-11
    nisp = np.stack(
        [
            (9.0 * amplitude * galaxy(b.cutout_pixels, b.pixel_scale, sigma))
            + rng.normal(size=(n, b.cutout_pixels, b.cutout_pixels))
            for b in nisp_bands
        ],
        axis=1,
    )
    return vis.astype(np.float32), (nisp * 2e-10).astype(np.float32)
