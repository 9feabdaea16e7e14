"""Galaxy images as light profiles: real stamps from a user's folder, or random shapelets.

Parametric profiles cannot show everything real galaxies do, and the data a model meets later
are real galaxies. lenstronomy's ``INTERPOL`` profile places any image on the sky (scaled,
rotated, lensed when behind a mass), so both real stamps (``--source-stamps DIR``: FITS images
with a ``PIXSCALE`` header in arcsec, e.g. HST cutouts of faint galaxies) and procedurally made
irregular galaxies (random shapelets) go through the same path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from lensfinder.errors import DataError

STAMP_SUFFIXES = (".fits", ".fit", ".fits.gz")
MIN_STAMP_PIXELS = 8
STAMP_PAD = 4  # pixels of zeros around a galaxy cut from an image (its border median is 0)
SHAPELET_PIXELS = 48  # side of a made shapelet image


@dataclass(frozen=True)
class Stamp:
    """A non-negative image normalised to unit sum, and its half-light radius in pixels."""

    image: np.ndarray
    half_light_pixels: float
    name: str


def half_light_radius(image: np.ndarray) -> float:
    """Radius (pixels) around the flux-weighted centre enclosing half of the flux."""
    rows, cols = np.indices(image.shape)
    total = image.sum()
    cy, cx = (rows * image).sum() / total, (cols * image).sum() / total
    radius = np.hypot(rows - cy, cols - cx).ravel()
    order = np.argsort(radius)
    cumulative = np.cumsum(image.ravel()[order])
    return float(max(radius[order][np.searchsorted(cumulative, total / 2)], 0.5))


def prepare(image: np.ndarray, name: str) -> Stamp:
    """Sky-subtract by the border median, clip negatives, normalise; refuse unusable images."""
    image = np.asarray(image, dtype=float)
    if image.ndim != 2 or min(image.shape) < MIN_STAMP_PIXELS:
        raise DataError(f"{name}: a stamp must be a 2-D image of at least 8x8 pixels")
    if not np.isfinite(image).all():
        raise DataError(f"{name}: the stamp has NaN or infinite pixels")
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    clean = np.clip(image - np.median(border), 0.0, None)
    if clean.sum() <= 0:
        raise DataError(f"{name}: the stamp has no flux above its border")
    clean /= clean.sum()
    return Stamp(clean, half_light_radius(clean), name)


def cut_stamp(image: np.ndarray, segment: np.ndarray, name: str) -> Stamp:
    """One galaxy's light cut from a sky-subtracted ``image``: the pixels of ``segment`` (bool,
    the image's shape) on their bounding box, zeros elsewhere and for missing (non-finite)
    pixels, with a border of ``STAMP_PAD`` zeros; so a neighbour outside the segment is never
    part of it. Refuses an empty segment or one without positive flux (``prepare``)."""
    rows, cols = np.flatnonzero(segment.any(axis=1)), np.flatnonzero(segment.any(axis=0))
    if rows.size == 0:
        raise DataError(f"{name}: the galaxy's segment is empty")
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    part = np.asarray(image, dtype=float)[box]
    light = np.where(segment[box] & np.isfinite(part), part, 0.0)
    return prepare(np.pad(light, STAMP_PAD), name)


class StampLibrary:
    """All stamps of a folder, read once per process (workers each keep their own copy)."""

    _cache: ClassVar[dict[str, StampLibrary]] = {}

    def __init__(self, stamps: list[Stamp]) -> None:
        if not stamps:
            raise DataError("stamp library: no usable stamps")
        self.stamps = stamps

    @classmethod
    def from_folder(cls, folder: str | Path) -> StampLibrary:
        from astropy.io import fits

        key = str(Path(folder).resolve())
        if key in cls._cache:
            return cls._cache[key]
        paths = sorted(p for p in Path(folder).iterdir() if p.name.lower().endswith(STAMP_SUFFIXES))
        if not paths:
            raise DataError(f"{folder}: no FITS stamps (*.fits) found")
        stamps = []
        for path in paths:
            try:
                with fits.open(path, memmap=False) as hdul:
                    hdu = next(h for h in hdul if h.data is not None)
                    data, header = np.asarray(hdu.data, dtype=float), hdu.header
            except (OSError, StopIteration, ValueError) as exc:
                raise DataError(f"{path}: not a readable FITS image ({exc})") from None
            if "PIXSCALE" not in header:
                raise DataError(f"{path}: no PIXSCALE header (arcsec per pixel)")
            stamps.append(prepare(data, str(path)))
        library = cls(stamps)
        cls._cache[key] = library
        return library

    def draw(self, rng: np.random.Generator) -> Stamp:
        return self.stamps[int(rng.integers(len(self.stamps)))]

    def without(self, name: str) -> StampLibrary | None:
        """The library less the stamps called ``name`` (None when nothing is left)."""
        kept = [s for s in self.stamps if s.name != name]
        if len(kept) == len(self.stamps):
            return self
        return StampLibrary(kept) if kept else None


def _hermite_basis(n_max: int, coordinates: np.ndarray) -> np.ndarray:
    """Gauss-Hermite functions phi_0..phi_n_max at ``coordinates`` (units of beta)."""
    basis = np.empty((n_max + 1, coordinates.size))
    gauss = np.exp(-0.5 * coordinates**2)
    for n in range(n_max + 1):
        weights = np.zeros(n + 1)
        weights[n] = 1.0
        norm = 1.0 / math.sqrt(2.0**n * math.factorial(n) * math.sqrt(math.pi))
        basis[n] = norm * np.polynomial.hermite.hermval(coordinates, weights) * gauss
    return basis


def random_shapelets(rng: np.random.Generator, n_max: int | None = None) -> Stamp:
    """An irregular, multi-lobed galaxy: the square of a random shapelet expansion.

    Coefficients fall with order (most power in the core, some in lobes and asymmetries);
    squaring keeps the light non-negative. The image spans +-6 beta.
    """
    n_max = int(rng.integers(3, 8)) if n_max is None else n_max
    axis = np.linspace(-6.0, 6.0, SHAPELET_PIXELS)
    basis = _hermite_basis(n_max, axis)
    orders = np.add.outer(np.arange(n_max + 1), np.arange(n_max + 1))
    coefficients = rng.normal(0.0, 1.0, orders.shape) * np.exp(-orders / rng.uniform(1.5, 4.0))
    coefficients[orders > n_max] = 0.0
    coefficients[0, 0] = abs(coefficients[0, 0]) + rng.uniform(0.5, 1.5)
    amplitude = basis.T @ coefficients @ basis  # rows: y, columns: x
    return prepare(amplitude**2, "shapelets")
