"""lensfinder: find strong gravitational lenses in Euclid-like images with CNNs.

Stages, each its own subpackage, data flowing one way:
``simulate`` -> ``data`` -> ``models`` -> ``train`` -> ``predict`` -> ``evaluate`` / ``scan``.
Heavy dependencies (torch, lenstronomy, dask) are imported inside the stages, never here.
"""

__version__ = "0.1.0"
