"""Draw one physical scene per object: galaxies, a background source, field neighbours and stars.

A scene is survey-agnostic physics: positions and sizes in arcsec, lenstronomy profile shapes and
one AB magnitude per band. ``render`` turns it into pixels for each band, so VIS and NISP show the
same sky. Pure numpy (no lenstronomy import), so drawing is cheap and easy to test.

Every draw comes from the object's own ``numpy.random.Generator`` (seeded by (seed, ID) in
``run``), which makes an object the same whatever the worker count. Distributions are broad on
purpose: models trained here will be judged on real galaxies, so no property may give the label
away except the lensed light itself. Lens galaxies and non-lens ellipticals share one
distribution; confusers (spirals, rings, mergers, blue satellites, unlensed background galaxies)
carry arc- and knot-like structure. Every central galaxy, lens or not, gets the same
environment (``add_field``): field galaxies from the sky's number counts, satellites, groups
and tidal debris at the rates of the sky (``simulate/sky.py`` cites the numbers).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as default
from typing import Any

import numpy as np
from scipy.special import gammaincinv

from lensfinder.config import NONLENS_MIX, SimulateConfig
from lensfinder.simulate import sky
from lensfinder.simulate.stamps import Stamp, StampLibrary, random_shapelets
from lensfinder.surveys import Band

# Non-lens kinds and source families, and their default shares, are in config.py
# (NONLENS_MIX, SOURCE_MIX) so that a config file can change them.
LENS_DISC_FRACTION = 0.15  # late-type lens galaxies
# arcsec: field galaxies are placed over the 20" cutout and a margin whose light spills into it
# (the 10" circle of n_gal_10 lies inside); stars within the cutout
FIELD_HALF_WIDTH = 10.5
STAR_HALF_WIDTH = 9.5
# Environment lights are left out where they hold less than TRUNCATION_FLUX of their flux and
# are fainter than TRUNCATION_SB (AB mag/arcsec^2; 0.001 sigma of a Euclid VIS or NISP pixel).
TRUNCATION_FLUX = 1e-2
TRUNCATION_SB = 33.0


@dataclass(frozen=True)
class Light:
    """One light profile seen in every band: lenstronomy profile, shape kwargs, AB mag per band."""

    profile: str
    shape: dict[str, Any]  # floats, and the stamp image for INTERPOL
    mags: dict[str, float]
    # arcsec from the centre beyond which the profile is left out (``reach``); set for the
    # environment's lights where they become negligible (``truncated``)
    truncation: float = math.inf

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
        precision (or, once ``truncated``, negligible: see ``truncated``), so need
        not be evaluated; ``inf`` for profiles with wings (Sersic) unless truncated."""
        if self.profile == "INTERPOL":  # lenstronomy gives 0 outside the stamp, any rotation
            return float(self.shape["scale"]) * len(self.shape["image"]) * 0.75
        if math.isfinite(self.truncation):
            return self.truncation
        if self.profile in ("GAUSSIAN", "GAUSSIAN_ELLIPSE"):  # exp(-x^2/2) < 1e-31 beyond 12
            e = math.hypot(self.shape.get("e1", 0.0), self.shape.get("e2", 0.0))
            return 12.0 * float(self.shape["sigma"]) * (1 + e) / (1 - e)
        return math.inf

    def truncated(self) -> Light:
        """This light with a finite ``reach`` (Sersics and Gaussians): the elliptical radius
        beyond which it holds less than ``TRUNCATION_FLUX`` of its flux and its surface
        brightness is fainter than ``TRUNCATION_SB`` in every band. Faint neighbours and debris
        then cost a box around them instead of the whole cutout."""
        mag = min(self.mags.values())  # the brightest band
        if self.profile == "SERSIC_ELLIPSE":
            n, r_e = float(self.shape["n_sersic"]), float(self.shape["R_sersic"])
            b = 1.9992 * n - 0.3271  # L(<R_sersic) = L/2, as lenstronomy has it
            # SB(R) = mag + 2.5 log10(2 pi n r_e^2 Gamma(2n) / b^2n) + 1.0857 b (R/r_e)^(1/n)
            log_area = math.log10(2 * math.pi * n * r_e**2) + (
                math.lgamma(2 * n) - 2 * n * math.log(b)
            ) / math.log(10)
            x_sb = max(0.0, (TRUNCATION_SB - mag - 2.5 * log_area) / (1.0857 * b)) ** n
            x_flux = (float(gammaincinv(2 * n, 1.0 - TRUNCATION_FLUX)) / b) ** n
            radius = r_e * max(x_sb, x_flux)
        elif self.profile in ("GAUSSIAN", "GAUSSIAN_ELLIPSE"):
            sigma = float(self.shape["sigma"])
            # SB(R) = mag + 2.5 log10(2 pi sigma^2) + 1.0857 R^2 / (2 sigma^2)
            excess = TRUNCATION_SB - mag - 2.5 * math.log10(2 * math.pi * sigma**2)
            x_sb = math.sqrt(2 * max(0.0, excess) / 1.0857)
            radius = sigma * max(x_sb, math.sqrt(-2 * math.log(TRUNCATION_FLUX)))
        else:
            return self
        e = math.hypot(self.shape.get("e1", 0.0), self.shape.get("e2", 0.0))
        # lenstronomy's elliptical radius R lies R / sqrt(1 - e) out along the major axis;
        # R / (1 - e) leaves a margin
        return dataclasses.replace(self, truncation=radius / (1 - e))


