"""create_model: band-adapted stems, one logit, norm variants, frozen backbone, two branches."""

from __future__ import annotations

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from lensfinder.config import InputConfig, ModelConfig
from lensfinder.errors import ConfigError
from lensfinder.models.factory import create_model
from lensfinder.models.pretrained import LITE0_ARCH, imagenet_state_dict

RANDOM_LITE0 = ModelConfig(pretrained=None)


@pytest.fixture(scope="module")
def imagenet() -> dict[str, torch.Tensor]:
    return imagenet_state_dict(LITE0_ARCH)


def test_four_band_stem_carries_pretrained_filters(imagenet):
    model = create_model(ModelConfig(), InputConfig(size=64))
    stem = model.state_dict()["backbone.conv_stem.weight"]
    rgb = imagenet["conv_stem.weight"]
    assert stem.shape == (32, 4, 3, 3)
    # adapt_input_conv: channels repeat cyclically (R, G, B, R), scaled by 3/4 so that the
    # response to a uniform input keeps its ImageNet size.
    torch.testing.assert_close(stem[:, :3], rgb * 0.75)
    torch.testing.assert_close(stem[:, 3], rgb[:, 0] * 0.75)
    torch.testing.assert_close(
        model.state_dict()["backbone.blocks.6.0.conv_pwl.weight"],
        imagenet["blocks.6.0.conv_pwl.weight"],
    )
    torch.testing.assert_close(
        model.state_dict()["backbone.bn2.running_var"], imagenet["bn2.running_var"]
    )


def test_one_band_stem_sums_rgb_filters(imagenet):
    model = create_model(ModelConfig(), InputConfig(bands=("VIS",), size=64))
    stem = model.state_dict()["backbone.conv_stem.weight"]
    torch.testing.assert_close(stem, imagenet["conv_stem.weight"].sum(dim=1, keepdim=True))


@pytest.mark.parametrize("arch", ["tf_efficientnet_lite0", "resnet18", "efficientnet_b0"])
@pytest.mark.parametrize("bands", [("VIS", "Y", "J", "H"), ("VIS",)])
def test_one_logit_per_object_also_channels_last(arch, bands):
    model = create_model(ModelConfig(arch=arch, pretrained=None), InputConfig(bands=bands, size=32))
    model.eval()
    x = torch.randn(3, len(bands), 32, 32)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (3,)
        model.to(memory_format=torch.channels_last)
        fast = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(fast, logits, atol=1e-4, rtol=1e-4)


def test_drop_rate_reaches_the_network():
    model = create_model(ModelConfig(pretrained=None, drop_rate=0.35), InputConfig(size=32))
    assert model.backbone.drop_rate == 0.35


@pytest.mark.parametrize("layout", ["stacked", "two_branch"])
def test_stochastic_depth_trains_on_random_subnetworks_and_infers_on_the_whole(layout):
    """drop_path_rate skips residual blocks per sample in training only: a model file with it
    scores exactly as one without it (the same weights), while its training passes vary."""
    cfg = InputConfig(size=32, layout=layout)
    deep = create_model(ModelConfig(pretrained=None, drop_rate=0.0, drop_path_rate=0.5), cfg)
    plain = create_model(ModelConfig(pretrained=None, drop_rate=0.0), cfg)
    rates = [m.drop_prob for m in deep.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.5, abs=0.05)  # grows to the rate at the end
    assert not any(type(m).__name__ == "DropPath" for m in plain.modules())
    plain.load_state_dict(deep.state_dict())
    x = (
        (torch.randn(4, 1, 32, 32), torch.randn(4, 3, 66, 66))
        if layout == "two_branch"
        else (torch.randn(4, 4, 32, 32))
    )
    with torch.no_grad():
        torch.testing.assert_close(deep.eval()(x), plain.eval()(x))
        deep.train()
        torch.manual_seed(0)
        first = deep(x)
        assert not torch.allclose(first, deep(x))
    with pytest.raises(ConfigError, match="drop_path_rate"):
        ModelConfig(drop_path_rate=1.0)


def test_instance_norm_variant_has_no_batchnorm_and_ignores_the_batch(imagenet):
    model = create_model(ModelConfig(norm="instance"), InputConfig(size=64))
    assert not any(isinstance(m, _BatchNorm) for m in model.modules())
    # The pretrained affine parameters and the fused activation survive the swap.
    stem_norm = model.backbone.bn1
    torch.testing.assert_close(stem_norm.weight.detach(), imagenet["bn1.weight"])
    assert isinstance(stem_norm.act, torch.nn.ReLU6)
    # Even in training mode each object is normalised on its own (float64: no rounding noise).
    model.double().train()
    model.backbone.drop_rate = 0.0
    x = torch.randn(4, 4, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x[:1]), model(x)[:1])


