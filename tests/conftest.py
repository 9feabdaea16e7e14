"""Shared fixtures: tiny data made on the fly (never committed), and quiet, small-thread torch."""

from __future__ import annotations

import os

os.environ.setdefault("LENSFINDER_QUIET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")
