"""Draw one physical scene per object: galaxies, a background source, field neighbours and stars.

A scene is survey-agnostic physics: positions and sizes in arcsec, lenstronomy profile shapes and
one AB magnitude per band. ``render`` turns it into pixels for each band, so VIS and NISP show the
same sky. Pure numpy (no lenstronomy import), so drawing is cheap and easy to test.

Every draw comes from the object's own ``numpy.random.Generator`` (seeded by (seed, ID) in
``run``), which makes an object the same whatever the worker count. Distributions are broad on
purpose: models trained here will be judged on real galaxies, so no property may give the label
away except the lensed light itself. Lens galaxies and non-lens ellipticals share one
distribution; confusers (spirals, rings, mergers, blue satellites, unlensed background galaxies)
carry arc- and knot-like structure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as default
from typing import Any

import numpy as np

from lensfinder.config import NONLENS_MIX, SimulateConfig
from lensfinder.simulate.stamps import Stamp, StampLibrary, random_shapelets
from lensfinder.surveys import Band

# Non-lens kinds and source families, and their default shares, are in config.py
# (NONLENS_MIX, SOURCE_MIX) so that a config file can change them.
LENS_DISC_FRACTION = 0.15  # late-type lens galaxies
FIELD_HALF_WIDTH = 9.5  # arcsec: neighbours and stars are placed within the cutout


@dataclass(frozen=True)
class Light:
    """One light profile seen in every band: lenstronomy profile, shape kwargs, AB mag per band."""

    profile: str
    shape: dict[str, Any]  # floats, and the stamp image for INTERPOL
    mags: dict[str, float]

    def kwargs(self, band: str) -> dict[str, float]:
        """lenstronomy kwargs with a ``magnitude`` (``SimAPI.magnitude2amplitude`` converts it)."""
        return {**self.shape, "magnitude": self.mags[band]}

    @property
    def centre(self) -> tuple[float, float]:
        return float(self.shape["center_x"]), float(self.shape["center_y"])

    @property
    def size(self) -> float:
        """A scale (arcsec) within which the profile is sharp: for supersampling masks."""
        if self.profile == "INTERPOL":  # an image stamp: its half-width on the sky
            return float(self.shape["scale"]) * len(self.shape["image"]) / 4
        return float(self.shape.get("R_sersic", self.shape.get("sigma", 0.1)))

    @property
    def reach(self) -> float:
        """Distance (arcsec) from the centre beyond which the profile is zero to double
        precision, so need not be evaluated; ``inf`` for profiles with wings (Sersic)."""
        if self.profile == "INTERPOL":  # lenstronomy gives 0 outside the stamp, any rotation
            return float(self.shape["scale"]) * len(self.shape["image"]) * 0.75
        if self.profile in ("GAUSSIAN", "GAUSSIAN_ELLIPSE"):  # exp(-x^2/2) < 1e-31 beyond 12
            e = math.hypot(self.shape.get("e1", 0.0), self.shape.get("e2", 0.0))
            return 12.0 * float(self.shape["sigma"]) * (1 + e) / (1 - e)
        return math.inf


@dataclass(frozen=True)
class Star:
    x: float
    y: float
    mags: dict[str, float]


@dataclass
class Scene:
    """Everything needed to render an object in any band and to compute its catalogue row."""

    kind: str  # "lens", or a key of config.NONLENS_MIX (or "stamp_galaxy")
    central_type: str  # elliptical, disc, ring, merger
    central: list[Light]  # the galaxy at the centre of the cutout (lens galaxy or confuser)
    field: list[Light] = default(default_factory=list)  # unlensed: neighbours, companions, tails
    source: list[Light] = default(default_factory=list)  # the background galaxy (lensed if mass)
    stars: list[Star] = default(default_factory=list)
    lens_models: list[str] = default(default_factory=list)  # lenstronomy lens model list
    lens_kwargs: list[dict[str, float]] = default(default_factory=list)
    theta_e: float = math.nan  # Einstein radius (arcsec) of the central mass, if any
    z_lens: float = math.nan
    z_source: float = math.nan
    source_centre: tuple[float, float] = (math.nan, math.nan)
    source_radius: float = math.nan  # effective radius of the source's main component (arcsec)
    source_family: str = ""  # a key of config.SOURCE_MIX, or "stamp"
    galaxy_centres: list[tuple[float, float]] = default(default_factory=list)  # for n_gal_*

    @property
    def has_source(self) -> bool:
        return bool(self.source)

    def sharp_regions(self) -> list[tuple[float, float, float]]:
        """(x, y, radius) discs worth supersampling: arcs around the centre and compact cores."""
        radius = 3.0
        if self.has_source and math.isfinite(self.theta_e):
            beta = math.hypot(*self.source_centre)
            radius = max(radius, self.theta_e + beta + 5 * self.source_radius + 0.5)
        regions = [(0.0, 0.0, radius)]
        for light in self.central + self.field:
            x, y = light.centre
            regions.append((x, y, 3 * light.size + 0.3))
        return regions


# ---------------------------------------------------------------------------- helpers


def ellipticity(q: float, phi: float) -> tuple[float, float]:
    """lenstronomy's (e1, e2) from axis ratio and position angle (radians)."""
    e = (1.0 - q) / (1.0 + q)
    return float(e * math.cos(2 * phi)), float(e * math.sin(2 * phi))


