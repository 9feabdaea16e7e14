"""The sky around a galaxy: the numbers behind the simulator's neighbours, and what they predict.

The defaults live in ``SimulateConfig`` (config.py); this module says where they come from and
computes what they imply (the expected ``n_gal_3/5/10`` of the catalogue), so that tests can hold
the simulator to them. Two populations share a cutout (``scene.add_field`` draws both, the same
way around lenses and non-lenses):

**Unrelated field galaxies** (foreground and background, Poisson, uniform on the sky). Their
differential counts in VIS (close to I_AB) are a power law ``dN/dm ~ 10^(slope m)``:

- slope 0.33 for 20 < I_AB < 24-25: Metcalfe et al. 2001 (MNRAS 323, 795; HDF-N/S and
  William Herschel Deep Field counts, 0.33), McCracken et al. 2003 (A&A 410, 17; CFDF,
  0.32-0.34, no break to I_AB 25); Windhorst et al. 2011 (ApJS 193, 27) find the same in
  HST F775W/F850LP;
- normalisation: 30 galaxies per arcmin^2 brighter than VIS 24.5, the Euclid wide survey's
  weak-lensing density (Laureijs et al. 2011, Euclid Definition Study Report, arXiv:1110.3193);
  with the slope above, 64 per arcmin^2 to VIS 25.5, i.e. 5.6 galaxies within 10", 1.4 within
  5" and 0.5 within 3" of any point. (The old simulator had 2.2 within 10".)
- sizes: median half-light radius 0.3" at VIS 24, 0.1 dex larger per magnitude brighter,
  lognormal scatter (the size-magnitude relation of HST deep fields, e.g. Windhorst et al. 2011);
- colours: bimodal, about three in four faint field galaxies blue and star-forming (the red
  fraction of I < 25 counts is 20-30%: an adopted round number).

**Physical companions of the central galaxy** (satellites, pairs, groups, debris):

- satellites: Nierenberg et al. 2011 (ApJ 731, 44; GOODS, early-type hosts at 0.1 < z < 0.8)
  find Ns = 1.7 (+0.9 -0.8) satellites per host within 5.5 mag of it, at 0.5" and beyond, with
  a projected density ``Sigma(R) ~ R^-1`` (gamma_p = -1.0; Nierenberg et al. 2012, ApJ 752, 99:
  -1.1 +- 0.3 in COSMOS), so the number within R grows linearly with R; the satellites of
  early-type hosts are aligned with the host's major axis (|phi| < 42 deg at 68%). We place
  them at 0.5"-6" (3-35 kpc at z ~ 0.5; our reading of their search region). The magnitude
  gap follows ``dN/d(dm) ~ 10^(0.2 dm)``, an adopted faint-end slope (alpha ~ -1.5) which
  puts 9% of satellites within 1.5 mag of the host (flux ratio 1:4): 0.15 major companions per
  host, the order of the close-pair fractions of massive galaxies at z < 1 (5-15%: Patton et
  al. 2000, ApJ 536, 153; Man et al. 2016, ApJ 830, 89);
- star-forming satellites: half are blue (adopted; satellites of massive red hosts are redder
  than field galaxies, Wang & White 2012, MNRAS 424, 2574);
- groups: about a quarter of galaxy-scale lenses lie in groups (Keeton & Zabludoff 2004,
  ApJ 612, 660; Momcheva et al. 2006, ApJ 641, 169), and the SLACS lenses' environments are
  those of non-lens early-type galaxies of the same velocity dispersion (Treu et al. 2009,
  ApJ 690, 670): the same group fraction for every central galaxy, 1-4 other bright members
  (2-5 in all) anywhere within 10";
- tidal debris (streams, shells): 73% of nearby luminous ellipticals show them in very deep
  images (Tal et al. 2009, AJ 138, 1417), 12% of galaxies at CFHTLS-Wide depth (Atkinson et al.
  2013, ApJ 765, 28); at z ~ 0.5 surface-brightness dimming hides most, so we adopt 20%.

Lenses get these companions at the same rates as non-lenses (a lens galaxy is an ordinary
massive galaxy that happens to have a source behind it), and the look-alike systems the
non-lens mix asks for ("satellites": a rich system of compact blue satellites, "merger": a
close pair with tails) come with lens galaxies at the same rates too, so that neither a
neighbour nor its absence tells a network the label.
"""

from __future__ import annotations

import math

import numpy as np

from lensfinder.config import SimulateConfig


def power_law_mags(
    rng: np.random.Generator, slope: float, lo: float, hi: float, size: int
) -> np.ndarray:
    """Magnitudes in [lo, hi] with ``dN/dm ~ 10^(slope m)`` (inverse-CDF draws)."""
    span = 10 ** (slope * (hi - lo)) - 1.0
    return lo + np.log10(1.0 + rng.random(size) * span) / slope


def field_density(config: SimulateConfig) -> float:
    """Unrelated galaxies per arcsec^2 within ``config.field_mag_range`` (VIS)."""
    lo, hi = config.field_mag_range
    slope, reference = config.field_count_slope, config.field_count_mag
    per_arcmin2 = config.field_count_density * (
        10 ** (slope * (hi - reference)) - 10 ** (slope * (lo - reference))
    )
    return per_arcmin2 / 3600.0


def visible_satellite_fraction(config: SimulateConfig, host_mag: float) -> float:
    """Share of a host's satellites bright enough to draw (not fainter than the field limit)."""
    gap = min(config.satellite_max_gap, config.field_mag_range[1] - host_mag)
    if gap <= 0:
        return 0.0
    slope = config.satellite_gap_slope
    return (10 ** (slope * gap) - 1) / (10 ** (slope * config.satellite_max_gap) - 1)


def expected_neighbours(config: SimulateConfig, radius: float, host_mag: float) -> float:
    """Mean number of galaxies within ``radius`` arcsec of the centre (``n_gal_<radius>``) of a
    central galaxy of VIS magnitude ``host_mag``: field galaxies, its visible satellites and
    the members of its group, if any (not the look-alike systems of the non-lens mix)."""
    field = field_density(config) * math.pi * (radius**2 - config.field_exclusion_radius**2)
    r_lo, r_hi = config.satellite_radius_range
    inside = (min(max(radius, r_lo), r_hi) - r_lo) / (r_hi - r_lo)
    satellites = config.satellites_per_host * visible_satellite_fraction(config, host_mag) * inside
    lo, hi = config.group_members
    members = (lo + hi) / 2 - 1  # the central galaxy is one of them
    g_lo, g_hi = config.group_radius_range  # uniform on the sky between these radii
    within = (min(max(radius, g_lo), g_hi) ** 2 - g_lo**2) / (g_hi**2 - g_lo**2)
    group = config.group_fraction * members * within
    return field + satellites + group
