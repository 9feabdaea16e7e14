"""Which of a survey's galaxies could lens, and with what mass: measured on the cutout itself.

A field comes without labels and in unknown flux units, so everything here is measured on the
pixels and expressed in units the pixels cannot change:

- **noise and flux scale**: each band's background and noise are robust statistics (clipped
  median and MAD) of the cutout's outer region. Dividing the measured noise by the survey's
  background noise in e-/s (``surveys/``: sky, read noise, exposure) gives the field's flux
  units per e-/s, ``scale``. Magnitudes and painted arcs go through ``scale``, so they come out
  the same whether the field is in ADU, e-/s or nJy (assuming the field has about the survey's
  depth: a deeper field gets arcs of the survey's S/N, not brighter ones).
- **the central galaxy**: the connected segment of the smoothed VIS image above
  ``DETECT_SIGMA`` noise that holds the centre; its flux, S/N, centroid, light moments (axis
  ratio and angle), half-light radius, and VIS - H colour (AB, through ``scale``). Other
  segments are neighbours, counted within 3", 5" and 10" as the catalogue's n_gal_* columns.
- **the mass** (``mass_model``): a singular isothermal ellipsoid whose Einstein radius follows
  from the galaxy's light through the Faber-Jackson relation and external shear; see
  ``einstein_radius``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from lensfinder.config import InjectConfig
from lensfinder.data.pixels import zero_filled_as_nan
from lensfinder.simulate.quantities import NEIGHBOUR_RADII
from lensfinder.simulate.render import block_mean, pixel_grid
from lensfinder.simulate.scene import ellipticity
from lensfinder.surveys import Band, Survey

OUTER_RADIUS = 5.0  # arcsec: noise and background are measured beyond this radius
DETECT_SIGMA = 2.5  # detection threshold of the smoothed VIS image, in its own noise sigmas
DETECT_SMOOTHING = 1.0  # pixels: Gaussian smoothing before detection
CENTRE_RADIUS = 0.5  # arcsec: the central object must peak within this of the centre
MIN_SEGMENT_PIXELS = 5  # smaller detections are noise, not neighbours
CLIP_SIGMA = 3.0
NOISE_BLOCK = 4  # pixels: the flux scale is measured on block sums (see band_noise)
MIN_NOISE_BLOCKS = 600  # ... of the largest block size that leaves this many in the outer region

# Faber-Jackson (Faber & Jackson 1976, ApJ 204, 668): L ~ sigma^4, i.e.
# log10 sigma = log10 SIGMA_STAR - 0.1 (M - M_STAR). M_STAR: the r-band L* of SDSS galaxies,
# M* - 5 log10 h = -20.44 (Blanton et al. 2003, ApJ 592, 819) at h = 0.7; SIGMA_STAR: a round
# 200 km/s, inside the 160-225 km/s that lens-statistics studies take for L* early types
# (Kochanek 1996, ApJ 466, 638; Choi, Park & Vogeley 2007, ApJ 658, 884). VIS (0.55-0.9 um) is
# treated as r; K-correction and evolution are left out (both are a few tenths of a magnitude
# at z ~ 0.5, of opposite sign) and covered by the relation's scatter.
M_STAR = -20.44 + 5 * math.log10(0.7)
SIGMA_STAR = 200.0  # km/s
SPEED_OF_LIGHT = 299792.458  # km/s
# Lens redshifts: the simulator's lens-galaxy prior (simulate/scene.py), 0.55 +- 0.2, here
# clipped to 0.2-1.0; sources 0.3-2.5 behind it (gamma-distributed, mean 1.0).
Z_LENS = (0.55, 0.2, 0.2, 1.0)
# Mass follows light: SLACS lenses' mass and light axes agree to ~10 degrees and their axis
# ratios to ~0.1 (Koopmans et al. 2006, ApJ 649, 599; Bolton et al. 2008, ApJ 682, 964).
MASS_ANGLE_SCATTER = math.radians(10.0)
MASS_Q_SCATTER = 0.1
MASS_Q_RANGE = (0.4, 1.0)
SHEAR_MAX = 0.15


@dataclass(frozen=True)
class BandNoise:
    background: float  # field units per pixel
    sigma: float  # field units per pixel
    scale: float  # field units per e-/s: sigma over the survey's background noise


@dataclass(frozen=True)
class Galaxy:
    """The central object of a field cutout, as measured on its VIS image (see module doc)."""

    flux: dict[str, float]  # per band, field units, within the segment
    snr: float  # VIS
    x: float  # centroid, arcsec on the renderer's grid
    y: float
    q: float  # axis ratio from the second moments
    phi: float  # position angle of the major axis, radians (lenstronomy convention)
    half_light_radius: float  # arcsec
    mag: dict[str, float]  # AB, through each band's noise scale
    segment: np.ndarray  # bool, VIS grid

    @property
    def colour(self) -> float:
        """VIS - H (AB): ellipticals are red."""
        return self.mag.get("VIS", math.nan) - self.mag.get("H", math.nan)


@dataclass(frozen=True)
class Measurement:
    """Everything measured on one field cutout."""

    noise: dict[str, BandNoise]
    galaxy: Galaxy | None  # None: nothing detected at the centre
    neighbour_distances: np.ndarray  # arcsec, other VIS segments' centroids
    problem: str | None = None  # why it cannot be used at all (no noise measurable)

    def neighbours(self) -> dict[str, float]:
        """The catalogue's n_gal_3/5/10: detected galaxies other than the central one."""
        return {
            f"n_gal_{r:g}": float((self.neighbour_distances < r).sum()) for r in NEIGHBOUR_RADII
        }


