"""Where training runs: the device count checked against this machine, CUDA or not, precision.

Shared by the trainer (``training``) and the time budget's probe (``time_budget``), which must
run the model where and how training will."""

from __future__ import annotations

import torch

from lensfinder.config import TrainConfig
from lensfinder.machine import available_cores


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