@dataclass(frozen=True)
class Star:
    x: float
    y: float
    mags: dict[str, float]


@dataclass(frozen=True)
class Neighbour:
    """A galaxy beside the central one, as the catalogue's n_gal_* columns count it."""

    x: float
    y: float
    mag: float  # bluest (reference) band, AB
    origin: str  # "field", "satellite", "group" or "companion" (a look-alike system)
    blue: bool  # star-forming

    @property
    def distance(self) -> float:
        return math.hypot(self.x, self.y)


@dataclass
class Scene:
    """Everything needed to render an object in any band and to compute its catalogue row."""

    kind: str  # "lens", or a key of config.NONLENS_MIX (or "stamp_galaxy")
    central_type: str  # elliptical, disc, ring, merger, irregular
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
    neighbours: list[Neighbour] = default(default_factory=list)  # for n_gal_*
    environment: list[str] = default(default_factory=list)  # "group", "tidal", look-alikes

    @property
    def has_source(self) -> bool:
        return bool(self.source)

    @property
    def galaxy_centres(self) -> list[tuple[float, float]]:
        return [(n.x, n.y) for n in self.neighbours]


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
        self.blue_band = min(self.weights, key=self.weights.__getitem__)

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


def _einstein_radius(d: _Draw, config: SimulateConfig) -> float:
    """A lens's Einstein radius (arcsec): the lognormal, or with ``theta_e_broad_fraction``
    log-uniform over the whole range."""
    lo, hi = config.theta_e_range
    broad = config.theta_e_broad_fraction
    if broad > 0 and d.rng.random() < broad:  # no draw at 0: older populations reproduce
        return float(math.exp(d.u(math.log(lo), math.log(hi))))
    return d.lognormal(config.theta_e_median, config.theta_e_sigma, lo, hi)


def _lens_mass(
    d: _Draw, config: SimulateConfig
) -> tuple[float, float, float, list[str], list[dict[str, float]]]:
    """Einstein radius, axis ratio and angle of the mass, and the lenstronomy lens model.

    Einstein radii are lognormal (``config.theta_e_*``; default median 0.8"): forecasts of the
    Euclid lens population put most galaxy-scale lenses below 1" (Collett 2015, ApJ 811, 20;
    Sonnenfeld et al. 2024, A&A, arXiv:2406.17019), and the label rule then removes the arcs too
    small or faint to count. A share (``theta_e_broad_fraction``, off by default) can be
    log-uniform over the whole range instead, to train on wide lenses more often.
    """
    theta_e = _einstein_radius(d, config)
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
    d: _Draw,
    radius: float,
    q: float,
    phi: float,
    mag: float,
    centre: tuple[float, float],
    knots_per_arm: tuple[int, int] = (6, 18),
) -> list[Light]:
    """Star-forming knots strung along logarithmic spiral arms, projected with the disc."""
    n_arms = int(d.rng.choice([2, 2, 2, 3, 4]))
    pitch = math.radians(d.u(10, 35))
    per_arm = int(d.rng.integers(*knots_per_arm))
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
    d: _Draw,
    mag: float | None = None,
    x: float = 0.0,
    y: float = 0.0,
    phi: float | None = None,
    knots_per_arm: tuple[int, int] = (6, 18),
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
        lights += _spiral_arms(d, radius, q, phi, m_arms, (x, y), knots_per_arm)
    return lights, q, phi


