"""The paper's recipe in the shipped configs and in training: its Table I rows, its schedule's
end points, L2 as a penalty (not AdamW's decoupled decay), and its two batch-norm methods."""

from __future__ import annotations

import math
from itertools import pairwise

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lensfinder.config import InputConfig, ModelConfig, TrainConfig, load_config
from lensfinder.errors import ConfigError
from lensfinder.experiments.table1 import PAPER_TABLE1, paper_bn_method
from lensfinder.models.batchnorm import batchnorm_layers
from lensfinder.models.factory import create_model
from lensfinder.testing import TINY_INPUT, TINY_MODEL
from lensfinder.train.module import LensClassifier, regularisation
from lensfinder.train.training import check_config, plateau_callback

# The paper's Table I as REFERENCE.md copies it: D4, balanced, starting batch, epochs, L2,
# highest AUROC, BN method.
PAPER = {
    1: (False, False, 128, 10, 0.0, 0.70, "1"),
    2: (False, True, 128, 10, 0.0, 0.70, "1"),
    3: (False, True, 8, 5, 0.0, 0.74, "1"),
    4: (False, True, 4, 5, 0.0, 0.74, "1"),
    5: (False, True, 128, 4, 1e-4, 0.64, "1"),
    6: (False, False, 8, 1, 0.0, 0.72, "1"),
    7: (True, True, 8, 10, 1e-4, 0.83, "1"),
    8: (True, True, 8, 10, 0.0, 0.94, "2"),
}


@pytest.mark.parametrize("row", sorted(PAPER))
def test_table1_configs_are_the_papers_rows(row):
    d4, balanced, batch, epochs, l2, auroc, method = PAPER[row]
    cfg = load_config(TrainConfig, f"table1-model{row}")
    check_config(cfg)
    assert (cfg.augment_d4, cfg.balanced_sampler) == (d4, balanced)
    assert (cfg.batch_size, cfg.max_epochs) == (batch, epochs)
    assert cfg.weight_decay == l2 and cfg.optimizer in ("adam", "sgd")  # a true L2 penalty
    assert paper_bn_method(cfg) == method
    assert cfg.input.bands == ("VIS", "Y", "J", "H") and cfg.model.pretrained == "imagenet"
    # the paper's schedule: lr 0.01 at the start, batch growing to 128 and lr falling to 1e-9
    assert cfg.lr == 0.01 and cfg.batch_growth and cfg.batch_size_max == 128
    assert cfg.lr_schedule == "plateau" and cfg.lr_min == 1e-9 and cfg.plateau_patience == 1
    assert cfg.lr * cfg.lr_factor**7 == pytest.approx(1e-9)  # reachable in 7 of 9 plateaus
    paper = PAPER_TABLE1[row]
    assert (paper.batch_size, paper.epochs, paper.auroc) == (batch, epochs, auroc)


