"""The LightningModule: the paper's loss, optimiser, L2 and learning-rate schedule around one
classifier that returns a logit per cutout."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import nn
from torch.nn import functional as F
from torchmetrics.classification import BinaryAUROC
from torchvision.ops import sigmoid_focal_loss

from lensfinder.config import MODEL_FILE_LEGACY, TrainConfig, to_dict
from lensfinder.data.transforms import map_input
from lensfinder.errors import ConfigError
from lensfinder.models.batchnorm import bn_train_mode
from lensfinder.models.checkpoint import load_model
from lensfinder.models.factory import create_model
from lensfinder.train.arc_maps import ArcMapHead, split_arc

Batch = tuple[Any, torch.Tensor]
Outputs = tuple[torch.Tensor, torch.Tensor | None]  # logits (n,), theta_E (n, 2) or None


def split_targets(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch's targets: labels ``(n,)``, and theta_E ``(n,)`` (arcsec, NaN where unknown) when
    the dataset adds it as a second column (``CutoutDataset(theta_e=True)``)."""
    y = y.float()
    if y.dim() == 2 and y.shape[1] == 2:
        return y[:, 0], y[:, 1]
    return y.reshape(-1), None


def theta_e_nll(
    prediction: torch.Tensor, theta_e: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """The Gaussian negative log-likelihood of theta_E (arcsec), ``log sigma + (t - mu)^2 /
    (2 sigma^2)`` (the constant dropped), averaged over the lenses with a finite target.

    Masked, not filtered: every other row (non-lenses, whatever their catalogue's ``ein_area``;
    lenses without a radius) has its target replaced by the prediction itself before the
    arithmetic and a weight of exactly 0, so it adds nothing to the loss or any gradient and a
    NaN target cannot leak in. 0 when the batch has no such lens.

    Linear, not log, scale: the challenge scored Einstein radii by their squared error in arcsec
    and the goal is an RMS error in arcsec, so the predicted mean is the one that minimises that,
    and mean +- sigma is the 68% interval in the units a catalogue shows.
    """
    mean, sigma = prediction[:, 0].float(), prediction[:, 1].float()
    use = (labels == 1) & torch.isfinite(theta_e)
    target = torch.where(use, theta_e, mean.detach())
    per_row = torch.log(sigma) + 0.5 * ((target - mean) / sigma) ** 2
    weight = use.float()
    return (per_row * weight).sum() / weight.sum().clamp(min=1.0)


def lr_multiplier(epoch: int, warmup_epochs: int, max_epochs: int, shape: str) -> float:
    """The epoch schedule as a multiple of the base lr: linear warmup over ``warmup_epochs``, then
    constant (``"plateau"``/``"constant"``; plateaus lower the base lr elsewhere) or a cosine decay
    to zero at ``max_epochs`` (``"cosine"``)."""
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    if shape != "cosine":
        return 1.0
    span = max(max_epochs - warmup_epochs, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(epoch - warmup_epochs, span) / span))


def epoch_schedule(config: TrainConfig) -> Callable[[int], float]:
    """``lr_multiplier`` for ``config``'s warm-up, epochs and shape: the LambdaLR of a run, also
    set again when a time budget re-plans its epochs."""
    return functools.partial(
        lr_multiplier,
        warmup_epochs=config.warmup_epochs,
        max_epochs=config.max_epochs,
        shape=config.lr_schedule,
    )


def to_channels_last(x: Any) -> Any:
    """Channels-last for 4-D image tensors (also inside a two-branch tuple); others unchanged."""
    if isinstance(x, torch.Tensor):
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
    if isinstance(x, tuple | list):
        return type(x)(to_channels_last(t) for t in x)
    return x


