"""The machine lensfinder runs on: the CPU cores it may use, how busy other processes keep
them (which decides how torch's threads wait), and the CPU model (benchmarks record it
beside their numbers)."""

from __future__ import annotations

import os
import platform
import statistics
import time
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


def others_running(
    samples: int = 5, pause_s: float = 0.004, source: str = "/proc/loadavg"
) -> float:
    """Processes other than this one running right now, the median of a few looks at the
    kernel's count of runnable tasks (Linux ``/proc/loadavg``); 0 where it cannot be read."""
    counts = []
    try:
        for look in range(samples):
            if look:
                time.sleep(pause_s)
            with open(source) as f:
                counts.append(int(f.read().split()[3].split("/")[0]) - 1)  # less this process
    except (OSError, ValueError, IndexError):
        return 0.0
    return float(statistics.median(counts))


def openmp_wait_policy(others: float, cores: int) -> str | None:
    """``PASSIVE`` where other processes already keep half the cores or more busy, else None
    (OpenMP's own default: a thread spins a while before it sleeps).

    Why: torch's threads wait for each other between operations. Spinning costs nothing on
    cores of their own and keeps them ready: cpu-best trains 1.4x faster so on 2 idle cores
    than with passive waiting (6.0 against 4.4 steps/s, README "Session 27"). On cores shared
    with other busy processes spinning steals them: two bare training loops at once took
    0.75-4 s per step spinning against 0.41 s passive (and 6.7 against 45 images/s once)."""
    return "PASSIVE" if others >= max(1.0, cores / 2) else None