def _ring(d: _Draw, config: SimulateConfig) -> list[Light]:
    """A nucleus inside a knotty (sometimes partial, off-centre or barred) star-forming ring:
    the look-alike of an Einstein ring. Its radius is uniform in 0.6-3", or with
    ``ring_radius_like_lenses`` drawn as the lenses' Einstein radii are, so that the size of a
    ring says nothing about its label."""
    mag = d.normal(20.5, 1.0, 17.5, 23.5)
    ring_fraction = d.u(0.3, 0.8)
    m_nucleus, m_ring = d.split(mag, np.array([1 - ring_fraction, ring_fraction]))
    like_lenses = config.ring_radius_like_lenses
    ring_radius = _einstein_radius(d, config) if like_lenses else d.u(0.6, 3.0)
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


def _merging_companion(
    d: _Draw, mag: float, tail_reference_mag: float
) -> tuple[list[Light], Neighbour]:
    """A galaxy of magnitude ``mag`` 0.6-3" from the centre, often with curved tidal tails of
    knots (arc-like) from it or from the centre, carrying 5-25% of ``tail_reference_mag``."""
    sep, angle = d.u(0.6, 3.0), d.angle() * 2
    x2, y2 = sep * math.cos(angle), sep * math.sin(angle)
    lights = _simple_galaxy(d, mag, x2, y2)
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
        tail_mag = float(d.split(tail_reference_mag, np.array([d.u(0.05, 0.25)]))[0])
        lights += d.knots_along(
            xy, tangent, tail_mag, d.normal(0.8, 0.4), (0.06, 0.2), d.u(0.2, 0.8)
        )
    return lights, Neighbour(x2, y2, mag, "companion", False)


def _merger(d: _Draw) -> tuple[list[Light], list[Light], list[Neighbour]]:
    """Two galaxies 0.6-3" apart, often with curved tidal tails of knots (arc-like)."""
    mag = d.normal(20.0, 1.0, 17.0, 23.0)
    ratio = d.u(0.15, 1.0)
    m1, m2 = d.split(mag, np.array([1 / (1 + ratio), ratio / (1 + ratio)]))
    central = _simple_galaxy(d, float(m1), 0.0, 0.0)
    companion, neighbour = _merging_companion(d, float(m2), mag)
    return central, companion, [neighbour]


def _compact_blue(
    d: _Draw, x: float, y: float, config: SimulateConfig, stamps: StampLibrary | None
) -> tuple[list[Light], float]:
    """A small blue galaxy and its magnitude in the bluest band: a compact Sersic, or a
    source's look (``_source_look``)."""
    mag, colour = d.u(22.0, 25.5), d.normal(0.3, 0.4, -0.5, 1.5)
    mags = d.mags(mag, colour)
    radius = d.lognormal(0.12, 0.5, 0.04, 0.35)
    look = _source_look(d, config, stamps, mag, colour, radius, x, y)
    if look is not None:
        return look, total_magnitude(look, d.blue_band)
    sersic = d.sersic(mags, radius, d.u(0.5, 2.0), d.u(0.4, 1.0), d.angle(), x, y)
    return [sersic], mags[d.blue_band]


def _satellites(
    d: _Draw, config: SimulateConfig, stamps: StampLibrary | None
) -> tuple[list[Light], list[Neighbour]]:
    """2-6 small blue galaxies 0.6-3" from the centre (not lensed): fake 'multiple images'."""
    lights, neighbours = [], []
    for _ in range(int(d.rng.integers(2, 7))):
        r, a = d.u(0.6, 3.0), d.angle() * 2
        x, y = r * math.cos(a), r * math.sin(a)
        light, mag = _compact_blue(d, x, y, config, stamps)
        lights += light
        neighbours.append(Neighbour(x, y, mag, "companion", True))
    return lights, neighbours


