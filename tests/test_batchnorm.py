"""The paper's BN methods: 1 (re-initialise), 2 (batch statistics at inference), instance norm."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lensfinder.config import InputConfig, ModelConfig
from lensfinder.models.batchnorm import (
    batchnorm_layers,
    bn_train_mode,
    convert_to_instance_norm,
    leading_batchnorm_layers,
    reinit_batchnorm,
)
from lensfinder.models.factory import create_model


@pytest.fixture()
def model() -> torch.nn.Module:
    """A small random lite0 whose BN statistics are not at their initial values."""
    net = create_model(ModelConfig(pretrained=None), InputConfig(bands=("VIS", "Y"), size=32))
    with torch.no_grad():
        for layer in batchnorm_layers(net):
            layer.running_mean.normal_(0, 0.1)
            layer.running_var.uniform_(0.5, 2.0)
    return net.eval()


def batches(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two batches of 8 sharing their first object."""
    generator = torch.Generator().manual_seed(seed)
    first = torch.randn(8, 2, 32, 32, generator=generator)
    second = torch.randn(8, 2, 32, 32, generator=generator) * 3 + 1
    second[0] = first[0]
    return first, second


def test_method2_scores_depend_on_the_batch_eval_scores_do_not(model):
    first, second = batches()
    with torch.no_grad():
        eval_a, eval_b = model(first)[0], model(second)[0]
        with bn_train_mode(model):
            batch_a, batch_b = model(first)[0], model(second)[0]
    torch.testing.assert_close(eval_a, eval_b)  # eval / method 1: the object alone counts
    assert abs(batch_a - batch_b) > 1e-3  # method 2: the other members of the batch count
    assert abs(batch_a - eval_a) > 1e-3


def test_bn_train_mode_leaves_statistics_and_modes_unchanged(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first, _ = batches()
    with torch.inference_mode(), bn_train_mode(model):
        assert all(layer.training for layer in batchnorm_layers(model))
        assert not model.training  # dropout and the rest stay in eval
        model(first)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # num_batches_tracked too
    assert not any(layer.training for layer in batchnorm_layers(model))
    assert all(layer.track_running_stats for layer in batchnorm_layers(model))


def test_bn_train_mode_restores_state_after_an_error(model):
    with pytest.raises(RuntimeError), bn_train_mode(model):
        model(torch.randn(2, 5, 32, 32))  # wrong band count
    assert not any(layer.training for layer in batchnorm_layers(model))
    assert all(layer.track_running_stats for layer in batchnorm_layers(model))


@pytest.mark.parametrize("affine", [False, True])
def test_reinit_resets_statistics_and_affine_parameters_only_if_asked(model, affine):
    with torch.no_grad():
        for layer in batchnorm_layers(model):
            layer.weight.uniform_(0.5, 2.0)
            layer.bias.normal_()
            layer.num_batches_tracked.fill_(7)
    layers = batchnorm_layers(model)
    gammas = [layer.weight.detach().clone() for layer in layers]
    assert reinit_batchnorm(model, affine=affine) == len(layers) > 10
    for layer, gamma in zip(layers, gammas, strict=True):
        assert torch.all(layer.running_mean == 0) and torch.all(layer.running_var == 1)
        assert layer.num_batches_tracked == 0
        if affine:
            assert torch.all(layer.weight == 1) and torch.all(layer.bias == 0)
        else:
            assert torch.equal(layer.weight, gamma) and not torch.all(layer.bias == 0)


def test_convert_to_instance_norm_replaces_every_batchnorm(model):
    count = len(batchnorm_layers(model))
    weight = model.backbone.bn2.weight.detach().clone()
    assert convert_to_instance_norm(model) == count
    assert not any(isinstance(m, _BatchNorm) for m in model.modules())
    assert all(
        not m.track_running_stats for m in model.modules() if hasattr(m, "track_running_stats")
    )
    torch.testing.assert_close(model.backbone.bn2.weight.detach(), weight)
    assert isinstance(model.backbone.bn2.act, torch.nn.ReLU6)  # lite0's fused activation kept


def test_leading_batchnorm_layers_takes_the_same_share_of_each_branch():
    """Two branches (as the two-branch VIS/NISP network) each give their own first layers."""

    def branch(n: int) -> nn.Sequential:
        return nn.Sequential(*[nn.BatchNorm2d(2) for _ in range(n)])

    model = nn.Module()
    model.vis, model.nisp, model.head = branch(8), branch(4), nn.Linear(2, 1)
    chosen = leading_batchnorm_layers(model, 0.25)
    assert chosen == [model.vis[0], model.vis[1], model.nisp[0]]
    assert leading_batchnorm_layers(model, 1.0) == [*model.vis, *model.nisp]