class TrainingSeen(pl.Callback):
    """Per epoch, what the training loop used: optimiser, lr, weight decays, and each batch's
    (size, lenses)."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        optimizer = trainer.optimizers[0]
        self.epochs.append(
            {
                "optimizer": type(optimizer),
                "lr": optimizer.param_groups[0]["lr"],
                "decay": {group["weight_decay"] for group in optimizer.param_groups},
                "batches": [],
            }
        )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        labels = batch[-1]
        self.epochs[-1]["batches"].append((len(labels), int(labels.sum())))


def test_row4_trains_at_batch_4_for_5_epochs_with_balanced_batches(tiny_store, tmp_path):
    """What training builds from table1-model4 (on the test network at 32 px, 8 samples an
    epoch, the stop rule off): Adam at lr 0.01 without L2 for 5 epochs, batches of 4 that are
    half lenses, the batch doubling exactly when a plateau divides the lr by 10."""
    from lensfinder.train import train

    cfg = load_config(
        TrainConfig,
        "table1-model4",
        input={"size": TINY_INPUT.size},
        model={"arch": TINY_MODEL.arch, "pretrained": None},
        split={"seed": 0, "test_fraction": 0.1, "val_fraction": 0.3},
        max_train_samples=8,
        stop_auroc_drop=1.0,
        num_workers=0,
        devices=1,
        accelerator="cpu",
    )
    seen = TrainingSeen()
    train(cfg, tiny_store, tmp_path / "run", progress=False, callbacks=[seen])
    epochs = seen.epochs
    assert len(epochs) == 5
    assert all(e["optimizer"] is torch.optim.Adam and e["decay"] == {0.0} for e in epochs)
    assert epochs[0]["lr"] == pytest.approx(0.01) and epochs[0]["batches"][0][0] == 4
    sizes = []
    for epoch in epochs:
        (size,) = {n for n, _ in epoch["batches"]}  # one batch size per epoch
        assert all(lenses * 2 == n for n, lenses in epoch["batches"])  # balanced
        sizes.append(size)
    assert sizes[-1] > sizes[0]  # plateaus came and grew the batch
    for (before, b), (after, a) in pairwise(zip(epochs, sizes, strict=True)):
        plateau = a == 2 * b
        assert plateau or a == b
        assert after["lr"] == pytest.approx(before["lr"] * (0.1 if plateau else 1.0))


def test_method2_row_never_reinitialises_and_method1_keeps_gamma_beta():
    row8 = load_config(TrainConfig, "table1-model8").model
    assert not row8.bn_reinit and row8.bn_inference == "batch" and row8.bn_inference_batch == 8
    for row in range(1, 8):
        model = load_config(TrainConfig, f"table1-model{row}").model
        assert model.bn_reinit and not model.bn_reinit_affine and model.bn_inference == "eval"


def test_side_experiments():
    frozen = load_config(TrainConfig, "paper-3band-frozen")
    assert frozen.input.bands == ("Y", "J", "H") and frozen.model.freeze_backbone
    assert paper_bn_method(frozen) == "frozen"
    instance = load_config(TrainConfig, "paper-instance-norm")
    assert instance.model.norm == "instance" and paper_bn_method(instance) == "instance norm"
    for cfg in (frozen, instance):
        check_config(cfg)


# -- L2 ----------------------------------------------------------------------------------------
class Tiny(nn.Module):
    """A small conv net with BN, standing in for the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(2, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(), nn.Linear(8, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def weight_norm_after_training(**train: object) -> float:
    """The norm of the multi-dimensional weights after 30 steps on fixed random data."""
    torch.manual_seed(0)
    settings = {"decoupled_weight_decay": 0.0, **train}  # the default AdamW decay: only asked
    config = TrainConfig(channels_last=False, lr=1e-2, **settings)  # type: ignore[arg-type]
    check_config(config)
    module = LensClassifier(config, model=Tiny())
    optimizer = module.configure_optimizers()["optimizer"]
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 2, 8, 8, generator=generator)
    y = (torch.rand(16, generator=generator) > 0.5).long()
    for _ in range(30):
        optimizer.zero_grad()
        loss, _, _ = module._loss((x, y))
        loss.backward()
        optimizer.step()
    weights = [p for p in module.model.parameters() if p.ndim > 1]
    return math.sqrt(sum(float((p.detach() ** 2).sum()) for p in weights))


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_l2_penalty_shrinks_weights_against_no_l2_on_the_same_seed(optimizer):
    plain = weight_norm_after_training(optimizer=optimizer, weight_decay=0.0)
    l2 = weight_norm_after_training(optimizer=optimizer, weight_decay=1.0)
    assert l2 < 0.97 * plain


def test_adamw_decay_is_decoupled_and_named_apart():
    """AdamW at lr 1e-2 and 1e-4 shrinks weights by 1e-6 a step: indistinguishable from none,
    which is why the paper's L2 cannot be AdamW's ``weight_decay``."""
    plain = weight_norm_after_training(optimizer="adamw", weight_decay=0.0)
    decoupled = weight_norm_after_training(
        optimizer="adamw", weight_decay=0.0, decoupled_weight_decay=1e-4
    )
    assert decoupled == pytest.approx(plain, rel=1e-3)
    assert "decoupled" in regularisation(
        TrainConfig(optimizer="adamw", weight_decay=0.0, decoupled_weight_decay=1e-4)
    )
    paper_l2 = TrainConfig(optimizer="adam", weight_decay=1e-4, decoupled_weight_decay=0.0)
    assert regularisation(paper_l2).startswith("L2 penalty")
    with pytest.raises(ConfigError, match=r"weight_decay 0\.0001 .*with optimizer adamw"):
        TrainConfig(optimizer="adamw", weight_decay=1e-4)
    with pytest.raises(ConfigError, match=r"decoupled_weight_decay 0\.0001 needs optimizer adamw"):
        TrainConfig(optimizer="adam", decoupled_weight_decay=1e-4)


def test_cpu_small_trains_with_adamw_decay_on_weights_and_a_cosine_schedule():
    """The optimiser and schedule training builds from cpu-small: AdamW whose decoupled decay
    1e-4 acts on the weights only (no L2 penalty), one warm-up epoch then a cosine over the 15,
    and nothing that acts on plateaus (the batch stays 32)."""
    cfg = load_config(TrainConfig, "cpu-small")
    module = LensClassifier(cfg, model=Tiny())
    built = module.configure_optimizers()
    optimizer = built["optimizer"]
    assert type(optimizer) is torch.optim.AdamW
    decay = {
        id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]
    }
    assert [decay[id(p)] for p in module.model.parameters()] == [
        1e-4 if p.ndim > 1 else 0.0 for p in module.model.parameters()
    ]
    multiplier = built["lr_scheduler"]["scheduler"].lr_lambdas[0]
    assert cfg.max_epochs == 15
    steps = [multiplier(epoch) for epoch in range(15)]
    assert steps[:2] == [0.5, 1.0] and all(a > b for a, b in pairwise(steps[1:]))
    assert steps[-1] < 0.05
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-3)  # the warm-up epoch's
    assert plateau_callback(cfg) is None
    assert regularisation(cfg).startswith("AdamW decoupled weight decay 0.0001")