# ---------------------------------------------------------------------------- environment


def _galaxy_size(d: _Draw, mag: float) -> float:
    """Half-light radius (arcsec) at VIS magnitude ``mag``: median 0.3" at 24, 0.1 dex larger
    per magnitude brighter, lognormal scatter (HST deep fields; see sky.py)."""
    return d.lognormal(0.3 * 10 ** (-0.1 * (mag - 24.0)), 0.35, 0.05, 2.5)


def _source_look(
    d: _Draw,
    config: SimulateConfig,
    stamps: StampLibrary | None,
    mag: float,
    colour: float,
    radius: float,
    x: float,
    y: float,
) -> list[Light] | None:
    """A blue neighbour drawn, ``config.irregular_neighbour_fraction`` of the time, from the
    lensed sources' own morphologies (clumpy, multi-lobed, edge-on, shapelets; real stamps
    where given), else None. Irregular and peculiar galaxies are a third to a half of faint
    field galaxies (Abraham et al. 1996; Brinchmann et al. 1998), so a source's look beside a
    galaxy must not mean "arc". Nothing is drawn at a share of 0: older simulations replay."""
    share = config.irregular_neighbour_fraction
    if share <= 0 or d.rng.random() >= share:
        return None
    return _source_morphology(d, config, stamps, mag, colour, radius, x, y)[1]


def _neighbour_galaxy(
    d: _Draw,
    mag: float,
    x: float,
    y: float,
    blue: bool,
    config: SimulateConfig,
    stamps: StampLibrary | None = None,
) -> list[Light]:
    """A field galaxy or satellite: a blue star-forming disc (with knots when bright enough to
    show them, or a source's look: ``_source_look``) or a red spheroid."""
    radius = _galaxy_size(d, mag)
    if blue:
        colour = d.normal(0.6, 0.35, -0.5, 1.8)
        look = _source_look(d, config, stamps, mag, colour, radius, x, y)
        if look is not None:
            return look
        if mag < 23.0:
            return _sersic_with_clumps(d, mag, colour, radius, x, y)
        q, n = d.u(0.25, 1.0), d.u(0.6, 1.8)
        return [d.sersic(d.mags(mag, colour), radius, n, q, d.angle(), x, y)]
    colour = d.normal(1.6, 0.3, 0.9, 2.6)
    return [d.sersic(d.mags(mag, colour), radius, d.u(2.5, 5.0), d.u(0.5, 1.0), d.angle(), x, y)]


def _field_galaxies(
    d: _Draw, config: SimulateConfig, stamps: StampLibrary | None
) -> tuple[list[Light], list[Neighbour]]:
    """Unrelated galaxies: a Poisson number from the sky's counts, uniform over the cutout."""
    exclusion = config.field_exclusion_radius
    area = (2 * FIELD_HALF_WIDTH) ** 2 - math.pi * exclusion**2
    n = int(d.rng.poisson(sky.field_density(config) * area))
    mags = sky.power_law_mags(d.rng, config.field_count_slope, *config.field_mag_range, n)
    lights: list[Light] = []
    neighbours = []
    for mag in mags.tolist():
        x, y = _field_position(d, exclusion, FIELD_HALF_WIDTH)
        blue = bool(d.rng.random() < config.field_blue_fraction)
        lights += _neighbour_galaxy(d, mag, x, y, blue, config, stamps)
        neighbours.append(Neighbour(x, y, mag, "field", blue))
    return lights, neighbours


