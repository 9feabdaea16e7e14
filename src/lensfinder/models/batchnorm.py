"""Batch-norm handling studied in the paper, plus the instance-norm variant.

- Method 1 (``reinit_batchnorm``): ImageNet BN statistics describe photographs, not sky cutouts,
  so every BN layer's running mean, variance and count are reset after loading pretrained weights
  and relearnt during training (the paper's stated reason). The learnt scale and shift (gamma,
  beta) are part of the pretrained features and are kept unless ``affine=True``.
- Method 2 (``bn_train_mode``): at inference BN normalises with the statistics of the batch
  itself (batches of ``ModelConfig.bn_inference_batch``), which helps when test data differ from
  training data. A score then depends on the other objects in the batch; the running statistics
  are left untouched.
- ``convert_to_instance_norm``: per-object normalisation, independent of batch composition.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """Every batch-norm layer of ``model`` (timm's BatchNormAct2d included)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def leading_batchnorm_layers(model: nn.Module, share: float) -> list[_BatchNorm]:
    """The first ``share`` of the BN layers (at least one) of each branch of ``model`` (each
    direct child holding BN layers: the one backbone, or the VIS and NISP backbones of the
    two-branch network), in forward order: the layers that see low-level features."""
    chosen: list[_BatchNorm] = []
    for child in model.children():
        layers = batchnorm_layers(child)
        chosen += layers[: max(1, math.ceil(share * len(layers)))] if layers else []
    return chosen


def reinit_batchnorm(model: nn.Module, affine: bool = False) -> int:
    """Method 1: reset every BN layer's running mean (0), variance (1) and batch count (0); with
    ``affine`` also its weight (1) and bias (0). Returns the number of layers reset."""
    layers = batchnorm_layers(model)
    for layer in layers:
        if affine:
            layer.reset_parameters()  # running statistics, and weight 1, bias 0
        else:
            layer.reset_running_stats()
    return len(layers)


BatchNormStatistics = list[tuple[_BatchNorm, dict[str, torch.Tensor]]]


def batchnorm_statistics(model: nn.Module) -> BatchNormStatistics:
    """A copy of every BN layer's running statistics (its buffers), for
    ``restore_batchnorm_statistics`` (e.g. to undo AdaBN)."""
    return [
        (layer, {name: b.detach().clone() for name, b in layer.named_buffers(recurse=False)})
        for layer in batchnorm_layers(model)
    ]


def restore_batchnorm_statistics(saved: BatchNormStatistics) -> None:
    with torch.no_grad():
        for layer, buffers in saved:
            for name, buffer in layer.named_buffers(recurse=False):
                buffer.copy_(buffers[name])


@contextlib.contextmanager
def bn_train_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Method 2: inside the block BN layers normalise with batch statistics, nothing else changes.

    Put the model in ``eval()`` first (dropout off); this switches only the BN layers to training
    behaviour, with ``track_running_stats`` off so no buffer is written (safe under
    ``torch.inference_mode`` and for a model shared between threads' sequential calls). Each
    layer's previous state is restored on exit.
    """
    layers = batchnorm_layers(model)
    saved = [(layer, layer.training, layer.track_running_stats) for layer in layers]
    try:
        for layer in layers:
            layer.training = True
            layer.track_running_stats = False
        yield model
    finally:
        for layer, training, track in saved:
            layer.training = training
            layer.track_running_stats = track


class InstanceNormAct2d(nn.InstanceNorm2d):
    """InstanceNorm2d followed by the drop and activation that a timm BatchNormAct2d carried."""

    def __init__(self, num_features: int, eps: float, drop: nn.Module, act: nn.Module):
        super().__init__(num_features, eps=eps, affine=True, track_running_stats=False)
        self.drop = drop
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


def convert_to_instance_norm(model: nn.Module) -> int:
    """Replace every ``BatchNorm2d`` with an affine ``InstanceNorm2d`` (no running statistics),
    keeping the BN affine parameters and any fused activation; returns the number replaced.

    Each object is then normalised on its own, so predictions never depend on the batch. Needs
    feature maps larger than 1x1 at the deepest layer (inputs of at least ~64 px for stride 32).
    """
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.BatchNorm2d):
                continue
            drop, act = getattr(child, "drop", None), getattr(child, "act", None)
            if isinstance(drop, nn.Module) and isinstance(act, nn.Module):
                norm: nn.InstanceNorm2d = InstanceNormAct2d(
                    child.num_features, child.eps, drop, act
                )
            else:
                norm = nn.InstanceNorm2d(
                    child.num_features, eps=child.eps, affine=True, track_running_stats=False
                )
            if child.affine:
                norm.to(device=child.weight.device, dtype=child.weight.dtype)
                with torch.no_grad():
                    norm.weight.copy_(child.weight)
                    norm.bias.copy_(child.bias)
            norm.train(child.training)
            setattr(parent, name, norm)
            replaced += 1
    return replaced
