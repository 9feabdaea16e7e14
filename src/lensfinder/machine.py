"""The machine lensfinder runs on: the CPU cores it may use, how busy other processes keep
them (which decides how torch's threads wait), how the C allocator keeps freed memory, and the
CPU model (benchmarks record it beside their numbers)."""

from __future__ import annotations

import ctypes
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


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
# Blocks below 32 MB (glibc's largest mmap threshold on 64-bit) come from the heap, whose free
# top goes back to the kernel only beyond 256 MB.
RETAINED_MALLOC_SETTINGS = {
    M_MMAP_THRESHOLD: 32 << 20,
    M_TRIM_THRESHOLD: 256 << 20,
    M_TOP_PAD: 16 << 20,
}
# A user's own allocator settings, which win.
MALLOC_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def retain_freed_memory() -> bool:
    """Have glibc's allocator keep freed memory for reuse instead of handing it back to the
    kernel at once; True where it took the settings (Linux with glibc), else False.

    Why: a training step allocates and frees activations of a few MB each. By default glibc
    maps large blocks fresh from the kernel and unmaps them on free, so every step faults their
    pages in again: 3-4 million page faults in 3 epochs of cpu-best, 7-10 s of kernel time.
    Kept, 0.5 million and 3 s, the command ~5% faster with identical weights (README, "Session
    28"), for up to ~256 MB of freed memory held by the process. A user's own MALLOC_*_
    variables or glibc.malloc tunables win: then nothing is changed."""
    if platform.libc_ver()[0] != "glibc":
        return False
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if any(name in os.environ for name in MALLOC_ENVIRONMENT) or "glibc.malloc." in tunables:
        return False
    try:
        libc = ctypes.CDLL(None)
        return all(libc.mallopt(key, value) == 1 for key, value in RETAINED_MALLOC_SETTINGS.items())
    except (OSError, AttributeError):
        return False
