"""Euclid-like strong-lens simulations in the Bologna Lens Finding Challenge 2 layout.

``simulate(config, out)`` draws lenses and honest non-lenses (ellipticals, spirals, rings,
mergers, unlensed background galaxies, neighbours and stars), renders one scene per object in
VIS and NISP Y, J, H with lenstronomy, and writes FITS cutouts plus the catalogue from which
``lensfinder.labels`` derives the labels. lenstronomy is imported only when rendering starts.
"""

from lensfinder.simulate.simulation import (
    SimulatedObject,
    SimulateResult,
    simulate,
    simulate_object,
)

__all__ = ["SimulateResult", "SimulatedObject", "simulate", "simulate_object"]
