"""``create_model``: any timm architecture as a one-logit lens classifier for our bands.

Architectures come from timm by name, always built with ``pretrained=False`` (nothing is
downloaded); weights are loaded separately by ``lensfinder.models.pretrained``. Then, in this
order: BN re-initialisation (method 1), instance norm, frozen backbone, as ``ModelConfig`` asks.
``load_model`` rebuilds through the same function, so a saved model always gets the same layers.
"""

from __future__ import annotations

import torch
from torch import nn

from lensfinder.config import InputConfig, ModelConfig, check_bands
from lensfinder.errors import ConfigError
from lensfinder.models.base import (
    OneLogitModel,
    TimmNet,
    check_instance_norm_size,
    create_timm,
    finish_model,
    load_weights,
    n_outputs,
)
from lensfinder.models.pretrained import load_pretrained
from lensfinder.models.two_branch import create_two_branch


class LogitModel(OneLogitModel):
    """A timm classifier built with one output class; ``forward`` squeezes it to ``(n,)``."""

    def __init__(self, backbone: TimmNet, theta_e_head: bool = False):
        super().__init__()
        self.backbone = backbone
        self.theta_e_head = theta_e_head

    def head_modules(self) -> list[nn.Module]:
        return [self.backbone.get_classifier()]

    def raw_outputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def leading_stages(self, n: int) -> list[nn.Module]:
        net = self.backbone
        if not all(hasattr(net, name) for name in ("conv_stem", "bn1", "blocks")):
            return super().leading_stages(n)  # refuses
        if not 1 <= n <= len(net.blocks):
            raise ConfigError(
                f"frozen_stages {n}: this network has 1..{len(net.blocks)} (stem + blocks)"
            )
        return [net.conv_stem, net.bn1, *list(net.blocks)[: n - 1]]


def create_model(model_cfg: ModelConfig, input_cfg: InputConfig) -> OneLogitModel:
    """A one-logit model for ``input_cfg``'s bands and layout, as ``model_cfg`` describes.

    ``layout="stacked"``: one timm network whose stem takes ``len(bands)`` channels.
    ``layout="two_branch"``: see ``lensfinder.models.two_branch``; forward takes ``(vis, nisp)``.
    """
    check_bands(input_cfg)
    if input_cfg.layout == "two_branch":
        return create_two_branch(model_cfg, input_cfg)
    weights = load_weights(model_cfg)
    backbone = create_timm(
        model_cfg.arch,
        in_chans=len(input_cfg.bands),
        num_classes=n_outputs(model_cfg),
        drop_rate=model_cfg.drop_rate,
        drop_path_rate=model_cfg.drop_path_rate,
    )
    if model_cfg.norm == "instance":
        check_instance_norm_size(backbone, input_cfg.size, model_cfg.arch)
    if weights is not None:
        load_pretrained(backbone, weights, str(model_cfg.pretrained))
    return finish_model(LogitModel(backbone, model_cfg.theta_e_head), model_cfg)
