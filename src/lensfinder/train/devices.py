"""Where training runs: the device count checked against this machine, CUDA or not, precision.

Shared by the trainer (``training``) and the time budget's probe (``time_budget``), which must
run the model where and how training will."""

from __future__ import annotations

import torch

from lensfinder.config import TrainConfig
from lensfinder.machine import available_cores, retain_freed_memory


def check_devices(devices: int | str, accelerator: str) -> str | None:
    """Why Lightning must not be given ``devices``, or None: a count above the cores (CPU) or
    the visible GPUs would start that many processes before failing (99 DDP processes on 2
    cores exhausted the memory), and -1 or device indices mean nothing on a CPU. Decided here,
    before any process starts; accelerators other than CPU and CUDA are left to Lightning."""
    if devices == "auto" or accelerator not in ("auto", "cpu", "cuda", "gpu"):
        return None
    text = str(devices).strip()
    try:
        indices = [int(t) for t in text.split(",") if t.strip()] if "," in text else None
        count = int(text) if indices is None else len(indices)
    except ValueError:
        return f"devices {text!r}: expected a count (4), device indices (0,1), -1 (all) or auto"
    if indices is None and count < 1 and count != -1:
        return f"devices {count}: expected a count >= 1, -1 (all) or auto"
    if uses_cuda(accelerator):
        visible = torch.cuda.device_count()
        if indices is not None:
            if len(set(indices)) != len(indices) or not all(0 <= i < visible for i in indices):
                return (
                    f"devices {text}: device indices must be distinct, within 0..{visible - 1} "
                    f"({visible} GPUs visible)"
                )
        elif count > visible:
            return f"devices {count}: only {visible} GPUs are visible here"
        return None
    cores = available_cores()
    where = f"this machine runs on CPU ({cores} cores, no GPU in use)"
    if indices is not None or count == -1:
        return f"devices {text}: GPU device selection, but {where}; give a process count 1..{cores}"
    if count > cores:
        return f"devices {count}: more processes than cores; {where}; give at most {cores}"
    return None


def uses_cuda(accelerator: str) -> bool:
    return accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available())


def resolve_precision(config: TrainConfig) -> str:
    """``"auto"``: bf16 mixed precision on CUDA cards that support it, else fp16 mixed; fp32 on
    CPU (CPU autocast is slower than fp32 for these convolutions)."""
    if config.precision != "auto":
        return config.precision
    if uses_cuda(config.accelerator):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


# What a training run says when only part of torch flushes denormals (see ``flush_denormals``).
LATE_FLUSH_NOTE = (
    "torch's worker threads started before training and compute denormal floats at full "
    "cost, which slows a confident network's steps on x86 CPUs; call "
    "lensfinder.train.devices.prepare_cpu_for_training() before any other torch work (the "
    "command line does)"
)


def flush_denormals() -> str | None:
    """Have the CPU treat denormal floats (below ~1.2e-38) as zero in this thread and in the
    threads it starts from now on (torch's intra-op pool among them, if it has not started
    yet); None, or a line saying that the pool's threads started earlier and do not flush.

    Why: a sample the network already gets right has a loss gradient of ~1e-30 and less, and
    carried back through the layers it falls to denormals, which x86 cores compute many times
    slower than normal floats. The bare training loop fitting one batch until it is sure of
    it slowed from 0.14-0.17 s per step to 0.8-1.8 s without flushing and stayed at 0.14 with
    it; cpu-best's first epochs gain ~5% (README, "Session 27"). Flushing changes nothing a
    float32 network resolves (the values are below 2^-126); GPU kernels mostly flush anyway.
    The setting stays on for the process."""
    if not torch.set_flush_denormal(True):
        return None  # a CPU without the flag (not x86): nothing to do
    return None if denormals_flushed() else LATE_FLUSH_NOTE


def prepare_cpu_for_training() -> str | None:
    """What a training process sets up before torch's threads start, so that they inherit it:
    denormals flushed (``flush_denormals``) and freed memory kept for reuse
    (``machine.retain_freed_memory``); None, or ``flush_denormals``'s line about late threads.
    Training and the time budget's yardstick both call it, so the yardstick runs as training."""
    retain_freed_memory()
    return flush_denormals()


def denormals(n: int) -> torch.Tensor:
    """``n`` float32 denormals (~5.9e-39), made from their bits: a float written as 1e-39 would
    already be zero where flushing is on."""
    return torch.full((n,), 0x00400000, dtype=torch.int32).view(torch.float32)


def denormals_flushed() -> bool:
    """Whether every thread of torch's intra-op pool flushes denormals: a product of denormals
    large enough to be shared among them comes out all zeros."""
    return not bool((denormals(1 << 20) * 1.0).any())
