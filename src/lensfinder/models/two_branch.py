"""The two-branch network of the challenge-2 winners (Bom et al. 2022): VIS and NISP apart.

VIS (1 band, ``input.size`` pixels) and NISP (Y, J, H on their native 66x66 grid of 0.3" pixels)
each go through their own backbone, so neither band set is resampled onto the other's grid. Both
are built from ``model.arch``: the full network for VIS, and for NISP the same network cut after
the stage of stride 16 (shallower: its 66 px hold a third as many pixels across the same sky,
so stride 16 on NISP sees about the scale that stride 32 sees on 100-200 px VIS). Pretrained
weights go into both, the stem summed to one channel for VIS. Global-pooled features are
concatenated and a small MLP gives one logit.
"""

from __future__ import annotations

import torch
from torch import nn

from lensfinder.config import BANDS_ALL, BANDS_NISP, InputConfig, ModelConfig
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

NISP_MAX_REDUCTION = 16  # cut the NISP backbone after its last stage of stride <= 16
Pair = tuple[torch.Tensor, torch.Tensor]


class NispFeatures(nn.Module):
    """A timm network cut after one intermediate stage, global-average pooled to ``(n, C)``."""

    def __init__(self, net: TimmNet, stage: int):
        super().__init__()
        net.prune_intermediate_layers([stage], prune_norm=True, prune_head=True)
        self.net = net
        self.stage = stage
        self.num_features = int(net.feature_info[stage]["num_chs"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (features,) = self.net.forward_intermediates(
            x, indices=[self.stage], intermediates_only=True
        )
        return features.mean(dim=(2, 3))


class TwoBranchModel(OneLogitModel):
    """``forward(vis, nisp)`` or ``forward((vis, nisp))`` -> one logit per object, ``(n,)``.

    vis: ``(n, 1, size, size)``; nisp: ``(n, 3, 66, 66)`` (any size the NISP net accepts).
    """

    def __init__(
        self,
        vis: TimmNet,
        nisp: NispFeatures,
        drop_rate: float,
        head_hidden: int,
        outputs: int = 1,
    ):
        super().__init__()
        self.vis = vis
        self.nisp = nisp
        self.theta_e_head = outputs > 1
        width = int(vis.num_features) + nisp.num_features
        self.head = nn.Sequential(
            nn.Dropout(drop_rate),
            nn.Linear(width, head_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(head_hidden, outputs),
        )

    def head_modules(self) -> list[nn.Module]:
        return [self.head]

    def raw_outputs(
        self, vis: torch.Tensor | Pair, nisp: torch.Tensor | None = None
    ) -> torch.Tensor:
        if nisp is None:
            vis, nisp = vis  # the (vis, nisp) pair that to_model_input returns
        features = torch.cat([self.vis(vis), self.nisp(nisp)], dim=1)
        return self.head(features)


def create_two_branch(model_cfg: ModelConfig, input_cfg: InputConfig) -> TwoBranchModel:
    if tuple(input_cfg.bands) != BANDS_ALL:
        raise ConfigError(
            f"input.layout='two_branch' needs input.bands {list(BANDS_ALL)} (VIS and "
            f"{', '.join(BANDS_NISP)}), got {list(input_cfg.bands)}"
        )
    weights = load_weights(model_cfg)
    depth = {"drop_path_rate": model_cfg.drop_path_rate}
    vis = create_timm(model_cfg.arch, in_chans=1, num_classes=0, **depth)
    nisp_net = create_timm(model_cfg.arch, in_chans=len(BANDS_NISP), num_classes=0, **depth)
    if not hasattr(nisp_net, "prune_intermediate_layers"):
        raise ConfigError(
            f"model.arch {model_cfg.arch!r}: timm cannot cut it into stages, so it cannot be the "
            "NISP branch of layout 'two_branch'"
        )
    if model_cfg.norm == "instance":
        check_instance_norm_size(vis, input_cfg.size, model_cfg.arch)
    if weights is not None:
        for net in (vis, nisp_net):
            load_pretrained(net, weights, str(model_cfg.pretrained))
    stage = max(
        i for i, info in enumerate(nisp_net.feature_info) if info["reduction"] <= NISP_MAX_REDUCTION
    )
    model = TwoBranchModel(
        vis,
        NispFeatures(nisp_net, stage),
        model_cfg.drop_rate,
        model_cfg.head_hidden,
        n_outputs(model_cfg),
    )
    finish_model(model, model_cfg)
    return model