def _satellites_of(
    d: _Draw, host_mag: float, host_phi: float, config: SimulateConfig, stamps: StampLibrary | None
) -> tuple[list[Light], list[Neighbour]]:
    """The central galaxy's own satellites: a Poisson number, magnitude gaps from a power law,
    uniform in radius (projected density ~ 1/R), along the host's major axis (sky.py); those
    fainter than the field's limit are left out, like the field galaxies."""
    n = int(d.rng.poisson(config.satellites_per_host))
    gaps = sky.power_law_mags(d.rng, config.satellite_gap_slope, 0.0, config.satellite_max_gap, n)
    lights: list[Light] = []
    neighbours = []
    for gap in gaps.tolist():
        r = d.u(*config.satellite_radius_range)
        angle = host_phi + d.normal(0.0, 0.7) + (math.pi if d.rng.random() < 0.5 else 0.0)
        blue = bool(d.rng.random() < config.satellite_blue_fraction)
        mag = host_mag + gap
        if mag > config.field_mag_range[1]:
            continue
        x, y = r * math.cos(angle), r * math.sin(angle)
        lights += _neighbour_galaxy(d, mag, x, y, blue, config, stamps)
        neighbours.append(Neighbour(x, y, mag, "satellite", blue))
    return lights, neighbours


def _group_members(
    d: _Draw, host_mag: float, config: SimulateConfig
) -> tuple[list[Light], list[Neighbour]]:
    """The other bright members of the central galaxy's group, anywhere within the group
    radius: mostly red early types, some discs."""
    lo, hi = config.group_members
    r_lo, r_hi = config.group_radius_range
    lights: list[Light] = []
    neighbours = []
    for _ in range(int(d.rng.integers(lo, hi + 1)) - 1):
        r, a = math.sqrt(d.u(r_lo**2, r_hi**2)), d.angle() * 2
        x, y = r * math.cos(a), r * math.sin(a)
        mag = min(host_mag + d.u(-0.75, 2.5), config.field_mag_range[1])
        red = d.rng.random() < config.group_red_fraction
        if red:
            lights += _neighbour_galaxy(d, mag, x, y, False, config)
        else:
            lights += _disc(d, mag, x, y, knots_per_arm=(3, 7))[0]  # a neighbour: fewer knots
        neighbours.append(Neighbour(x, y, mag, "group", not red))
    return lights, neighbours


def _tidal_debris(d: _Draw, host_mag: float, host_phi: float) -> list[Light]:
    """Faint tidal streams or shells: 3-10% of the host's light in wide, smooth, elongated
    knots 1.2-6" out; low surface brightness arcs around a galaxy, lens or not."""
    mag = float(d.split(host_mag, np.array([d.u(0.03, 0.1)]))[0])
    colour = d.normal(1.2, 0.3, 0.4, 2.2)  # old stars, like the host
    if d.rng.random() < 0.5:  # a stream: one long arc around the host
        radius, span = d.u(1.5, 5.0), d.u(1.0, 3.0)
        theta = d.angle() * 2 + np.linspace(0.0, span, int(d.rng.integers(6, 11)))
        xy = radius * np.stack([np.cos(theta), np.sin(theta)], axis=1)
        tangent = np.stack([-np.sin(theta), np.cos(theta)], axis=1)
        return d.knots_along(xy, tangent, mag, colour, (0.25, 0.6), 0.25)
    points, tangents = [], []  # shells: concentric caps on alternate sides of the major axis
    r0 = d.u(1.2, 2.5)
    for i in range(int(d.rng.integers(2, 4))):
        half = d.u(0.7, 1.2)
        theta = host_phi + math.pi * i + np.linspace(-half, half, 5)
        points.append(r0 * 1.6**i * np.stack([np.cos(theta), np.sin(theta)], axis=1))
        tangents.append(np.stack([-np.sin(theta), np.cos(theta)], axis=1))
    return d.knots_along(
        np.concatenate(points), np.concatenate(tangents), mag, colour, (0.2, 0.45), 0.2
    )


