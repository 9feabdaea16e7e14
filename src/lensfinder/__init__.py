"""lensfinder: find strong gravitational lenses in Euclid-like images with CNNs.

Stages, each its own subpackage, data flowing one way:
``simulate`` -> ``data`` -> ``models`` -> ``train`` -> ``predict`` -> ``evaluate`` / ``scan``.
Heavy dependencies (torch, lenstronomy, dask) are imported inside the stages, never here.
"""

import os

__version__ = "0.1.0"


# How torch's threads wait (see machine.openmp_wait_policy), decided once, before any stage
# imports torch (OpenMP reads it when it loads), so the CLI and notebooks alike get it; a
# user's own OMP_WAIT_POLICY wins, and single-thread processes (scan workers, the tests) have
# no threads to wait and skip the look at the machine (~16 ms).
if "OMP_WAIT_POLICY" not in os.environ and os.environ.get("OMP_NUM_THREADS") != "1":
    from lensfinder.machine import available_cores, openmp_wait_policy, others_running

    _policy = openmp_wait_policy(others_running(), available_cores())
    if _policy is not None:
        os.environ["OMP_WAIT_POLICY"] = _policy
