"""What every lensfinder model shares: the one-logit base class, and the timm building steps
(``create_timm``, ``load_weights``, ``finish_model``) that ``factory`` and ``two_branch`` both use.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import timm
import torch
from torch import nn

from lensfinder.config import ModelConfig
from lensfinder.errors import ConfigError
from lensfinder.models.batchnorm import convert_to_instance_norm, reinit_batchnorm
from lensfinder.models.pretrained import StateDict, pretrained_state_dict

# A timm network: an nn.Module with timm's ``feature_info``, ``num_features``, ``get_classifier``
# and ``forward_intermediates``, which nn.Module's type does not declare.
TimmNet = Any

# The Einstein-radius head (``ModelConfig.theta_e_head``): two more outputs of the model's last
# linear layer, beside the logit: the mean of theta_E (arcsec, through softplus so it is
# positive) and log sigma (clamped: a sigma of 0.007" - 7" covers every galaxy-scale lens, and
# the clamp keeps the Gaussian NLL finite early in training).
THETA_E_OUTPUTS = 2
LOG_SIGMA_RANGE = (-5.0, 2.0)


def n_outputs(model_cfg: ModelConfig) -> int:
    """Outputs of the model's last layer: the logit, plus theta_E's mean and log sigma."""
    return 1 + (THETA_E_OUTPUTS if model_cfg.theta_e_head else 0)


def theta_e_from_raw(raw: torch.Tensor) -> torch.Tensor:
    """``(n, 2)`` raw head outputs -> ``(n, 2)`` theta_E mean and sigma, both in arcsec."""
    mean = nn.functional.softplus(raw[:, 0])
    sigma = torch.exp(raw[:, 1].clamp(*LOG_SIGMA_RANGE))
    return torch.stack([mean, sigma], dim=1)


class OneLogitModel(nn.Module):
    """Base of our models: one logit per object, shape ``(n,)``.

    With a frozen backbone (``frozen_backbone`` True) only ``head_modules()`` have trainable
    parameters, and ``model.train()`` keeps every normalisation layer outside the head in eval
    mode, so the ImageNet statistics are not overwritten: the trainer needs no special call, only
    an optimiser over parameters with ``requires_grad``.
    """

    frozen_backbone: bool = False
    theta_e_head: bool = False  # set by the subclasses from ``ModelConfig.theta_e_head``

    def head_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def raw_outputs(self, *inputs: Any) -> torch.Tensor:
        """``(n, n_outputs)``: the logit first, then (with the head) theta_E's raw outputs."""
        raise NotImplementedError

    def forward(self, *inputs: Any) -> torch.Tensor:
        """One logit per object, ``(n,)``, with or without the Einstein-radius head."""
        raw = self.raw_outputs(*inputs)
        return raw[:, 0] if self.theta_e_head else raw.squeeze(1)

    def with_theta_e(self, *inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logit (n,), theta_E (n, 2))`` from one forward pass: theta_E's mean and 1-sigma in
        arcsec. Only for a model with the head (``theta_e_head``)."""
        if not self.theta_e_head:
            raise ValueError(f"{type(self).__name__} has no Einstein-radius head")
        raw = self.raw_outputs(*inputs)
        return raw[:, 0], theta_e_from_raw(raw[:, 1:])

    def leading_stages(self, n: int) -> list[nn.Module]:
        """The network's first ``n`` stages, input side first: the stem, then the first
        ``n - 1`` blocks (``TrainConfig.frozen_stages``). Models without that shape refuse."""
        raise ConfigError(f"frozen_stages: {type(self).__name__} has no stem-and-blocks layout")

    def set_leading_stages_trainable(self, n: int, trainable: bool) -> None:
        """Gradients on or off for the first ``n`` stages (``leading_stages``): off, their
        backward pass is skipped (the input needs no gradient), which is what freezing saves."""
        for stage in self.leading_stages(n):
            for parameter in stage.parameters():
                parameter.requires_grad_(trainable)

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