def _look_alike_for_lens(
    d: _Draw, scene: Scene, host_mag: float, config: SimulateConfig, stamps: StampLibrary | None
) -> None:
    """A lens galaxy gets the non-lens mix's look-alike systems (a rich system of compact blue
    satellites, a merging companion with tails) as often as a non-lens is one, so that they
    never mark a non-lens."""
    shares = config.nonlens_mix
    total = sum(shares.values())
    u = d.rng.random() * total
    if u < shares.get("satellites", 0.0):
        lights, neighbours = _satellites(d, config, stamps)
        scene.environment.append("satellites")
    elif u < shares.get("satellites", 0.0) + shares.get("merger", 0.0):
        ratio = d.u(0.15, 1.0)  # companion over host flux, as in a non-lens merger
        companion_mag = host_mag - 2.5 * math.log10(ratio)
        pair_mag = host_mag - 2.5 * math.log10(1 + ratio)
        lights, neighbour = _merging_companion(d, companion_mag, pair_mag)
        neighbours = [neighbour]
        scene.environment.append("merger")
    else:
        return
    scene.field = scene.field + lights
    scene.neighbours = scene.neighbours + neighbours


def _host(d: _Draw, scene: Scene) -> tuple[float, float]:
    """Magnitude (bluest band) and light position angle of the central galaxy."""
    mag = total_magnitude(scene.central, d.blue_band)
    shape = scene.central[0].shape
    if "e1" in shape:
        return mag, 0.5 * math.atan2(float(shape["e2"]), float(shape["e1"]))
    return mag, d.angle()


def _stars(d: _Draw) -> list[Star]:
    """Foreground stars anywhere in the cutout, any colour."""
    stars = []
    for _ in range(int(d.rng.poisson(0.4))):
        x, y = _field_position(d, 1.5, STAR_HALF_WIDTH)
        stars.append(Star(x, y, _star_mags(d)))
    return stars


def _star_mags(d: _Draw) -> dict[str, float]:
    """A foreground star's magnitudes: VIS 17-24.5, any colour."""
    return d.mags(d.u(17.0, 24.5), d.normal(0.6, 0.6, -0.6, 2.5), 0.02)


def star_mags(rng: np.random.Generator, bands: Sequence[Band]) -> dict[str, float]:
    """The magnitudes of one foreground star, as around every cutout (for ``simulate.tile``)."""
    return _star_mags(_Draw(rng, bands))


def field_galaxy(
    rng: np.random.Generator,
    bands: Sequence[Band],
    mag: float,
    blue: bool,
    config: SimulateConfig,
) -> list[Light]:
    """One field galaxy of VIS magnitude ``mag`` centred on the origin, drawn as the unrelated
    galaxies around every cutout are (``simulate.tile`` places them on a mosaic)."""
    return _neighbour_galaxy(_Draw(rng, bands), mag, 0.0, 0.0, blue, config)


def _field_position(d: _Draw, min_radius: float, half_width: float) -> tuple[float, float]:
    while True:
        x, y = d.u(-half_width, half_width), d.u(-half_width, half_width)
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
    further out: multiply imaged, yet near or below the rule's thresholds) or "unlensed"
    (outside; mostly just outside, ``config.near_caustic_fraction``). Morphology from
    ``config.source_mix``, or a stamp (``config.stamp_fraction``)."""
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
        # just outside the caustic (singly imaged, weakly distorted, beside the deflector) or
        # further out; its image lands about theta_e further out: keep it inside the cutout
        if d.rng.random() < config.near_caustic_fraction:
            beta = theta_e * d.u(1.0, 2.2)
        else:
            beta = theta_e * d.u(2.2, 4.0) + 0.3
        beta = min(beta, 8.5 - theta_e)
    angle = d.angle() * 2
    xs, ys = beta * math.cos(angle), beta * math.sin(angle)
    mag = d.u(mag_lo, mag_hi)  # unlensed; lensing brightens it 1-3 mag
    colour = d.normal(0.35, 0.45, -0.6, 1.8)  # mostly blue star-forming, some red
    radius = math.exp(d.u(math.log(0.05), math.log(0.5)))
    family, lights = _source_morphology(d, config, stamps, mag, colour, radius, xs, ys)
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


def _source_morphology(
    d: _Draw,
    config: SimulateConfig,
    stamps: StampLibrary | None,
    mag: float,
    colour: float,
    radius: float,
    x: float,
    y: float,
) -> tuple[str, list[Light]]:
    """A galaxy of the lensed sources' morphologies (``config.source_mix``, or a stamp
    ``config.stamp_fraction`` of the time): the family's name and its lights, unlensed."""
    if stamps is not None and d.rng.random() < config.stamp_fraction:
        return "stamp", [_stamp_light(d, stamps.draw(d.rng), d.mags(mag, colour), radius, x, y)]
    family = _pick(d.rng, config.source_mix, "source_mix")
    if family == "shapelets":
        stamp = random_shapelets(d.rng)
        return family, [_stamp_light(d, stamp, d.mags(mag, colour), radius, x, y)]
    if family in SOURCE_FAMILIES:
        return family, SOURCE_FAMILIES[family](d, mag, colour, radius, x, y)
    known = ", ".join([*SOURCE_FAMILIES, "shapelets"])
    raise ValueError(f"unknown source family {family!r} in source_mix; known: {known}")