def test_bn_reinit_resets_statistics_but_keeps_convolutions(imagenet):
    model = create_model(ModelConfig(bn_reinit=True), InputConfig(size=64))
    state = model.state_dict()
    assert torch.all(state["backbone.bn1.running_mean"] == 0)
    assert torch.all(state["backbone.blocks.3.1.bn2.running_var"] == 1)
    torch.testing.assert_close(state["backbone.bn2.weight"], imagenet["bn2.weight"])  # gamma kept
    torch.testing.assert_close(
        state["backbone.blocks.3.1.conv_pw.weight"], imagenet["blocks.3.1.conv_pw.weight"]
    )


def test_frozen_backbone_trains_only_the_head():
    model = create_model(ModelConfig(freeze_backbone=True), InputConfig(size=32))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"backbone.classifier.weight", "backbone.classifier.bias"}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert model.frozen_backbone and not model.backbone.bn1.training
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x, y = torch.randn(4, 4, 32, 32), torch.tensor([0.0, 1.0, 0.0, 1.0])
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
    loss.backward()
    optimiser.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # BN running statistics are buffers: they would change in train mode if BN were not kept in
    # eval; the head's weights must change.
    assert changed == {"backbone.classifier.weight", "backbone.classifier.bias"}


def test_bad_configs_are_one_line_errors():
    with pytest.raises(ConfigError, match="not a timm"):
        create_model(ModelConfig(arch="efficientnet_b99", pretrained=None), InputConfig())
    with pytest.raises(ConfigError, match="distinct bands"):
        create_model(RANDOM_LITE0, InputConfig(bands=("VIS", "K")))
    with pytest.raises(ConfigError, match=r"is 1x1 \(stride 32\)"):
        create_model(ModelConfig(pretrained=None, norm="instance"), InputConfig(size=32))
    with pytest.raises(ConfigError, match=r"bn_reinit with model\.freeze_backbone"):
        create_model(ModelConfig(bn_reinit=True, freeze_backbone=True), InputConfig(size=32))
    with pytest.raises(ConfigError, match="two_branch"):
        create_model(RANDOM_LITE0, InputConfig(bands=("VIS",), layout="two_branch"))


def test_two_branch_shape_and_gradients_reach_both_branches(imagenet):
    model = create_model(ModelConfig(drop_rate=0.0), InputConfig(size=64, layout="two_branch"))
    torch.testing.assert_close(
        model.vis.conv_stem.weight.detach(), imagenet["conv_stem.weight"].sum(1, keepdim=True)
    )
    torch.testing.assert_close(
        model.nisp.net.conv_stem.weight.detach(), imagenet["conv_stem.weight"]
    )
    vis, nisp = torch.randn(3, 1, 64, 64), torch.randn(3, 3, 66, 66)
    model.train()
    logits = model((vis, nisp))
    assert logits.shape == (3,)
    logits.sum().backward()
    for stem in (model.vis.conv_stem, model.nisp.net.conv_stem):
        assert stem.weight.grad is not None and stem.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        pair = model((vis, nisp))
        model.to(memory_format=torch.channels_last)
        two_args = model(
            vis.contiguous(memory_format=torch.channels_last),
            nisp.contiguous(memory_format=torch.channels_last),
        )
    torch.testing.assert_close(two_args, pair, atol=1e-4, rtol=1e-4)


def test_two_branch_frozen_backbone_trains_only_the_mlp():
    model = create_model(
        ModelConfig(pretrained=None, freeze_backbone=True),
        InputConfig(size=32, layout="two_branch"),
    )
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head"}


def test_two_branch_at_native_resolution_takes_the_cut_nisp_field(tiny_store):
    """Native sampling hands the NISP branch a 34 px cut-out (10" field): the model runs on it."""
    from lensfinder.data.store import open_store
    from lensfinder.data.transforms import to_model_input

    cfg = InputConfig(size=64, layout="two_branch", vis_sampling="native")
    cutouts = open_store(tiny_store).read(range(2))
    vis, nisp = to_model_input(cutouts.vis, cutouts.nisp, cfg)
    assert vis.shape == (2, 1, 64, 64) and nisp.shape[-1] < 66
    model = create_model(ModelConfig(pretrained=None, drop_rate=0.0), cfg).eval()
    with torch.no_grad():
        logits = model((vis, nisp))
    assert logits.shape == (2,) and torch.isfinite(logits).all()