def colour_weights(bands: Sequence[Band]) -> dict[str, float]:
    """Each band's place between the bluest (0) and reddest (1) band in log wavelength.

    A colour ``c = m_blue - m_red`` then gives ``m_band = m_blue - c * weight``: one number per
    object fixes a smooth SED in any survey's bands.
    """
    waves = {b.name: b.wavelength_um for b in bands}
    lo, hi = min(waves.values()), max(waves.values())
    span = math.log(hi / lo) if hi > lo else 1.0
    return {name: math.log(w / lo) / span for name, w in waves.items()}


class _Draw:
    """The draws of one scene: the object's generator plus the survey's colour weights."""

    def __init__(self, rng: np.random.Generator, bands: Sequence[Band]) -> None:
        self.rng = rng
        self.weights = colour_weights(bands)

    def u(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def normal(self, mean: float, sd: float, lo: float = -np.inf, hi: float = np.inf) -> float:
        return float(np.clip(self.rng.normal(mean, sd), lo, hi))

    def lognormal(self, median: float, sigma: float, lo: float, hi: float) -> float:
        return float(np.clip(median * math.exp(self.rng.normal(0.0, sigma)), lo, hi))

    def angle(self) -> float:
        return self.u(0.0, math.pi)

    def mags(self, mag_blue: float, colour: float, scatter: float = 0.05) -> dict[str, float]:
        """Per-band magnitudes from a blue-band magnitude and a blue-minus-red colour."""
        return {
            band: float(mag_blue - colour * w + (self.rng.normal(0, scatter) if w > 0 else 0.0))
            for band, w in self.weights.items()
        }

    def split(self, mag: float, fractions: np.ndarray) -> np.ndarray:
        """Magnitudes of parts carrying ``fractions`` of the flux of a ``mag`` object."""
        return mag - 2.5 * np.log10(np.maximum(fractions, 1e-6))

    def sersic(
        self,
        mags: dict[str, float],
        radius: float,
        n: float,
        q: float,
        phi: float,
        x: float,
        y: float,
    ) -> Light:
        e1, e2 = ellipticity(q, phi)
        shape = {"R_sersic": radius, "n_sersic": n, "e1": e1, "e2": e2, "center_x": x}
        shape["center_y"] = y
        return Light("SERSIC_ELLIPSE", shape, mags)

    def blob(
        self, mags: dict[str, float], sigma: float, q: float, phi: float, x: float, y: float
    ) -> Light:
        """An elongated Gaussian: a star-forming knot, a piece of arm, ring or tidal tail."""
        e1, e2 = ellipticity(q, phi)
        shape = {"sigma": sigma, "e1": e1, "e2": e2, "center_x": x, "center_y": y}
        return Light("GAUSSIAN_ELLIPSE", shape, mags)

    def knots_along(
        self,
        xy: np.ndarray,
        tangent: np.ndarray,
        mag_total: float,
        colour: float,
        sigma: tuple[float, float],
        clumpiness: float,
    ) -> list[Light]:
        """Elongated knots at points ``xy`` (k, 2), aligned with ``tangent``, sharing a flux."""
        weights = np.exp(self.rng.normal(0.0, clumpiness, len(xy)))
        mags = self.split(mag_total, weights / weights.sum())
        knots = []
        for (x, y), (tx, ty), mag in zip(xy, tangent, mags, strict=True):
            knots.append(
                self.blob(
                    self.mags(float(mag), colour + self.normal(0, 0.1), scatter=0.03),
                    self.u(*sigma),
                    self.u(0.25, 0.7),
                    math.atan2(ty, tx),
                    float(x),
                    float(y),
                )
            )
        return knots


def _rotate(xy: np.ndarray, phi: float, q: float = 1.0) -> np.ndarray:
    """Squash the y axis by q (inclination) then rotate by phi: disc plane to sky."""
    x, y = xy[:, 0], xy[:, 1] * q
    c, s = math.cos(phi), math.sin(phi)
    return np.stack([c * x - s * y, s * x + c * y], axis=1)


# ---------------------------------------------------------------------------- galaxies


def _lens_mass(
    d: _Draw, config: SimulateConfig
) -> tuple[float, float, float, list[str], list[dict[str, float]]]:
    """Einstein radius, axis ratio and angle of the mass, and the lenstronomy lens model.

    Einstein radii are lognormal (``config.theta_e_*``; default median 0.8"): forecasts of the
    Euclid lens population put most galaxy-scale lenses below 1" (Collett 2015, ApJ 811, 20;
    Sonnenfeld et al. 2024, A&A, arXiv:2406.17019), and the label rule then removes the arcs too
    small or faint to count.
    """
    theta_e = d.lognormal(config.theta_e_median, config.theta_e_sigma, *config.theta_e_range)
    q = d.u(0.5, 1.0)
    phi = d.angle()
    e1, e2 = ellipticity(q, phi)
    main: dict[str, float] = {"theta_E": theta_e, "e1": e1, "e2": e2}
    main.update(center_x=d.normal(0, 0.02), center_y=d.normal(0, 0.02))
    model = "SIE"
    if d.rng.random() < 0.4:
        model = "EPL"
        main["gamma"] = d.normal(2.0, 0.1, 1.7, 2.3)
    gamma_ext = min(float(d.rng.rayleigh(0.035)), 0.15)
    shear_angle = d.angle()
    shear = {
        "gamma1": gamma_ext * math.cos(2 * shear_angle),
        "gamma2": gamma_ext * math.sin(2 * shear_angle),
        "ra_0": 0.0,
        "dec_0": 0.0,
    }
    return theta_e, q, phi, [model, "SHEAR"], [main, shear]


def _elliptical(d: _Draw, theta_e: float, z: float, q_mass: float, phi_mass: float) -> list[Light]:
    """A red early-type galaxy whose light follows the mass (brighter for a bigger Einstein
    radius, fainter and redder with redshift), sometimes with a second, inner component."""
    mag = d.normal(19.9 - 4.0 * math.log10(theta_e) + 2.5 * (z - 0.5), 0.5, 16.5, 23.5)
    colour = d.normal(1.3 + 1.0 * (z - 0.5), 0.2, 0.5, 2.6)
    radius = d.lognormal(0.8 * theta_e**0.8, 0.3, 0.15, 4.0)
    q = float(np.clip(q_mass + d.rng.normal(0, 0.08), 0.3, 1.0))
    phi = phi_mass + d.normal(0, math.radians(10))
    x, y = d.normal(0, 0.03), d.normal(0, 0.03)
    if d.rng.random() < 0.35:
        inner_fraction = d.u(0.15, 0.4)
        m_outer, m_inner = d.split(mag, np.array([1 - inner_fraction, inner_fraction]))
        return [
            d.sersic(d.mags(m_outer, colour), radius * 1.3, d.u(3, 6), q, phi, x, y),
            d.sersic(
                d.mags(m_inner, colour + 0.1),
                radius * d.u(0.15, 0.4),
                d.u(1, 2.5),
                min(q * d.u(0.8, 1.1), 1.0),
                phi + d.normal(0, 0.2),
                x,
                y,
            ),
        ]
    return [d.sersic(d.mags(mag, colour), radius, d.u(2.5, 6), q, phi, x, y)]


def _spiral_arms(
    d: _Draw, radius: float, q: float, phi: float, mag: float, centre: tuple[float, float]
) -> list[Light]:
    """Star-forming knots strung along logarithmic spiral arms, projected with the disc."""
    n_arms = int(d.rng.choice([2, 2, 2, 3, 4]))
    pitch = math.radians(d.u(10, 35))
    per_arm = int(d.rng.integers(6, 18))
    start = d.angle() * 2
    points, tangents = [], []
    for arm in range(n_arms):
        r = np.sort(radius * np.exp(d.rng.uniform(math.log(0.4), math.log(2.8), per_arm)))
        theta = start + 2 * math.pi * arm / n_arms + np.log(r / radius) / math.tan(pitch)
        theta += d.rng.normal(0, 0.08, per_arm)
        xy = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
        # d(xy)/d(theta) of r = r0 exp(theta tan(pitch)): the arm's direction at each knot
        tan_p = math.tan(pitch)
        tangent = np.stack(
            [tan_p * np.cos(theta) - np.sin(theta), tan_p * np.sin(theta) + np.cos(theta)], axis=1
        )
        points.append(_rotate(xy, phi, q) + np.asarray(centre))
        tangents.append(_rotate(tangent, phi, q))
    sigma_scale = math.sqrt(radius)
    return d.knots_along(
        np.concatenate(points),
        np.concatenate(tangents),
        mag,
        d.normal(0.1, 0.3, -0.6, 1.0),
        (0.04 * sigma_scale, 0.13 * sigma_scale),
        d.u(0.3, 0.9),
    )


def _disc(
    d: _Draw, mag: float | None = None, x: float = 0.0, y: float = 0.0, phi: float | None = None
) -> tuple[list[Light], float, float]:
    """A bulge + exponential disc, usually with clumpy spiral arms; any inclination.
    Returns the lights, the disc's axis ratio and its position angle."""
    mag = d.normal(19.8, 1.0, 16.5, 23.0) if mag is None else mag
    radius = d.lognormal(1.0, 0.4, 0.3, 3.5)
    q = max(d.u(0.0, 1.0), 0.12)  # cos(inclination) uniform
    phi = d.angle() if phi is None else phi
    bulge_fraction = d.u(0.05, 0.6)
    arm_fraction = d.u(0.1, 0.45) if d.rng.random() < 0.8 else 0.0
    fractions = np.array([bulge_fraction, (1 - bulge_fraction) * (1 - arm_fraction)])
    m_bulge, m_disc = d.split(mag, fractions)
    lights = [
        d.sersic(
            d.mags(m_bulge, d.normal(1.3, 0.2, 0.6, 2.2)),
            radius * d.u(0.1, 0.35),
            d.u(1.5, 4.0),
            min(1.0, q + d.u(0.2, 0.6)),
            phi,
            x,
            y,
        ),
        d.sersic(d.mags(m_disc, d.normal(0.7, 0.3, 0.0, 1.6)), radius, d.u(0.7, 1.3), q, phi, x, y),
    ]
    if arm_fraction > 0:
        m_arms = float(d.split(mag, np.array([(1 - bulge_fraction) * arm_fraction]))[0])
        lights += _spiral_arms(d, radius, q, phi, m_arms, (x, y))
    return lights, q, phi


def _ring(d: _Draw) -> list[Light]:
    """A nucleus inside a knotty (sometimes partial, off-centre or barred) star-forming ring:
    the look-alike of an Einstein ring."""
    mag = d.normal(20.5, 1.0, 17.5, 23.5)
    ring_fraction = d.u(0.3, 0.8)
    m_nucleus, m_ring = d.split(mag, np.array([1 - ring_fraction, ring_fraction]))
    ring_radius = d.u(0.6, 3.0)
    q, phi = d.u(0.5, 1.0), d.angle()
    lights = [
        d.sersic(
            d.mags(m_nucleus, d.normal(1.1, 0.3, 0.2, 2.2)),
            d.u(0.08, 0.4),
            d.u(1.0, 4.0),
            d.u(0.6, 1.0),
            d.angle(),
            0.0,
            0.0,
        )
    ]
    if d.rng.random() < 0.35:  # a bar across the inner ring
        bar_mag = float(d.split(m_nucleus, np.array([d.u(0.2, 0.5)]))[0])
        lights.append(
            d.blob(d.mags(bar_mag, 1.0), ring_radius * 0.3, d.u(0.15, 0.35), phi, 0.0, 0.0)
        )
    span = 2 * math.pi if d.rng.random() < 0.7 else d.u(2.0, 5.2)  # some rings are partial
    n_knots = int(d.rng.integers(16, 40) * span / (2 * math.pi)) + 3
    theta = d.angle() * 2 + np.linspace(0, span, n_knots, endpoint=span < 2 * math.pi)
    theta += d.rng.normal(0, 0.05, n_knots)
    xy = np.stack([np.cos(theta), np.sin(theta)], axis=1) * ring_radius
    tangent = np.stack([-np.sin(theta), np.cos(theta)], axis=1)
    offset = np.array([d.normal(0, 0.1), d.normal(0, 0.1)]) * ring_radius  # collisional rings
    colour = d.normal(0.3, 0.35, -0.4, 1.2) if d.rng.random() < 0.7 else d.normal(1.1, 0.2)
    width = ring_radius * d.u(0.04, 0.12) + 0.03
    lights += d.knots_along(
        _rotate(xy, phi, q) + offset,
        _rotate(tangent, phi, q),
        float(m_ring),
        colour,
        (width, 2 * width),
        d.u(0.1, 1.0),
    )
    return lights


def _simple_galaxy(d: _Draw, mag: float, x: float, y: float) -> list[Light]:
    """An elliptical or a disc of given magnitude at (x, y), for pairs."""
    if d.rng.random() < 0.5:
        colour = d.normal(1.3, 0.25, 0.5, 2.4)
        radius = d.lognormal(0.6, 0.4, 0.1, 2.5)
        return [d.sersic(d.mags(mag, colour), radius, d.u(2, 5.5), d.u(0.4, 1), d.angle(), x, y)]
    lights, _, _ = _disc(d, mag, x, y)
    return lights


def _merger(d: _Draw) -> tuple[list[Light], list[Light], list[tuple[float, float]]]:
    """Two galaxies 0.6-3" apart, often with curved tidal tails of knots (arc-like)."""
    mag = d.normal(20.0, 1.0, 17.0, 23.0)
    ratio = d.u(0.15, 1.0)
    m1, m2 = d.split(mag, np.array([1 / (1 + ratio), ratio / (1 + ratio)]))
    sep, angle = d.u(0.6, 3.0), d.angle() * 2
    x2, y2 = sep * math.cos(angle), sep * math.sin(angle)
    central = _simple_galaxy(d, float(m1), 0.0, 0.0)
    companion = _simple_galaxy(d, float(m2), x2, y2)
    tails: list[Light] = []
    for _ in range(int(d.rng.choice([0, 1, 1, 2]))):
        radius = d.u(1.0, 3.5)
        span = d.u(1.0, 3.5) * (1 if d.rng.random() < 0.5 else -1)
        start = d.angle() * 2
        k = int(d.rng.integers(8, 20))
        theta = start + np.linspace(0, span, k)
        anchor = np.array([x2, y2]) if d.rng.random() < 0.5 else np.zeros(2)
        xy = anchor + radius * np.stack(
            [np.cos(theta) - math.cos(start), np.sin(theta) - math.sin(start)], axis=1
        )
        tangent = np.stack([-np.sin(theta), np.cos(theta)], axis=1)
        tail_mag = float(d.split(mag, np.array([d.u(0.05, 0.25)]))[0])
        tails += d.knots_along(
            xy, tangent, tail_mag, d.normal(0.8, 0.4), (0.06, 0.2), d.u(0.2, 0.8)
        )
    return central, companion + tails, [(x2, y2)]


def _compact_blue(d: _Draw, x: float, y: float) -> Light:
    return d.sersic(
        d.mags(d.u(22.0, 25.5), d.normal(0.3, 0.4, -0.5, 1.5)),
        d.lognormal(0.12, 0.5, 0.04, 0.35),
        d.u(0.5, 2.0),
        d.u(0.4, 1.0),
        d.angle(),
        x,
        y,
    )


def _satellites(d: _Draw) -> tuple[list[Light], list[tuple[float, float]]]:
    """2-6 small blue galaxies 0.6-3" from the centre (not lensed): fake 'multiple images'."""
    lights, centres = [], []
    for _ in range(int(d.rng.integers(2, 7))):
        r, a = d.u(0.6, 3.0), d.angle() * 2
        x, y = r * math.cos(a), r * math.sin(a)
        lights.append(_compact_blue(d, x, y))
        centres.append((x, y))
    return lights, centres


def _neighbours_and_stars(d: _Draw) -> tuple[list[Light], list[tuple[float, float]], list[Star]]:
    """Field galaxies (mostly faint) and foreground stars anywhere in the cutout, any class."""
    lights, centres = [], []
    for _ in range(int(d.rng.poisson(2.5))):
        x, y = _field_position(d, 1.2)
        mag = float(np.clip(25.5 - d.rng.exponential(1.6), 19.0, 25.5))
        colour = d.normal(0.9, 0.6, -0.5, 2.5)
        radius = d.lognormal(0.3, 0.5, 0.05, 1.5)
        lights.append(
            d.sersic(d.mags(mag, colour), radius, d.u(0.6, 4), d.u(0.3, 1), d.angle(), x, y)
        )
        centres.append((x, y))
    stars = []
    for _ in range(int(d.rng.poisson(0.4))):
        x, y = _field_position(d, 1.5)
        stars.append(Star(x, y, d.mags(d.u(17.0, 24.5), d.normal(0.6, 0.6, -0.6, 2.5), 0.02)))
    return lights, centres, stars


def _field_position(d: _Draw, min_radius: float) -> tuple[float, float]:
    while True:
        x, y = d.u(-FIELD_HALF_WIDTH, FIELD_HALF_WIDTH), d.u(-FIELD_HALF_WIDTH, FIELD_HALF_WIDTH)
        if math.hypot(x, y) >= min_radius:
            return x, y


# ---------------------------------------------------------------------------- sources


def _stamp_light(
    d: _Draw, stamp: Stamp, mags: dict[str, float], radius: float, x: float, y: float
) -> Light:
    """An image stamp on the sky with half-light radius ``radius`` (arcsec), any rotation."""
    scale = radius / stamp.half_light_pixels
    shape = {"image": stamp.image, "center_x": x, "center_y": y, "phi_G": d.angle() * 2}
    shape["scale"] = scale
    return Light("INTERPOL", shape, mags)


def _sersic_with_clumps(
    d: _Draw, mag: float, colour: float, radius: float, x: float, y: float
) -> list[Light]:
    """A Sersic with up to five compact star-forming knots scattered over it."""
    clumps = int(d.rng.choice([0, 1, 2, 3, 4, 5], p=[0.2, 0.2, 0.2, 0.2, 0.1, 0.1]))
    clump_fraction = d.u(0.1, 0.45) if clumps else 0.0
    m_main = float(d.split(mag, np.array([1 - clump_fraction]))[0])
    lights = [d.sersic(d.mags(m_main, colour), radius, d.u(0.5, 3.0), d.u(0.3, 1), d.angle(), x, y)]
    if clumps:
        weights = d.rng.dirichlet(np.ones(clumps))
        for m in d.split(mag, clump_fraction * weights):
            shape = {"sigma": d.u(0.01, 0.05), "center_x": x + d.normal(0, 0.8 * radius)}
            shape["center_y"] = y + d.normal(0, 0.8 * radius)
            lights.append(Light("GAUSSIAN", shape, d.mags(float(m), colour - 0.3)))
    return lights


def _multi_component(
    d: _Draw, mag: float, colour: float, radius: float, x: float, y: float
) -> list[Light]:
    """Two to four offset Sersic components of different colours: irregular or merging."""
    k = int(d.rng.integers(2, 5))
    mags = d.split(mag, d.rng.dirichlet(np.full(k, 1.5)))
    lights = []
    for i, m in enumerate(mags):
        r, a = (0.0, 0.0) if i == 0 else (d.u(0.5, 2.0) * radius, d.angle() * 2)
        lights.append(
            d.sersic(
                d.mags(float(m), colour + d.normal(0, 0.3)),
                radius * (1.0 if i == 0 else d.u(0.3, 1.0)),
                d.u(0.5, 2.5),
                d.u(0.3, 1.0),
                d.angle(),
                x + r * math.cos(a),
                y + r * math.sin(a),
            )
        )
    return lights


def _edge_on(d: _Draw, mag: float, colour: float, radius: float, x: float, y: float) -> list[Light]:
    """A thin disc seen edge-on with a small, redder bulge: a straight streak."""
    phi, bulge = d.angle(), d.u(0.05, 0.3)
    m_disc, m_bulge = d.split(mag, np.array([1 - bulge, bulge]))
    return [
        d.sersic(d.mags(float(m_disc), colour), radius, d.u(0.8, 1.2), d.u(0.08, 0.25), phi, x, y),
        d.sersic(
            d.mags(float(m_bulge), colour + 0.5), radius * 0.25, d.u(2, 4), d.u(0.6, 1), phi, x, y
        ),
    ]


def _pick(rng: np.random.Generator, mix: dict[str, float], what: str) -> str:
    """A key of ``mix`` drawn with probability proportional to its share."""
    kinds = [k for k, w in mix.items() if w > 0]
    if not kinds:
        raise ValueError(f"{what}: every share is zero")
    p = np.array([mix[k] for k in kinds], dtype=float)
    return str(rng.choice(kinds, p=p / p.sum()))


def draw_source(
    rng: np.random.Generator,
    bands: Sequence[Band],
    scene: Scene,
    placement: str,
    config: SimulateConfig,
    stamps: StampLibrary | None = None,
) -> None:
    """Put a background galaxy behind the scene's mass; the caller checks the outcome against
    the label rule. ``placement``: "lensed" (inside the caustic region), "boundary" (fainter and
    further out: multiply imaged, yet near or below the rule's thresholds) or "unlensed" (well
    outside). Morphology from ``config.source_mix``, or a stamp (``config.stamp_fraction``)."""
    d = _Draw(rng, bands)
    theta_e = scene.theta_e
    mag_lo, mag_hi = config.source_mag_range
    if placement == "lensed":
        # magnification bias: a third sit near the caustic centre (rings, quads, cusps)
        reach = 0.25 if d.rng.random() < 0.3 else 0.9
        beta = theta_e * reach * math.sqrt(d.rng.random())
    elif placement == "boundary":
        beta = theta_e * d.u(0.3, 1.0)
        mag_lo = max(mag_lo, (mag_lo + mag_hi) / 2)
        mag_hi += 0.5
    else:
        # its image lands about theta_e further out: keep it inside the cutout
        beta = min(theta_e * d.u(2.2, 4.0) + 0.3, 8.5 - theta_e)
    angle = d.angle() * 2
    xs, ys = beta * math.cos(angle), beta * math.sin(angle)
    mag = d.u(mag_lo, mag_hi)  # unlensed; lensing brightens it 1-3 mag
    colour = d.normal(0.35, 0.45, -0.6, 1.8)  # mostly blue star-forming, some red
    radius = math.exp(d.u(math.log(0.05), math.log(0.5)))
    if stamps is not None and d.rng.random() < config.stamp_fraction:
        family = "stamp"
        lights = [_stamp_light(d, stamps.draw(d.rng), d.mags(mag, colour), radius, xs, ys)]
    else:
        family = _pick(d.rng, config.source_mix, "source_mix")
        if family == "shapelets":
            stamp = random_shapelets(d.rng)
            lights = [_stamp_light(d, stamp, d.mags(mag, colour), radius, xs, ys)]
        elif family in SOURCE_FAMILIES:
            lights = SOURCE_FAMILIES[family](d, mag, colour, radius, xs, ys)
        else:
            known = ", ".join([*SOURCE_FAMILIES, "shapelets"])
            raise ValueError(f"unknown source family {family!r} in source_mix; known: {known}")
    scene.source = lights
    scene.source_family = family
    scene.source_centre = (xs, ys)
    scene.source_radius = radius
    scene.z_source = float(scene.z_lens + 0.3 + d.rng.gamma(2.0, 0.5))


SOURCE_FAMILIES = {
    "sersic_clumps": _sersic_with_clumps,
    "multi": _multi_component,
    "edge_on": _edge_on,
}


# ---------------------------------------------------------------------------- scenes


def draw_lens_galaxy(
    rng: np.random.Generator, bands: Sequence[Band], kind: str, config: SimulateConfig
) -> Scene:
    """A massive galaxy (elliptical or, for some lenses, a disc) with its mass model; the
    source is added by ``draw_source``. Shared by lenses and non-lens ellipticals, so the
    lens galaxy itself never gives the label away."""
    d = _Draw(rng, bands)
    theta_e, q, phi, models, kwargs = _lens_mass(d, config)
    z_lens = d.normal(0.55, 0.2, 0.15, 1.3)
    if kind == "lens" and d.rng.random() < LENS_DISC_FRACTION:
        mag = d.normal(19.9 - 4.0 * math.log10(theta_e) + 2.5 * (z_lens - 0.5), 0.6, 16.5, 23)
        central, q_disc, phi_disc = _disc(d, mag, 0.0, 0.0, phi)
        kwargs[0]["e1"], kwargs[0]["e2"] = ellipticity(max(q_disc, 0.5), phi_disc)
        central_type = "disc"
    else:
        central, central_type = _elliptical(d, theta_e, z_lens, q, phi), "elliptical"
    scene = Scene(kind=kind, central_type=central_type, central=central)
    scene.lens_models, scene.lens_kwargs = models, kwargs
    scene.theta_e, scene.z_lens = theta_e, z_lens
    return scene


def _stamp_galaxy(d: _Draw, stamps: StampLibrary) -> list[Light]:
    """A real galaxy image as the central galaxy of a non-lens."""
    mags = d.mags(d.normal(20.0, 1.0, 16.5, 23.5), d.normal(0.9, 0.5, -0.3, 2.4))
    return [_stamp_light(d, stamps.draw(d.rng), mags, d.lognormal(0.8, 0.5, 0.15, 4.0), 0, 0)]


def draw_nonlens(
    rng: np.random.Generator,
    bands: Sequence[Band],
    kind: str,
    config: SimulateConfig,
    stamps: StampLibrary | None = None,
) -> Scene:
    """A confuser of the given kind (see ``config.nonlens_mix``), without its field. With
    ``stamps``, disc galaxies ("spiral") are real stamps ``stamp_fraction`` of the time (kind
    "stamp_galaxy"); ellipticals stay parametric, drawn like lens galaxies, so that the central
    galaxy's look never gives the label away."""
    d = _Draw(rng, bands)
    if stamps is not None and kind == "spiral" and d.rng.random() < config.stamp_fraction:
        z = d.normal(0.4, 0.2, 0.05, 1.2)
        return Scene("stamp_galaxy", "stamp", _stamp_galaxy(d, stamps), z_lens=z)
    if kind in ("elliptical", "elliptical+source", "satellites", "subthreshold"):
        scene = draw_lens_galaxy(rng, bands, kind, config)
        if kind == "satellites":
            scene.field, scene.galaxy_centres = _satellites(d)
        return scene
    z = d.normal(0.4, 0.2, 0.05, 1.2)
    if kind == "spiral":
        central, _, _ = _disc(d)
        return Scene(kind=kind, central_type="disc", central=central, z_lens=z)
    if kind == "ring":
        return Scene(kind=kind, central_type="ring", central=_ring(d), z_lens=z)
    if kind == "merger":
        central, companions, centres = _merger(d)
        scene = Scene(kind=kind, central_type="merger", central=central, field=companions, z_lens=z)
        scene.galaxy_centres = centres
        return scene
    raise ValueError(f"unknown non-lens kind {kind!r}; known: {', '.join(NONLENS_MIX)}")


def draw_nonlens_kind(rng: np.random.Generator, config: SimulateConfig) -> str:
    return _pick(rng, config.nonlens_mix, "nonlens_mix")


def add_field(rng: np.random.Generator, bands: Sequence[Band], scene: Scene) -> None:
    """Neighbour galaxies and stars, the same for lenses and non-lenses."""
    lights, centres, stars = _neighbours_and_stars(_Draw(rng, bands))
    scene.field = scene.field + lights
    scene.galaxy_centres = scene.galaxy_centres + centres
    scene.stars = stars


def sky_position(rng: np.random.Generator) -> tuple[float, float]:
    """(RA, Dec) in degrees, uniform on the sphere."""
    ra = float(rng.uniform(0.0, 360.0))
    dec = float(np.degrees(np.arcsin(rng.uniform(-1.0, 1.0))))
    return ra, dec


def total_magnitude(lights: Sequence[Light], band: str) -> float:
    """AB magnitude of the summed flux of several profiles (NaN for none)."""
    if not lights:
        return math.nan
    flux = sum(10 ** (-0.4 * light.mags[band]) for light in lights)
    return float(-2.5 * math.log10(flux))