def _irregular(d: _Draw, config: SimulateConfig, stamps: StampLibrary | None) -> list[Light]:
    """A star-forming irregular, clumpy or multi-lobed galaxy at the centre, unlensed, drawn
    from the lensed sources' own families: a source's morphology must not give the label
    away. Irregular and peculiar galaxies are a third to a half of faint field galaxies
    (Abraham et al. 1996, MNRAS 279, L47; Brinchmann et al. 1998, ApJ 499, 112), clumpy
    star-forming galaxies common from z ~ 0.5 on (Guo et al. 2015, ApJ 800, 39)."""
    mag = d.normal(22.0, 1.0, 19.0, 24.5)
    colour = d.normal(0.5, 0.4, -0.5, 1.8)
    _, lights = _source_morphology(d, config, stamps, mag, colour, _galaxy_size(d, mag), 0, 0)
    return lights


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
            scene.field, scene.neighbours = _satellites(d, config, stamps)
            scene.environment.append("satellites")
        return scene
    z = d.normal(0.4, 0.2, 0.05, 1.2)
    if kind == "spiral":
        central, _, _ = _disc(d)
        return Scene(kind=kind, central_type="disc", central=central, z_lens=z)
    if kind == "ring":
        return Scene(kind=kind, central_type="ring", central=_ring(d, config), z_lens=z)
    if kind == "irregular":
        z = d.normal(0.8, 0.4, 0.1, 2.5)
        return Scene(kind, "irregular", _irregular(d, config, stamps), z_lens=z)
    if kind == "merger":
        central, companions, neighbours = _merger(d)
        scene = Scene(kind=kind, central_type="merger", central=central, field=companions, z_lens=z)
        scene.neighbours, scene.environment = neighbours, ["merger"]
        return scene
    raise ValueError(f"unknown non-lens kind {kind!r}; known: {', '.join(NONLENS_MIX)}")


def draw_nonlens_kind(rng: np.random.Generator, config: SimulateConfig) -> str:
    return _pick(rng, config.nonlens_mix, "nonlens_mix")


def add_field(
    rng: np.random.Generator,
    bands: Sequence[Band],
    scene: Scene,
    config: SimulateConfig,
    stamps: StampLibrary | None = None,
) -> None:
    """The environment of a central galaxy, drawn from one distribution whatever the label:
    field galaxies, its satellites, its group (sometimes), tidal debris (sometimes), stars;
    and, for lens galaxies, the non-lens mix's look-alike systems at the mix's rates."""
    d = _Draw(rng, bands)
    host_mag, host_phi = _host(d, scene)
    if scene.kind == "lens":
        _look_alike_for_lens(d, scene, host_mag, config, stamps)
    lights, neighbours = _field_galaxies(d, config, stamps)
    more_lights, more_neighbours = _satellites_of(d, host_mag, host_phi, config, stamps)
    lights, neighbours = lights + more_lights, neighbours + more_neighbours
    if d.rng.random() < config.group_fraction:
        more_lights, more_neighbours = _group_members(d, host_mag, config)
        lights, neighbours = lights + more_lights, neighbours + more_neighbours
        scene.environment.append("group")
    if d.rng.random() < config.tidal_fraction:
        lights += _tidal_debris(d, host_mag, host_phi)
        scene.environment.append("tidal")
    scene.field = scene.field + [light.truncated() for light in lights]
    scene.neighbours = scene.neighbours + neighbours
    scene.stars = _stars(d)


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
