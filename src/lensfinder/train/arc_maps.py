"""Where the arc is, not only whether there is one: an auxiliary per-cell arc loss.

A lens classifier trained on one bit per cutout may learn whatever separates the simulator's
lenses from its non-lenses; the simulator knows more, namely which pixels are the lensed arc
(``SimulateConfig.arc_maps``: the pixels the label rule counts as ``n_pix_source``). With
``TrainConfig.arc_map_weight`` > 0 a small head on the backbone's feature map of stride
``arc_map_stride`` predicts, per cell, the share of its pixels that are a lens's arc: a
companion, a ring galaxy's ring or a singly imaged background galaxy are 0 there, the arc of a
lens is not. Dense supervision of this kind (segmentation beside classification) tells the
network what to look at. The head is used in training only; the saved model is the plain
classifier, so nothing downstream changes.

The target travels as one more plane of the training input (``CutoutDataset(arc_maps=True)``),
so every crop, shift and D4 element moves it with the pixels; ``split_arc`` takes it off before
the network sees the input.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from lensfinder.errors import ConfigError

HIDDEN_CHANNELS = 32
PRIOR_ARC_SHARE = 0.01  # the head starts by predicting this share everywhere (arcs are rare)


def split_arc(x: Any, bands: int) -> tuple[Any, torch.Tensor | None]:
    """A training input with the arc plane -> (the network's input, the arc target (n, 1, h,
    w)); any other input (validation, prediction, a two-branch pair) unchanged, with None."""
    if isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] == bands + 1:
        return x[:, :bands], x[:, bands:]
    return x, None


def feature_module(backbone: nn.Module, stride: int) -> tuple[nn.Module, int]:
    """The last module of a timm backbone whose output has ``stride`` (``feature_info``), and
    its channels."""
    info: Any = getattr(backbone, "feature_info", None) or []
    entries = list(info.info) if hasattr(info, "info") else list(info)
    found = [e for e in entries if int(e["reduction"]) == stride]
    if not found:
        raise ConfigError(f"arc_map_stride {stride}: the backbone has no feature map of it")
    entry = found[-1]
    return backbone.get_submodule(str(entry["module"])), int(entry["num_chs"])


class ArcMapHead(nn.Module):
    """A 3x3 conv, ReLU and a 1x1 conv on a captured feature map: one arc logit per cell.

    ``attach`` hooks the feature module, so the classifier's own forward pass fills
    ``features`` and no second pass is needed.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, HIDDEN_CHANNELS, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(HIDDEN_CHANNELS, 1, 1),
        )
        last = self.net[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.constant_(last.bias, math.log(PRIOR_ARC_SHARE / (1 - PRIOR_ARC_SHARE)))
        self.features: torch.Tensor | None = None

    @classmethod
    def attach(cls, model: nn.Module, stride: int) -> ArcMapHead:
        backbone = getattr(model, "backbone", None)
        if backbone is None:
            raise ConfigError("arc_map_weight: needs a stacked (one-backbone) model")
        module, channels = feature_module(backbone, stride)
        head = cls(channels)
        module.register_forward_hook(head._capture)
        return head

    def _capture(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self.features = output if self.training else None

    def loss(self, target: torch.Tensor) -> torch.Tensor:
        """Mean per-cell BCE of the captured features' arc logits against ``target`` (n, 1,
        h, w) pooled to the cells (the share of each cell's pixels on an arc); objects whose
        target is unknown (-1) weigh exactly 0. 0 when none is known."""
        features = self.features
        self.features = None
        if features is None:
            raise RuntimeError("ArcMapHead.loss: no features captured (call the model first)")
        logits = self.net(features).float()
        known = (target >= 0).flatten(1).all(dim=1)
        share = F.adaptive_avg_pool2d(target.clamp(min=0).float(), logits.shape[-2:])
        per_cell = F.binary_cross_entropy_with_logits(logits, share, reduction="none")
        per_object = per_cell.flatten(1).mean(dim=1)
        weight = known.float()
        return (per_object * weight).sum() / weight.sum().clamp(min=1.0)
