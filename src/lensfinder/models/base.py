"""What every lensfinder model shares: the one-logit base class, and the timm building steps
(``create_timm``, ``load_weights``, ``finish_model``) that ``factory`` and ``two_branch`` both use.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import timm
from torch import nn

from lensfinder.config import ModelConfig
from lensfinder.errors import ConfigError
from lensfinder.models.batchnorm import convert_to_instance_norm, reinit_batchnorm
from lensfinder.models.pretrained import StateDict, pretrained_state_dict

# A timm network: an nn.Module with timm's ``feature_info``, ``num_features``, ``get_classifier``
# and ``forward_intermediates``, which nn.Module's type does not declare.
TimmNet = Any


class OneLogitModel(nn.Module):
    """Base of our models: one logit per object, shape ``(n,)``.

    With a frozen backbone (``frozen_backbone`` True) only ``head_modules()`` have trainable
    parameters, and ``model.train()`` keeps every normalisation layer outside the head in eval
    mode, so the ImageNet statistics are not overwritten: the trainer needs no special call, only
    an optimiser over parameters with ``requires_grad``.
    """

    frozen_backbone: bool = False

    def head_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def head_parameters(self) -> Iterator[nn.Parameter]:
        for module in self.head_modules():
            yield from module.parameters()

    def freeze_backbone(self) -> None:
        head = {id(p) for p in self.head_parameters()}
        for parameter in self.parameters():
            parameter.requires_grad_(id(parameter) in head)
        self.frozen_backbone = True
        self.train(self.training)

    def train(self, mode: bool = True) -> OneLogitModel:
        super().train(mode)
        if mode and self.frozen_backbone:
            in_head = {id(m) for head in self.head_modules() for m in head.modules()}
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._NormBase) and id(module) not in in_head:
                    module.eval()
        return self


def create_timm(arch: str, **kwargs: Any) -> TimmNet:
    """``timm.create_model(arch, pretrained=False, ...)`` with a one-line error for a bad name."""
    try:
        return timm.create_model(arch, pretrained=False, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" not in str(exc):
            raise
        raise ConfigError(
            f"model.arch {arch!r}: not a timm {timm.__version__} model "
            f"(e.g. tf_efficientnet_lite0, efficientnet_b0, resnet18)"
        ) from None


def load_weights(model_cfg: ModelConfig) -> StateDict | None:
    """The pretrained state dict ``model_cfg.pretrained`` names, or None for random init."""
    if not model_cfg.pretrained:
        return None
    return pretrained_state_dict(model_cfg.pretrained, model_cfg.arch)


def finish_model(model: OneLogitModel, model_cfg: ModelConfig) -> OneLogitModel:
    """Apply the norm options of ``model_cfg``, in the order the paper's methods need."""
    if model_cfg.bn_reinit:
        reinit_batchnorm(model, affine=model_cfg.bn_reinit_affine)
    if model_cfg.norm == "instance":
        convert_to_instance_norm(model)
    if model_cfg.freeze_backbone:
        model.freeze_backbone()
    return model


def check_instance_norm_size(net: TimmNet, size: int, arch: str) -> None:
    """Instance norm of a 1x1 feature map is zero whatever the input: refuse such a model."""
    reduction = int(net.feature_info[-1]["reduction"]) if hasattr(net, "feature_info") else 32
    if math.ceil(size / reduction) < 2:
        raise ConfigError(
            f"model.norm='instance' with input.size {size}: the last feature map of {arch} is "
            f"1x1 (stride {reduction}), where instance norm erases everything; "
            f"use input.size > {reduction}"
        )
