"""Observing conditions that vary from object to object: PSF shape and width, depth, noise texture.

A network trained on one fixed PSF and one noise level learns that PSF and that noise; real
survey cutouts differ across the focal plane and the sky. So each object draws:

- a PSF family: a Gaussian, or a Moffat profile with extended wings (beta 2.5-4.5; the wings of
  real space-telescope PSFs fall off roughly like r^-3 to r^-5, Moffat 1969 and Racca et al.
  2016 for Euclid VIS), with the FWHM scattered around the band table's value;
- a depth: the exposure time scaled so the limiting magnitude moves by up to
  ``depth_scatter_mag`` (background-limited: depth changes by 1.25 log10 of the time);
- white noise, or noise correlated between neighbouring pixels as after resampling a dithered
  stack onto the output grid (a bilinear kernel with a random sub-pixel shift);
- optionally, each band's own further depth and PSF width beside the reference band's
  (``band_depth_scatter_mag``, ``band_psf_scatter``): bands observed apart, or another
  pipeline's noise and PSF models, give another depth ratio between VIS and NISP, and the
  per-band noise normalisation then shows a network other colours; drawn from a generator of
  their own, so every other draw (and the label, measured in the reference band) is unchanged;
- optionally, the other bands' images shifted together by a sub-pixel offset against the
  reference band (``band_shift_pixels``): cutouts of another instrument's mosaic cut at whole
  pixels, or registered by another pipeline, are centred up to half a pixel apart. Made by
  shifting the band's PSF kernel, so the light moves before the noise is drawn.

All numbers are drawn from the object's own generator, so objects stay reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from lensfinder.config import SimulateConfig
from lensfinder.surveys import Band, Survey

KERNEL_RADIUS_FWHM = 4.0  # kernels reach this many FWHM from the centre (Moffat wings)
MOFFAT_BETA = (2.5, 4.5)


@dataclass(frozen=True)
class Observing:
    """One object's conditions, shared by all its bands."""

    psf_family: str  # "gaussian" or "moffat"
    fwhm_factor: float  # multiplies every band's FWHM
    moffat_beta: float
    depth_offset_mag: float  # > 0: deeper than the band table
    noise_shift: tuple[float, float] | None  # sub-pixel shift of the resampling; None: white
    # per band on top of the above: (name, depth offset in mag, FWHM factor); empty: none
    band_offsets: tuple[tuple[str, float, float], ...] = ()
    # per band: (name, x, y), the image's shift against the reference band (arcsec, along
    # columns and rows); empty: all bands centred alike
    band_shifts: tuple[tuple[str, float, float], ...] = ()

    def band(self, band: Band) -> Band:
        """The band as observed for this object: its PSF width and exposure time."""
        depth, fwhm = self.depth_offset_mag, self.fwhm_factor
        for name, band_depth, band_fwhm in self.band_offsets:
            if name == band.name:
                depth, fwhm = depth + band_depth, fwhm * band_fwhm
        return replace(
            band,
            psf_fwhm=band.psf_fwhm * fwhm,
            exposure_time=band.exposure_time * 10 ** (0.8 * depth),
        )

    def psf_kernel(self, band: Band) -> np.ndarray:
        """The normalised pixel kernel of ``self.band(band)``'s PSF."""
        observed = self.band(band)
        fwhm_pixels = observed.psf_fwhm / observed.pixel_scale
        dx, dy = next(((x, y) for name, x, y in self.band_shifts if name == band.name), (0, 0))
        dx, dy = dx / observed.pixel_scale, dy / observed.pixel_scale  # centre off by, pixels
        half = max(2, math.ceil(KERNEL_RADIUS_FWHM * fwhm_pixels + max(abs(dx), abs(dy))))
        axis = np.arange(-half, half + 1, dtype=float)
        r2 = (axis[None, :] - dx) ** 2 + (axis[:, None] - dy) ** 2
        if self.psf_family == "moffat":
            alpha = fwhm_pixels / (2 * math.sqrt(2 ** (1 / self.moffat_beta) - 1))
            kernel = (1 + r2 / alpha**2) ** (-self.moffat_beta)
        else:
            sigma = fwhm_pixels / (2 * math.sqrt(2 * math.log(2)))
            kernel = np.exp(-0.5 * r2 / sigma**2)
        return kernel / kernel.sum()

    def texture(self, noise: np.ndarray) -> np.ndarray:
        """The noise as it leaves the pipeline: unchanged, or resampled (correlated)."""
        if self.noise_shift is None:
            return noise
        dx, dy = self.noise_shift
        right, down = np.roll(noise, -1, axis=1), np.roll(noise, -1, axis=0)
        diagonal = np.roll(right, -1, axis=0)
        return (
            (1 - dx) * (1 - dy) * noise + dx * (1 - dy) * right + (1 - dx) * dy * down
        ) + dx * dy * diagonal


NOMINAL = Observing("gaussian", 1.0, MOFFAT_BETA[0], 0.0, None)


def draw_observing(rng: np.random.Generator, config: SimulateConfig) -> Observing:
    """Conditions for one object, as ``config``'s psf/depth/noise settings ask."""
    family = config.psf_family
    if family == "mixed":
        family = "moffat" if rng.random() < 0.5 else "gaussian"
    fwhm = float(np.clip(1 + config.psf_fwhm_scatter * rng.standard_normal(), 0.6, 1.6))
    beta = float(rng.uniform(*MOFFAT_BETA))
    depth = float(rng.uniform(-config.depth_scatter_mag, config.depth_scatter_mag))
    shift = None
    if rng.random() < config.correlated_noise_fraction:
        shift = (float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.8)))
    return Observing(family, fwhm, beta, depth, shift)


def with_band_offsets(
    observing: Observing, rng: np.random.Generator, config: SimulateConfig, survey: Survey
) -> Observing:
    """``observing`` with each band but the reference one drawing its own depth and FWHM
    (``band_depth_scatter_mag``, ``band_psf_scatter``), then one shift of all of them against
    the reference band, up to ``band_shift_pixels`` of the coarsest one's pixels per axis (one
    instrument's bands share a grid); unchanged where all three are 0. The reference band keeps
    the shared draws and its centre: the label rule measures it, so an object's scene and label
    do not depend on these. ``rng`` should be a generator of its own, so that switching these
    on changes nothing else an object draws (the shift is drawn last: the offsets stay too)."""
    depth_mag, psf, shift = (
        config.band_depth_scatter_mag,
        config.band_psf_scatter,
        config.band_shift_pixels,
    )
    others = [survey.band(name) for name in survey.band_names if name != survey.reference_band]
    if not others or depth_mag == psf == shift == 0:
        return observing
    offsets = []
    if depth_mag or psf:
        for band in others:
            depth = float(rng.uniform(-depth_mag, depth_mag))
            fwhm = float(np.clip(1 + psf * rng.standard_normal(), 0.7, 1.4))
            offsets.append((band.name, depth, fwhm))
    shifts = []
    if shift:
        pixel = max(band.pixel_scale for band in others)
        x, y = (float(v) for v in rng.uniform(-shift, shift, 2) * pixel)
        shifts = [(band.name, x, y) for band in others]
    return replace(observing, band_offsets=tuple(offsets), band_shifts=tuple(shifts))
