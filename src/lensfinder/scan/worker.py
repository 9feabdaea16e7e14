"""What a scan's LocalCluster worker process does as it starts and as it ends (a Dask preload).

Start: import the predictor (torch, ONNX Runtime, timm: seconds on 2 cores) and the Parquet
writer (pyarrow, which imports pandas: ~0.7 s) while the client prepares the models, instead of
on the worker's first shard.

End: once Dask has closed the worker cleanly (its tasks done, its work directory removed, its
threads joined), leave without Python's teardown of those modules, which takes 1.5 to 3 s per
process and holds up the end of every scan (the nanny waits for its process; measured: closing
a 2-worker cluster 2.9 s -> 0.1 s). Any other ending (an error, a kill) keeps its exit status
and the full teardown.
"""

from __future__ import annotations

import atexit
import functools
import os
import sys
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet  # the point: imported as the worker starts

import lensfinder.predict.predictor  # noqa: F401

pa.array(np.zeros(1))  # pyarrow imports pandas on its first array made from numpy


def leave_quickly(worker: Any) -> None:
    """At exit: end the process at once if ``worker`` closed cleanly, else do nothing."""
    from distributed.core import Status

    if getattr(worker, "status", None) == Status.closed:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(0)


def dask_setup(worker: Any) -> None:
    """Called by Dask with the worker once this module is preloaded."""
    atexit.register(functools.partial(leave_quickly, worker))