@lru_cache(maxsize=8)
def survey_noise(band: Band) -> float:
    """The survey's background noise per pixel in e-/s (lenstronomy's exposure model)."""
    from lenstronomy.SimulationAPI.observation_api import SingleBand

    return float(SingleBand(**band.lenstronomy_kwargs()).background_noise)


@lru_cache(maxsize=8)
def _radius(band: Band) -> np.ndarray:
    x, y = pixel_grid(band).pixel_coordinates
    return np.hypot(np.asarray(x), np.asarray(y))


def _clipped(values: np.ndarray) -> tuple[float, float]:
    """Median and MAD-based sigma, clipped at CLIP_SIGMA a few times (neighbours, stars)."""
    values = values[np.isfinite(values)]
    centre, sigma = math.nan, math.nan
    for _ in range(4):
        if values.size < 10:
            break
        centre = float(np.median(values))
        sigma = 1.4826 * float(np.median(np.abs(values - centre)))
        if not sigma > 0:
            break
        values = values[np.abs(values - centre) < CLIP_SIGMA * sigma]
    return centre, sigma


def band_noise(image: np.ndarray, band: Band) -> BandNoise:
    """Background and noise of one band from its outer region, and the flux scale they imply.

    The scale compares the noise in ``NOISE_BLOCK`` x ``NOISE_BLOCK`` pixel sums (divided by the
    block side) with the survey's per-pixel noise: for white noise that is the pixel noise, and
    for noise correlated between neighbouring pixels (resampled mosaics) it is the white noise
    of the same power on arc scales, which the pixel sigma underestimates."""
    outer = _radius(band) > OUTER_RADIUS
    background, sigma = _clipped(image[outer].astype(np.float64))
    for block in (NOISE_BLOCK, NOISE_BLOCK // 2, 1):  # the largest that leaves enough blocks
        n = band.cutout_pixels - band.cutout_pixels % block
        whole = block_mean(outer[:n, :n].astype(np.float64), block) == 1.0
        if whole.sum() >= MIN_NOISE_BLOCKS or block == 1:
            break
    sums = block_mean(image[:n, :n] - background, block) * block**2
    _, block_sigma = _clipped(sums[whole])
    return BandNoise(background, sigma, block_sigma / block / survey_noise(band))


def _segments(image: np.ndarray, band: Band, sigma_pixel: float) -> tuple[np.ndarray, int]:
    """Connected segments of the smoothed image above DETECT_SIGMA of its own noise."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(image, DETECT_SMOOTHING)
    _, sigma_smooth = _clipped(smooth[_radius(band) > OUTER_RADIUS])
    if not sigma_smooth > 0:  # white noise through the smoothing kernel
        sigma_smooth = sigma_pixel / (2 * math.sqrt(math.pi) * DETECT_SMOOTHING)
    labels, count = ndimage.label(smooth > DETECT_SIGMA * sigma_smooth)
    return labels, int(count)


def _nisp_mask(segment: np.ndarray, vis: Band, band: Band) -> np.ndarray:
    """A VIS-grid segment on a coarser band's grid: the band's pixels it touches (both grids
    are centred on the cutout; NISP pixels are 3x3 blocks of VIS pixels)."""
    block = round(band.pixel_scale / vis.pixel_scale)
    offset = (vis.cutout_pixels - block * band.cutout_pixels) // 2
    n = band.cutout_pixels
    cut = segment[offset : offset + block * n, offset : offset + block * n].astype(np.float64)
    return block_mean(cut, block) > 0


def measure(vis: np.ndarray, nisp: np.ndarray, survey: Survey) -> Measurement:
    """Noise, central galaxy and neighbours of one cutout (VIS (200, 200), NISP (3, 66, 66))."""
    reference = survey.band(survey.reference_band)
    images = _band_images(vis, nisp, survey)
    noise = {name: band_noise(images[name], survey.band(name)) for name in images}
    bad = [n for n, v in noise.items() if not (v.sigma > 0 and math.isfinite(v.background))]
    if bad:
        return Measurement(noise, None, np.zeros(0), f"no measurable noise in {', '.join(bad)}")

    sky = images[reference.name] - noise[reference.name].background
    labels, count = _segments(sky, reference, noise[reference.name].sigma)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    central_label = _central_label(labels, reference)
    neighbour_distances = _neighbour_distances(sky, labels, sizes, central_label, reference)
    if central_label == 0 or sizes[central_label] < MIN_SEGMENT_PIXELS:
        return Measurement(noise, None, neighbour_distances)
    galaxy = _central_galaxy(images, noise, sky, labels == central_label, labels, survey)
    return Measurement(noise, galaxy, neighbour_distances)


def _band_images(vis: np.ndarray, nisp: np.ndarray, survey: Survey) -> dict[str, np.ndarray]:
    """Band name -> float64 image: the reference band (VIS) first, then the others in order.
    Zero-filled regions (off a mosaic's footprint: ``pixels.missing_pixels``) are NaN, missing
    pixels, as the model input has them: noise, background and segments come from the data."""
    reference = survey.band(survey.reference_band)
    others = [b for b in survey.bands if b.name != reference.name]
    images = {reference.name: zero_filled_as_nan(np.asarray(vis, np.float64))}
    images.update(
        {
            b.name: zero_filled_as_nan(np.asarray(img, np.float64))
            for b, img in zip(others, nisp, strict=True)
        }
    )
    return images


def _central_label(labels: np.ndarray, reference: Band) -> int:
    """The segment holding most pixels within ``CENTRE_RADIUS`` of the centre; 0 for none."""
    near = (_radius(reference) < CENTRE_RADIUS) & (labels > 0)
    return int(np.bincount(labels[near]).argmax()) if near.any() else 0


def _neighbour_distances(
    sky: np.ndarray, labels: np.ndarray, sizes: np.ndarray, central_label: int, reference: Band
) -> np.ndarray:
    """Distances (arcsec) of the flux-weighted centroids of the segments other than the
    central one that are big enough to be real."""
    x, y = (np.asarray(a) for a in pixel_grid(reference).pixel_coordinates)
    distances = []
    for label in range(1, len(sizes)):
        if label == central_label or sizes[label] < MIN_SEGMENT_PIXELS:
            continue
        mask = labels == label
        weights = np.clip(sky[mask], 0, None) + 1e-30
        distances.append(
            math.hypot(np.average(x[mask], weights=weights), np.average(y[mask], weights=weights))
        )
    return np.asarray(distances, dtype=float)


def _central_galaxy(
    images: dict[str, np.ndarray],
    noise: dict[str, BandNoise],
    sky: np.ndarray,
    central: np.ndarray,
    labels: np.ndarray,
    survey: Survey,
) -> Galaxy | None:
    """The central galaxy measured on its segment (``central``) grown by two pixels (wings
    below the threshold), never into another segment; None when it has no positive flux."""
    from scipy import ndimage

    reference = survey.band(survey.reference_band)
    segment = ndimage.binary_dilation(central, iterations=2)
    segment &= (labels == 0) | central
    flux = {reference.name: float(sky[segment].sum())}
    for band in (b for b in survey.bands if b.name != reference.name):
        mask = _nisp_mask(segment, reference, band)
        flux[band.name] = float((images[band.name] - noise[band.name].background)[mask].sum())
    snr = flux[reference.name] / (noise[reference.name].sigma * math.sqrt(segment.sum()))
    weights = np.clip(sky[segment], 0, None)
    if not float(weights.sum()) > 0:
        return None
    x, y = (np.asarray(a) for a in pixel_grid(reference).pixel_coordinates)
    cx, cy, q, phi, half_light = _light_shape(weights, x[segment], y[segment])
    mag = {
        name: _ab_magnitude(value, noise[name].scale, survey.band(name))
        for name, value in flux.items()
    }
    return Galaxy(flux, snr, cx, cy, q, phi, half_light, mag, segment)


def _light_shape(
    weights: np.ndarray, xs: np.ndarray, ys: np.ndarray
) -> tuple[float, float, float, float, float]:
    """Centroid, axis ratio and position angle from the light's second moments, and the
    half-light radius, of pixels at (``xs``, ``ys``) weighted by their (positive) flux."""
    total = float(weights.sum())
    cx, cy = float(weights @ xs / total), float(weights @ ys / total)
    dx, dy = xs - cx, ys - cy
    mxx, myy, mxy = (float(weights @ v / total) for v in (dx * dx, dy * dy, dx * dy))
    spread = math.hypot(mxx - myy, 2 * mxy)
    major, minor = (mxx + myy + spread) / 2, max((mxx + myy - spread) / 2, 0.0)
    q = math.sqrt(minor / major) if major > 0 else 1.0
    phi = 0.5 * math.atan2(2 * mxy, mxx - myy)
    order = np.argsort(np.hypot(dx, dy))
    cumulative = np.cumsum(weights[order])
    half = int(np.searchsorted(cumulative, cumulative[-1] / 2))
    half_light = float(np.hypot(dx, dy)[order][min(half, len(order) - 1)])
    return cx, cy, q, phi, half_light


def _ab_magnitude(flux: float, scale: float, band: Band) -> float:
    """AB magnitude of a flux in field units, through the band's noise scale."""
    if not flux > 0:
        return math.nan
    return band.zero_point - 2.5 * math.log10(flux / scale)


def plausible(measurement: Measurement, config: InjectConfig) -> bool:
    """A galaxy that could lens: detected at the centre, bright enough, galaxy-sized."""
    galaxy = measurement.galaxy
    if galaxy is None or measurement.problem is not None:
        return False
    low, high = config.half_light_range
    return bool(
        galaxy.snr >= config.min_snr
        and low <= galaxy.half_light_radius <= high
        and math.isfinite(galaxy.mag.get("VIS", math.nan))
    )


def choose(
    plausible: np.ndarray, colour: np.ndarray, config: InjectConfig, n_paint: int
) -> np.ndarray:
    """Indices of the cutouts to paint: ``n_paint`` plausible deflectors drawn at random
    (seeded), those at least ``config.red_colour`` red (VIS - H, AB) first, bluer ones only to
    fill up: most lenses are massive early-type galaxies, some are discs."""
    rng = np.random.default_rng([config.seed, 0x1A7])
    with np.errstate(invalid="ignore"):
        red = np.flatnonzero(plausible & (colour >= config.red_colour))
        blue = np.flatnonzero(plausible & ~(colour >= config.red_colour))
    picked = np.concatenate([rng.permutation(red), rng.permutation(blue)])[: max(n_paint, 0)]
    return np.sort(picked.astype(np.int64))


def _distances(z_lens: float, z_source: float) -> float:
    """D_ls / D_s in a flat LambdaCDM cosmology (H0 = 70, Omega_m = 0.3)."""
    cosmology = _cosmology()
    d_s = cosmology.angular_diameter_distance(z_source).value
    d_ls = cosmology.angular_diameter_distance(z_lens, z_source).value
    return float(d_ls / d_s)


@lru_cache(maxsize=1)
def _cosmology() -> Any:
    from astropy.cosmology import FlatLambdaCDM

    return FlatLambdaCDM(H0=70.0, Om0=0.3)


def velocity_dispersion(
    mag: float, z_lens: float, rng: np.random.Generator, scatter: float
) -> float:
    """Velocity dispersion (km/s) from the apparent VIS magnitude at redshift ``z_lens``: the
    Faber-Jackson relation L ~ sigma^4 (Faber & Jackson 1976, ApJ 204, 668) through an L*
    galaxy, M_r = -21.2 (Blanton et al. 2003, ApJ 592, 819, h = 0.7), at 200 km/s (inside the
    160-225 km/s of lens statistics: Kochanek 1996; Choi, Park & Vogeley 2007), with
    ``scatter`` dex of log-normal scatter; K-correction and evolution neglected (see
    ``M_STAR``)."""
    absolute = mag - float(_cosmology().distmod(z_lens).value)
    return SIGMA_STAR * 10 ** (-0.1 * (absolute - M_STAR) + rng.normal(0.0, scatter))


def einstein_radius(sigma: float, z_lens: float, z_source: float) -> float:
    """Singular isothermal sphere: theta_E = 4 pi (sigma / c)^2 D_ls / D_s, in arcsec."""
    radians = 4 * math.pi * (sigma / SPEED_OF_LIGHT) ** 2 * _distances(z_lens, z_source)
    return math.degrees(radians) * 3600.0


@dataclass(frozen=True)
class MassModel:
    theta_e: float  # arcsec, clipped to config.theta_e_range
    theta_e_unclipped: float
    sigma: float  # km/s
    z_lens: float
    z_source: float
    models: list[str]
    kwargs: list[dict[str, float]]


def mass_model(galaxy: Galaxy, config: InjectConfig, rng: np.random.Generator) -> MassModel:
    """SIE + external shear matched to the galaxy: centred on its light, axis ratio and angle
    from its light moments (with the scatter of SLACS lenses), Einstein radius from its VIS
    magnitude by Faber-Jackson at a drawn lens redshift, clipped to ``config.theta_e_range``."""
    mean, sd, low, high = Z_LENS
    z_lens = float(np.clip(rng.normal(mean, sd), low, high))
    z_source = z_lens + 0.3 + float(rng.gamma(2.0, 0.35))
    sigma = velocity_dispersion(galaxy.mag["VIS"], z_lens, rng, config.sigma_scatter_dex)
    raw = einstein_radius(sigma, z_lens, z_source)
    theta_e = float(np.clip(raw, *config.theta_e_range))
    q = float(np.clip(galaxy.q + rng.normal(0.0, MASS_Q_SCATTER), *MASS_Q_RANGE))
    phi = galaxy.phi + float(rng.normal(0.0, MASS_ANGLE_SCATTER))
    e1, e2 = ellipticity(q, phi)
    main = {"theta_E": theta_e, "e1": e1, "e2": e2, "center_x": galaxy.x, "center_y": galaxy.y}
    # external shear: a few per cent for galaxy-scale lenses (Keeton, Kochanek & Seljak 1997,
    # ApJ 482, 604), Rayleigh-distributed in amplitude, any direction
    amplitude = min(float(rng.rayleigh(config.shear_sigma)), SHEAR_MAX)
    angle = float(rng.uniform(0.0, math.pi))
    shear = {
        "gamma1": amplitude * math.cos(2 * angle),
        "gamma2": amplitude * math.sin(2 * angle),
        "ra_0": galaxy.x,
        "dec_0": galaxy.y,
    }
    return MassModel(theta_e, raw, sigma, z_lens, z_source, ["SIE", "SHEAR"], [main, shear])