# -- BN methods on the ImageNet weights -----------------------------------------------------------
@pytest.fixture(scope="module")
def pretrained() -> nn.Module:
    return create_model(ModelConfig(), InputConfig(size=32))


def bn_state(model: nn.Module) -> list[tuple[torch.Tensor, ...]]:
    return [
        (m.running_mean, m.running_var, m.num_batches_tracked, m.weight, m.bias)
        for m in batchnorm_layers(model)
    ]


def test_method1_resets_statistics_and_keeps_pretrained_gamma_beta(pretrained):
    reset = create_model(ModelConfig(bn_reinit=True), InputConfig(size=32))
    changed_stats = 0
    for (mean0, _, _, w0, b0), (mean, var, count, w, b) in zip(
        bn_state(pretrained), bn_state(reset), strict=True
    ):
        assert torch.all(mean == 0) and torch.all(var == 1) and count == 0
        torch.testing.assert_close(w, w0)  # gamma and beta stay pretrained
        torch.testing.assert_close(b, b0)
        changed_stats += int(not torch.all(mean0 == 0))
    assert changed_stats > 10  # the ImageNet statistics were really there to discard


def test_method1_with_affine_resets_gamma_beta_too(pretrained):
    reset = create_model(ModelConfig(bn_reinit=True, bn_reinit_affine=True), InputConfig(size=32))
    for _, _, _, w, b in bn_state(reset):
        assert torch.all(w == 1) and torch.all(b == 0)
    with pytest.raises(ConfigError, match=r"bn_reinit_affine needs model\.bn_reinit"):
        create_model(ModelConfig(bn_reinit_affine=True), InputConfig(size=32))


def test_method2_never_reinitialises(pretrained):
    model = load_config(TrainConfig, "table1-model8", input={"size": 32}).model
    method2 = create_model(model, InputConfig(size=32))
    for before, after in zip(bn_state(pretrained), bn_state(method2), strict=True):
        for a, b in zip(before, after, strict=True):
            assert torch.equal(a, b)


def test_adam_weight_decay_is_the_gradient_of_an_l2_penalty():
    """One step with Adam's ``weight_decay`` (the Table I configs') = one step without it on
    ``loss + coef/2 |w|^2``: the L2 the paper meant. (AdamW's decay, the old meaning here, fails
    this: it bypasses Adam's gradient normalisation.)"""
    coef = 0.5

    def one_step(weight_decay: float, explicit: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        module = LensClassifier(
            TrainConfig(
                channels_last=False,
                optimizer="adam",
                weight_decay=weight_decay,
                decoupled_weight_decay=0.0,
            ),
            model=Tiny(),
        )
        optimizer = module.configure_optimizers()["optimizer"]
        x, y = torch.randn(8, 2, 8, 8), torch.tensor([0, 1] * 4)
        loss, _, _ = module._loss((x, y))
        if explicit:
            weights = [p for p in module.model.parameters() if p.ndim > 1]
            loss = loss + coef / 2 * sum((p**2).sum() for p in weights)
        loss.backward()
        optimizer.step()
        return [p.detach().clone() for p in module.model.parameters()]

    paper = [load_config(TrainConfig, f"table1-model{row}") for row in PAPER]
    assert {(c.optimizer, c.decoupled_weight_decay) for c in paper} == {("adam", 0.0)}
    for a, b in zip(one_step(coef, False), one_step(0.0, True), strict=True):
        torch.testing.assert_close(a, b)