def resized_input(x: Any, size: int, full: int, method: str = "resample") -> Any:
    """``x`` at ``size`` of ``full`` pixels across, each tensor of a two-branch pair by the same
    factor: "resample" the whole field (antialiased bilinear, as torchvision's Resize) or "crop"
    its centre at the native scale. Progressive resizing's early epochs: a smaller image costs a
    fraction of the step."""

    def resize(t: torch.Tensor) -> torch.Tensor:
        shape = [max(1, round(n * size / full)) for n in t.shape[-2:]]
        if method == "crop":
            (top, left) = ((n - m) // 2 for n, m in zip(t.shape[-2:], shape, strict=True))
            return t[..., top : top + shape[0], left : left + shape[1]]
        return F.interpolate(t, size=shape, mode="bilinear", antialias=True, align_corners=False)

    return map_input(x, resize)


def zero_head(model: nn.Module) -> bool:
    """Zero the last linear layer of a one-logit model's head, so training starts at p = 0.5.

    timm initialises a one-output classifier uniformly in [-1, 1] (its range is 1/sqrt(fan_out)),
    which on 1280 pretrained features gives logits of std ~9: the first epochs are then spent
    undoing confident random predictions, and their large gradients damage the pretrained
    features. Returns False for a model without ``head_modules``.
    """
    heads = getattr(model, "head_modules", None)
    linears = (
        [m for head in heads() for m in head.modules() if isinstance(m, nn.Linear)] if heads else []
    )
    if not linears:
        return False
    with torch.no_grad():
        linears[-1].weight.zero_()
        if linears[-1].bias is not None:
            linears[-1].bias.zero_()
    return True


def classification_loss(focal_gamma: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The lens/non-lens loss on logits: BCE, or with ``focal_gamma`` > 0 the focal loss
    (BCE x (1 - p_t)^gamma, torchvision's, no class weight: the balanced sampler already evens
    the classes), averaged over the batch."""
    if not focal_gamma:
        return nn.BCEWithLogitsLoss()
    return functools.partial(sigmoid_focal_loss, alpha=-1, gamma=focal_gamma, reduction="mean")


class LensClassifier(pl.LightningModule):
    """Binary lens classifier: BCE on logits (the paper's ``log(1 + exp(-x y))`` with y = +-1;
    the focal loss with ``focal_gamma``), Adam, AdamW or Nesterov SGD (see ``make_optimizer``
    for L2), validation AUROC every epoch.

    A frozen backbone needs nothing here: the model keeps its frozen BN layers in eval mode
    itself and only parameters with ``requires_grad`` reach the optimiser.
    Plateau-driven lr drops are not here but in ``callbacks.BatchSizeGrowth``, so that exactly one
    thing lowers the lr; this module only applies the epoch shape of ``lr_multiplier``.
    """

    def __init__(self, config: TrainConfig, model: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        if model is None:
            model = create_model(config.model, config.input)
            zero_head(model)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        # ``train.arc_maps``: the per-cell arc loss's head, hooked on the backbone (training only)
        self.arc_head = (
            ArcMapHead.attach(model, config.arc_map_stride) if config.arc_map_weight > 0 else None
        )
        self.loss_fn = classification_loss(config.focal_gamma)
        self.val_auroc = BinaryAUROC()
        # ``train.adapt.JointAdaptation`` (--adapt FIELD with dann/consistency): adds the field's
        # losses to every step; its domain head trains and checkpoints with this module.
        self.adaptation: Any = None

    def forward(self, x: Any) -> torch.Tensor:
        if self.config.channels_last:
            x = to_channels_last(x)
        return self.model(x).float().reshape(-1)

    @property
    def theta_e_head(self) -> bool:
        return bool(getattr(self.model, "theta_e_head", False))

    def outputs(self, x: Any) -> Outputs:
        """Logits and (with the Einstein-radius head) theta_E, from one forward pass."""
        if not self.theta_e_head:
            return self(x), None
        if self.config.channels_last:
            x = to_channels_last(x)
        model: Any = self.model  # a OneLogitModel with the head
        logits, theta_e = model.with_theta_e(x)  # a two-branch model takes the pair
        return logits.float().reshape(-1), theta_e.float()

    def loss_of(
        self, outputs: Outputs, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, logits, labels)``: ``classification_loss``, plus ``theta_e_weight`` x
        ``theta_e_nll`` with the head (labels without theta_E targets train the head on nothing)."""
        logits, theta_e = outputs
        labels, theta_target = split_targets(y)
        loss = self.loss_fn(logits, labels)
        if theta_e is not None and theta_target is not None:
            loss = loss + self.config.theta_e_weight * theta_e_nll(theta_e, theta_target, labels)
        return loss, logits, labels

    def _loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch
        x, arc = split_arc(x, len(self.config.input.bands))
        loss, logits, labels = self.loss_of(self.outputs(x), y)
        if arc is not None and self.arc_head is not None and self.arc_head.training:
            arc_loss = self.arc_head.loss(arc)
            self.log(
                "train_arc_loss",
                arc_loss,
                on_epoch=True,
                on_step=False,
                batch_size=len(labels),
                sync_dist=True,
            )
            loss = loss + self.config.arc_map_weight * arc_loss
        return loss, logits, labels

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Progressive resizing: the batches of the first ``low_res_epochs()`` epochs at
        ``low_res_size``, validation's too (so its AUROC tracks the network as it is trained;
        early stopping ignores those epochs); later epochs untouched."""
        config = self.config
        trainer = self._trainer  # None when the module is used outside a Trainer
        if (
            config.low_res_size is None
            or trainer is None
            or trainer.sanity_checking
            or not (trainer.training or trainer.validating)
            or self.current_epoch >= config.low_res_epochs()
        ):
            return batch
        x, y = batch
        small = resized_input(x, config.low_res_size, config.input.size, config.low_res_method)
        return small, y

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        if self.adaptation is not None:  # logs its own terms; arc maps are not among them
            x, y = batch
            plain = (split_arc(x, len(self.config.input.bands))[0], y)
            return self.adaptation.training_loss(self, plain, batch_idx)[0]
        loss, _, target = self._loss(batch)
        n = len(target)
        self.log(
            "train_loss",
            loss,
            on_epoch=True,
            on_step=False,
            prog_bar=True,
            batch_size=n,
            sync_dist=True,
        )
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if self.config.model.bn_inference == "batch":
            # Validate as the model will be used (method 2), so early stopping picks for that.

            with bn_train_mode(self.model):
                loss, logits, target = self._loss(batch)
        else:
            loss, logits, target = self._loss(batch)
        self.val_auroc.update(torch.sigmoid(logits), target.long())
        n = len(target)
        self.log("val_loss", loss, on_epoch=True, sync_dist=True, batch_size=n)
        self.log("val_auroc", self.val_auroc, on_epoch=True, prog_bar=True, batch_size=n)

    def on_train_epoch_start(self) -> None:
        self._freeze_leading_stages()
        # Same on every process; sync_dist only keeps Lightning from warning under DDP.
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.log("lr", lr, on_epoch=True, sync_dist=True)
        batch_size = getattr(self.trainer.datamodule, "train_batch_size", None)  # type: ignore[attr-defined]
        if batch_size is not None:
            self.log("batch_size", float(batch_size), on_epoch=True, sync_dist=True)

    def _freeze_leading_stages(self) -> None:
        """``frozen_stages``: the stem and first blocks without gradients while
        ``frozen_epochs()`` last (they stay in the optimiser, which skips parameters without a
        gradient, and learn again after)."""
        config = self.config
        if not config.frozen_stages:
            return
        frozen = self.current_epoch < config.frozen_epochs()
        model: Any = self.model  # a OneLogitModel
        model.set_leading_stages_trainable(config.frozen_stages, not frozen)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        config = self.config
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        if self.adaptation is not None:
            trainable += [p for p in self.adaptation.parameters() if p.requires_grad]
        if self.arc_head is not None:
            trainable += list(self.arc_head.parameters())
        if not trainable:
            raise ValueError("the model has no trainable parameters")
        optimizer = make_optimizer(config, trainable)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, epoch_schedule(config))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }


def regularisation(config: TrainConfig) -> str:
    """What ``weight_decay`` / ``decoupled_weight_decay`` do in this run, in words (model.json)."""
    if config.optimizer == "adamw":
        if config.decoupled_weight_decay:
            return (
                f"AdamW decoupled weight decay {config.decoupled_weight_decay:g} "
                "(lr x coef x w per step; not an L2 penalty)"
            )
        return "none"
    if config.weight_decay:
        return f"L2 penalty {config.weight_decay:g} ({config.optimizer}: gradient + coef x w)"
    return "none"


def make_optimizer(config: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimiser with its regularisation on weights only (biases and normalisation scales,
    the 1-d parameters, are conventionally left free).

    ``weight_decay`` is the paper's L2 penalty: torch's Adam and SGD add ``coef * w`` to the
    gradient, exactly the gradient of ``coef / 2 * |w|^2``. AdamW's ``weight_decay`` is a
    different thing (decoupled decay, ``lr * coef * w`` per step, ~1e-7 at lr 1e-3 and 1e-4), so
    it is only reachable as ``decoupled_weight_decay``; ``check_config`` refuses the mixes.
    """
    decay = config.decoupled_weight_decay if config.optimizer == "adamw" else config.weight_decay
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    match config.optimizer:
        case "sgd":
            return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
        case "adam":
            return torch.optim.Adam(groups, lr=config.lr)
        case "adamw":
            return torch.optim.AdamW(groups, lr=config.lr)
        case other:
            raise ValueError(f"optimizer {other!r}: expected adam, adamw or sgd")


def initial_model(config: TrainConfig) -> Any:
    """The trained model of ``config.init`` to fine-tune (for the same input), or None."""
    if config.init is None:
        return None
    model, meta = load_model(config.init, expect_input=config.input)
    recorded = MODEL_FILE_LEGACY["model"] | meta["model"]
    saved = {k: v for k, v in recorded.items() if k != "pretrained"}
    wanted = {k: v for k, v in to_dict(config.model).items() if k != "pretrained"}
    if saved != wanted:
        differ = ", ".join(sorted(k for k in wanted if saved.get(k) != wanted[k]))
        raise ConfigError(f"init {config.init}: its model differs from the config's ({differ})")
    return model.train()
