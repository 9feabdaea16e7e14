"""Catalogue quantities of one simulated object, measured as the challenge defines them.

The label is never stored: ``lensfinder.labels`` derives it from these columns, so what counts as
a lens is measured, not assumed. In the reference (VIS) band:

- ``n_pix_source``: pixels of the noise-free, PSF-convolved lensed source above 1 sigma of the
  background noise;
- ``mag_eff``: lensed source flux over its unlensed flux (the effective magnification);
- ``n_source_im``: images of the source centre (lenstronomy ``LensEquationSolver``);
- ``sb_contrast``: source over lens-galaxy flux in those source pixels;
- ``color_diff``: (blue - red band colour) of the lens galaxy minus that of the source;
- ``ein_area``: ``pi * theta_E**2`` in arcsec^2 (theta_E of the central mass), the truth of the
  Einstein-radius head. The challenge's own catalogue gives it in steradians; readers convert
  either with ``lensfinder.einstein.theta_e_arcsec``, never by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lensfinder.simulate.render import lens_model
from lensfinder.simulate.scene import Scene, total_magnitude

# The catalogue columns the simulator fills; every other column is written empty (NaN).
SIMULATED_COLUMNS: tuple[str, ...] = (
    "ID", "z_source", "z_lens", "mag_source", "ein_area", "r_source", "n_pix_source",
    "source_flux", "n_pix_lens", "lens_flux", "n_source_im", "mag_eff", "sb_contrast",
    "color_diff", "n_gal_3", "n_gal_5", "n_gal_10", "mag_lens", "n_sources",
)  # fmt: skip
NEIGHBOUR_RADII = (3.0, 5.0, 10.0)  # arcsec, for n_gal_3/5/10


def count_source_images(scene: Scene) -> int:
    """Number of images of the source centre: 0 without a source, 1 when nothing lenses it."""
    if not scene.has_source:
        return 0
    if not scene.lens_models:
        return 1
    from lenstronomy.LensModel.Solver.lens_equation_solver import LensEquationSolver

    xs, ys = scene.source_centre
    beta = math.hypot(xs, ys)
    solver = LensEquationSolver(lens_model(scene.lens_models))
    x_img, _ = solver.image_position_from_source(
        xs,
        ys,
        list(scene.lens_kwargs),
        min_distance=min(0.05, scene.theta_e / 10),
        search_window=2 * (scene.theta_e + beta) + 2.0,
        precision_limit=1e-10,
        num_iter_max=100,
        arrival_time_sort=False,  # only the count is kept
    )
    return len(x_img)


def catalogue_row(
    object_id: int,
    scene: Scene,
    central: np.ndarray,
    source: np.ndarray,
    background_noise: float,
    unlensed_source_flux: float,
    colour_bands: Sequence[str],
) -> dict[str, float]:
    """The catalogue row of one object from its noise-free reference-band components.

    ``colour_bands`` = (reference band, reddest band); ``unlensed_source_flux`` is the source's
    total flux without lensing in the reference band (e-/s).
    """
    ref, red = colour_bands
    above_source = source > background_noise
    n_pix_source = int(above_source.sum())
    source_flux = float(source.sum())
    lens_flux = float(central.sum())
    lens_colour = total_magnitude(scene.central, ref) - total_magnitude(scene.central, red)
    row: dict[str, float] = {
        "ID": float(object_id),
        "z_lens": scene.z_lens,
        "z_source": scene.z_source,
        "ein_area": math.pi * scene.theta_e**2,
        "lens_flux": lens_flux,
        "n_pix_lens": float((central > background_noise).sum()),
        "mag_lens": total_magnitude(scene.central, ref),
        "n_source_im": float(count_source_images(scene)),
        "n_sources": float(scene.has_source),
        "n_pix_source": float(n_pix_source),
        "source_flux": source_flux,
        "mag_source": math.nan,
        "r_source": math.nan,
        "mag_eff": math.nan,
        "sb_contrast": math.nan,
        "color_diff": math.nan,
    }
    if scene.has_source:
        row["mag_source"] = total_magnitude(scene.source, ref)
        row["r_source"] = scene.source_radius
        row["mag_eff"] = source_flux / unlensed_source_flux
        source_colour = total_magnitude(scene.source, ref) - total_magnitude(scene.source, red)
        row["color_diff"] = lens_colour - source_colour
        lens_under_source = float(central[above_source].sum())
        if n_pix_source and lens_under_source > 0:
            row["sb_contrast"] = float(source[above_source].sum()) / lens_under_source
    row.update(neighbour_counts(scene))
    return row


def neighbour_counts(scene: Scene) -> dict[str, float]:
    """``n_gal_3/5/10``: galaxies (neighbours of every origin) within 3", 5", 10" of the centre."""
    distances = np.array([n.distance for n in scene.neighbours])
    return {f"n_gal_{r:g}": float((distances < r).sum()) for r in NEIGHBOUR_RADII}
