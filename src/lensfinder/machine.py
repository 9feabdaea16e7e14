"""The machine lensfinder runs on: the CPU cores it may use and the CPU model (benchmarks
record it beside their numbers)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def available_cores() -> int:
    """CPU cores this process may run on (its affinity, e.g. a batch job's share)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what ``platform`` knows: for reports
    that say which machine a number was measured on."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
