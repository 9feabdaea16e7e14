"""Learning from a survey's unlabelled cutouts: ``lensfinder train ... --adapt FIELD``.

A network trained on simulations meets real cutouts whose statistics differ (noise texture, PSF,
galaxy morphologies, flux units). The field a user wants to search is at hand, unlabelled; this
module lets training see it without ever reading a label of it:

- ``adabn`` (Li et al. 2016, "Revisiting batch normalization for practical domain adaptation"):
  after training, every batch-norm layer's running mean and variance are recomputed as a plain
  average over the field's cutouts (all D4 views), the model otherwise frozen. Free, and the
  baseline: measured on independent data it lifted AUROC 0.878 -> 0.907 (issue 20).
- ``dann`` (Ganin et al. 2016, "Domain-adversarial training of neural networks"): a small domain
  head tells simulation from field on the pooled features, behind a gradient-reversal layer, so
  the features learn to make the two indistinguishable while the classifier learns the labels.
- ``consistency`` (FixMatch, Sohn et al. 2020, with a D4 teacher): field cutouts on which the
  model, averaged over D4 views, is confident become pseudo-labelled targets for a random view.

Methods combine ("dann+adabn"); AdaBN always runs last. Joint methods draw one field batch per
training step next to the labelled batch (``field_batch_fraction`` of its size).

Labels: ``open_unlabelled`` (data.source) reads a layout without its catalogue and wraps any
source in ``UnlabelledSource``, whose labels are all -1 and whose catalogue is empty;
``FieldCutouts`` then holds only model inputs. Nothing downstream of it can reach a label of
the field.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lensfinder.config import (
    ADAPT_METHODS,
    AdaptConfig,
    InputConfig,
    TrainConfig,
    adapt_method_names,
    to_dict,
)
from lensfinder.data.augment import N_ELEMENTS, apply_d4, apply_d4_per_sample
from lensfinder.data.cutouts import CutoutSource
from lensfinder.data.dataset import CutoutDataset, tensors
from lensfinder.data.identity import data_record
from lensfinder.data.source import is_store, open_unlabelled
from lensfinder.data.store import pack
from lensfinder.data.transforms import ModelInput, map_input
from lensfinder.ensemble import is_ensemble, member_dir, read_ensemble, write_ensemble
from lensfinder.errors import ConfigError, DataError
from lensfinder.models.batchnorm import (
    batchnorm_layers,
    batchnorm_statistics,
    bn_train_mode,
    leading_batchnorm_layers,
    restore_batchnorm_statistics,
)
from lensfinder.models.checkpoint import input_config, load_model, save_model
from lensfinder.predict.predictor import average_logits
from lensfinder.safety import ENSEMBLE, TRAIN
from lensfinder.simulate.inject import inject
from lensfinder.stages import run_stage
from lensfinder.train.datamodule import epoch_seed
from lensfinder.train.module import to_channels_last

JOINT_METHODS = ("dann", "consistency")


# -- settings ----------------------------------------------------------------------------------
def adapt_methods(adapt: AdaptConfig) -> tuple[str, ...]:
    """The methods ``adapt.method`` names, AdaBN last; () when there is no field or "none"."""
    if adapt.field is None:
        return ()
    names = adapt_method_names(adapt.method)  # checked when the config was made
    return tuple(m for m in ADAPT_METHODS if m in names and m != "adabn") + (
        ("adabn",) if "adabn" in names else ()
    )


# -- lenses painted on the field ---------------------------------------------------------------
PAINTED_LAYOUT = "field-painted"  # inside the run (or ensemble) directory
PAINTED_STORE = "field-painted.zarr"


def painted_store_path(config: TrainConfig, run_dir: str | Path) -> Path | None:
    """Where ``adapt.paint_lenses`` keeps the painted field of a run; None when not asked."""
    if config.adapt.field is None or not config.adapt.paint_lenses:
        return None
    return Path(run_dir) / PAINTED_STORE


def painted_record(config: TrainConfig, painted: CutoutSource) -> dict[str, Any]:
    """model.json's ``adapt.painted``: the painted set trained on, its classes, its settings."""
    labels = np.asarray(painted.labels)
    return {
        "painted": {
            **data_record(painted),
            "lenses": int((labels == 1).sum()),
            "nonlenses": int((labels == 0).sum()),
            "settings": to_dict(config.adapt.paint),
        }
    }


def paint_field(config: TrainConfig, run_dir: str | Path, progress: bool = True) -> Path | None:
    """``adapt.paint_lenses``: lenses painted on the field's own galaxies (``inject``, which
    never reads the field's labels), packed into the run directory; returns the store to train
    on beside the labelled data (None when not asked). Resumes: painted objects and a complete
    store are kept."""
    store = painted_store_path(config, run_dir)
    if store is None:
        return None
    # simulate/ (lenstronomy) is loaded only by runs that paint

    assert config.adapt.field is not None
    layout = Path(run_dir) / PAINTED_LAYOUT
    inject(config.adapt.field, layout, config.adapt.paint, progress=progress)
    pack(layout, store, label_rule=config.adapt.paint.label_rule, progress=progress)
    return store


# -- the field, without labels -----------------------------------------------------------------
class FieldCutouts:
    """Model inputs of (a seeded subset of) the field, computed once by the training pipeline
    (``CutoutDataset`` over the label-free source, ``to_model_input``); no labels anywhere.

    Unreadable cutouts are dropped and counted (``n_skipped``), as are a layout's objects with a
    band missing (``n_problems``).
    """

    def __init__(
        self, path: str | Path, input_cfg: InputConfig, adapt: AdaptConfig, progress: bool = False
    ) -> None:
        source = open_unlabelled(path)
        self.path = Path(path)
        self.kind = "store" if is_store(path) else "layout"
        self.n_field = len(source)
        self.n_problems = len(source.problems)
        wanted = np.arange(len(source))
        if adapt.max_cutouts is not None and len(wanted) > adapt.max_cutouts:
            rng = np.random.default_rng(adapt.seed)
            wanted = np.sort(rng.choice(wanted, size=adapt.max_cutouts, replace=False))
        dataset = CutoutDataset(source, wanted, input_cfg, augment=False, progress=progress)
        self.n_skipped = dataset.skipped
        if len(dataset) < 2:
            raise DataError(
                f"{path}: {len(dataset)} usable field cutout(s) ({dataset.skipped} unreadable); "
                "adaptation needs at least 2"
            )
        began = time.perf_counter()
        dataset.precompute(progress=progress)
        self.prepare_seconds = time.perf_counter() - began
        assert dataset.inputs is not None
        self.inputs: ModelInput = dataset.inputs  # the only thing kept of the dataset
        self.fingerprint = source.content_fingerprint()

    def __len__(self) -> int:
        return len(tensors(self.inputs)[0])

    def batch(self, size: int, generator: torch.Generator) -> ModelInput:
        """``size`` random cutouts, each under a random D4 element (as training augments)."""
        rows = torch.randint(len(self), (size,), generator=generator).tolist()
        ks = torch.randint(N_ELEMENTS, (size,), generator=generator).tolist()
        return d4_batch(self.inputs, ks, rows)

    def view_batches(
        self, batch_size: int, views: int, generator: torch.Generator
    ) -> Iterator[ModelInput]:
        """Every cutout under ``views`` D4 elements (all 8, or that many random ones each), in
        batches of ``batch_size`` cutouts of one view round."""
        for lo in range(0, len(self), batch_size):
            rows = list(range(lo, min(lo + batch_size, len(self))))
            for view in range(views):
                if views == N_ELEMENTS:
                    ks = [view] * len(rows)
                else:
                    ks = torch.randint(N_ELEMENTS, (len(rows),), generator=generator).tolist()
                yield d4_batch(self.inputs, ks, rows)

    def record(self) -> dict[str, Any]:
        """What model.json keeps about the field (its labels are not part of it)."""
        return {
            "field": str(self.path.resolve()),
            "field_kind": self.kind,
            "field_fingerprint": self.fingerprint,
            "n_field": self.n_field,
            "n_used": len(self),
            "n_skipped": self.n_skipped,
            "n_problems": self.n_problems,
        }


def d4_batch(x: ModelInput, ks: list[int], rows: list[int] | None = None) -> ModelInput:
    """Sample ``i`` (or ``rows[i]``) of ``x`` under D4 element ``ks[i]``, in both branches."""
    return map_input(x, functools.partial(apply_d4_per_sample, ks=ks, rows=rows))


def to_device(x: ModelInput, device: torch.device) -> ModelInput:
    return map_input(x, lambda t: t.to(device, non_blocking=True))


# -- AdaBN -------------------------------------------------------------------------------------
def recompute_batchnorm(
    model: nn.Module,
    field: FieldCutouts,
    views: int = N_ELEMENTS,
    batch_size: int = 64,
    seed: int = 0,
    channels_last: bool = False,
    depth: float = 1.0,
) -> dict[str, Any]:
    """AdaBN: the running mean and variance of the leading ``depth`` share of the BN layers
    (of each backbone, forward order; 1.0: every one) become the plain average of the field's
    batch statistics; nothing else changes (no gradient, dropout off, weights and the later
    layers' statistics kept).

    Returns what was done, for model.json.
    """
    every = batchnorm_layers(model)
    if not every:
        return {"layers": 0, "batches": 0}
    layers = leading_batchnorm_layers(model, depth)  # 1.0: every one
    saved = [(layer, layer.momentum) for layer in layers]
    was_training = model.training
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    batches = 0
    began = time.perf_counter()
    model.eval()
    try:
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None  # a cumulative average over every batch, equally weighted
            layer.train()
        with torch.no_grad():
            for x in field.view_batches(batch_size, views, generator):
                x = to_device(x, device)
                model(to_channels_last(x) if channels_last else x)
                batches += 1
    finally:
        for layer, momentum in saved:
            layer.momentum = momentum
        model.train(was_training)
    return {
        "layers": len(layers),
        "of_layers": len(every),
        "batches": batches,
        "views": views,
        "cutouts": len(field),
        "seconds": round(time.perf_counter() - began, 2),
    }


# -- joint methods -----------------------------------------------------------------------------
class _ReverseGradient(torch.autograd.Function):
    """Identity forward; the gradient times ``-scale`` backward (Ganin et al. 2016)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    return _ReverseGradient.apply(x, scale)


def ramp(progress: float) -> float:
    """0 -> 1 as training progresses 0 -> 1: ``2 / (1 + exp(-10 p)) - 1`` (Ganin et al.)."""
    return 2.0 / (1.0 + math.exp(-10.0 * min(max(progress, 0.0), 1.0))) - 1.0


def feature_layer(model: nn.Module) -> nn.Linear:
    """The first linear layer of the model's head: its input is the pooled feature vector."""
    heads = getattr(model, "head_modules", None)
    linears = [m for h in heads() for m in h.modules() if isinstance(m, nn.Linear)] if heads else []
    if not linears:
        raise ConfigError(f"adapt: {type(model).__name__} has no linear head to take features from")
    return linears[0]


class JointAdaptation(nn.Module):
    """The field's part of every training step (``dann``, ``consistency``), and the domain head.

    Part of the LightningModule, so the domain head trains with the same optimiser and resumes
    from ``last.ckpt``; it is not part of the saved model (only ``module.model`` is).
    """

    def __init__(
        self,
        adapt: AdaptConfig,
        methods: tuple[str, ...],
        field: FieldCutouts,
        model: nn.Module,
        seed: int,
    ) -> None:
        super().__init__()
        self.adapt = adapt
        self.methods = tuple(m for m in methods if m in JOINT_METHODS)
        self.field = field
        self.seed = seed
        self._features: list[torch.Tensor] = []
        self._generator: torch.Generator | None = None
        width = feature_layer(model).in_features
        self.domain_head = (
            nn.Sequential(
                nn.Linear(width, adapt.dann_hidden), nn.ReLU(), nn.Linear(adapt.dann_hidden, 1)
            )
            if "dann" in self.methods
            else None
        )

    def _capture(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._features.append(args[0])

    def _forward_with_features(
        self, lit: Any, x: ModelInput, call: Any = None
    ) -> tuple[Any, torch.Tensor]:
        """Logits of ``x`` (or what ``call``, e.g. ``lit.outputs``, returns) and the pooled
        features they were computed from."""
        handle = feature_layer(lit.model).register_forward_pre_hook(self._capture)
        self._features.clear()
        try:
            logits = (call or lit)(x)
        finally:
            handle.remove()
        return logits, self._features.pop().float().flatten(1)

    def _draw(self, size: int, device: torch.device, rank: int) -> ModelInput:
        if self._generator is None:  # seeded per process; continues from step to step
            self._generator = torch.Generator().manual_seed(
                epoch_seed(self.seed, self.adapt.seed, rank)
            )
        return to_device(self.field.batch(size, self._generator), device)

    def _teacher_probabilities(self, lit: Any, x: ModelInput) -> torch.Tensor:
        """The model's probability averaged over D4 views of ``x``: dropout off, BN on the
        field batch's own statistics (running statistics untouched), no gradient."""
        model = lit.model
        was_training = model.training
        views = self.adapt.teacher_views
        elements = range(N_ELEMENTS) if views == N_ELEMENTS else range(views)
        model.eval()
        try:
            with torch.no_grad(), bn_train_mode(model):
                n = len(tensors(x)[0])
                probs = [torch.sigmoid(lit(d4_batch(x, [k] * n))) for k in elements]
        finally:
            model.train(was_training)
        return torch.stack(probs).mean(0)

    def training_loss(self, lit: Any, batch: Any, batch_idx: int) -> tuple[torch.Tensor, int]:
        """The labelled loss plus the field's losses for one step; returns (loss, labelled n).

        Logs ``train_loss`` (the labelled part, comparable with runs without adaptation) and
        each adaptation term.
        """
        x, y = batch
        n = len(y)
        strength, rank = _strength_and_rank(lit.trainer, batch_idx)
        field_n = max(2, round(n * self.adapt.field_batch_fraction))  # BN needs 2 for statistics
        field_x = self._draw(field_n, lit.device, rank)
        teacher = (
            self._teacher_probabilities(lit, field_x) if "consistency" in self.methods else None
        )
        if self.adapt.joint_batch_norm:  # one forward pass: shared batch statistics
            joint = _concatenated(x, field_x)
            outputs, features = self._forward_with_features(lit, joint, lit.outputs)
            logits, theta_e = outputs
            outputs = (logits[:n], None if theta_e is None else theta_e[:n])
            field_logits = logits[n:]
            labelled_features, field_features = features[:n], features[n:]
        else:
            outputs, labelled_features = self._forward_with_features(lit, x, lit.outputs)
            field_logits, field_features = self._forward_with_features(lit, field_x)
        supervised = lit.loss_of(outputs, y)[0]  # with the theta_E head's term, if any
        total = supervised
        logs: dict[str, torch.Tensor | float] = {"train_loss": supervised}
        if self.domain_head is not None:
            scale = self.adapt.dann_weight * strength
            domain_loss = self._domain_loss(labelled_features, field_features, scale)
            total = total + domain_loss
            logs["adapt_domain_loss"] = domain_loss
            logs["adapt_dann_scale"] = scale
        if teacher is not None:
            consistency, confident = self._consistency_loss(teacher, field_logits)
            total = total + self.adapt.consistency_weight * strength * consistency
            logs["adapt_consistency_loss"] = consistency
            logs["adapt_confident"] = confident
        _log_epoch_means(lit, logs, n)
        return total, n

    def _domain_loss(
        self, labelled_features: torch.Tensor, field_features: torch.Tensor, scale: float
    ) -> torch.Tensor:
        """The domain head's loss (labelled 0, field 1) on features whose gradient reaches the
        model reversed and times ``scale`` (DANN); each domain counts half, whatever the batch
        sizes."""
        assert self.domain_head is not None
        features = torch.cat([labelled_features, field_features])
        domain = torch.cat(
            [features.new_zeros(len(labelled_features)), features.new_ones(len(field_features))]
        )
        domain_logits = self.domain_head(reverse_gradient(features, scale)).reshape(-1)
        weights = torch.cat(
            [
                features.new_full((len(labelled_features),), 0.5 / len(labelled_features)),
                features.new_full((len(field_features),), 0.5 / len(field_features)),
            ]
        )
        return (
            nn.functional.binary_cross_entropy_with_logits(domain_logits, domain, reduction="none")
            * weights
        ).sum()

    def _consistency_loss(
        self, teacher: torch.Tensor, field_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss against the teacher's confident pseudo-labels (others count zero), and the
        fraction of the field batch that was confident."""
        threshold = self.adapt.consistency_threshold
        confident = (teacher >= threshold) | (teacher <= 1 - threshold)
        pseudo = (teacher >= 0.5).float()
        per_cutout = nn.functional.binary_cross_entropy_with_logits(
            field_logits, pseudo, reduction="none"
        )
        consistency = (per_cutout * confident.float()).sum() / len(teacher)
        return consistency, confident.float().mean()


def _concatenated(a: ModelInput, b: ModelInput) -> ModelInput:
    """Two model inputs as one batch (``a``'s rows first), stacked or two-branch alike."""
    if isinstance(a, tuple):
        assert isinstance(b, tuple)
        return tuple(torch.cat([p, q]) for p, q in zip(a, b, strict=True))
    assert isinstance(b, torch.Tensor)
    return torch.cat([a, b])


def _strength_and_rank(trainer: Any, batch_idx: int) -> tuple[float, int]:
    """The adaptation strength at this step (``ramp`` over the whole training) and this
    process's rank; 1 epoch of 1 step on rank 0 without a trainer."""
    steps = max(int(trainer.num_training_batches), 1) if trainer is not None else 1
    epochs = max(int(trainer.max_epochs or 1), 1) if trainer is not None else 1
    epoch = int(trainer.current_epoch) if trainer is not None else 0
    rank = int(trainer.global_rank) if trainer is not None else 0
    return ramp((epoch + batch_idx / steps) / epochs), rank


def _log_epoch_means(lit: Any, logs: dict[str, torch.Tensor | float], n: int) -> None:
    """Each value as an epoch mean weighted by the labelled batch size, over all processes."""
    for name, value in logs.items():
        lit.log(
            name,
            value,
            on_epoch=True,
            on_step=False,
            prog_bar=name == "train_loss",
            batch_size=n,
            sync_dist=True,
        )


# -- records and the adapt-only path -----------------------------------------------------------
def adapt_record(
    adapt: AdaptConfig, methods: tuple[str, ...], field: FieldCutouts, adabn: dict[str, Any] | None
) -> dict[str, Any]:
    """The ``adapt`` section of model.json."""
    return {
        "method": "+".join(methods),
        **field.record(),
        "adabn": adabn,
        "settings": to_dict(adapt),
    }


def adabn_in_place(
    model: nn.Module, config: TrainConfig, input_cfg: InputConfig, progress: bool = False
) -> dict[str, Any]:
    """AdaBN of ``model`` on ``config.adapt.field``; returns the model.json record."""
    adapt = config.adapt
    field = FieldCutouts(str(adapt.field), input_cfg, adapt, progress=progress)
    return adapt_record(
        adapt, adapt_methods(adapt), field, adabn_as_configured(model, field, config)
    )


def adabn_as_configured(
    model: nn.Module, field: FieldCutouts, config: TrainConfig
) -> dict[str, Any]:
    """``recompute_batchnorm`` with the config's AdaBN settings."""
    adapt = config.adapt
    return recompute_batchnorm(
        model,
        field,
        adapt.adabn_views,
        adapt.adabn_batch,
        adapt.seed,
        config.channels_last,
        adapt.adabn_depth,
    )


@dataclasses.dataclass
class AdaptResult:
    """What ``train --init RUN --adapt FIELD`` with ``adapt.only`` produced."""

    out: Path
    records: list[dict[str, Any]]
    ensemble: bool

    def summary(self) -> str:
        first = self.records[0]
        what = f"{len(self.records)} ensemble members" if self.ensemble else "the model"
        return "\n".join(
            [
                f"{self.out}: adapted {what} to {first['field']} (AdaBN: batch-norm statistics "
                f"of {first['n_used']} field cutouts x {first['adabn']['views']} D4 views; "
                f"{first['n_skipped']} unreadable skipped, {first['n_problems']} incomplete)",
                f"  model: {self.out} (labels of the field never read)",
            ]
        )


def adapt_only(config: TrainConfig, out: str | Path, progress: bool = True) -> AdaptResult:
    """AdaBN of the ``--init`` model (each member of an ``--init`` ensemble) into ``out``.

    ``out`` receives ordinary run directories: model.json is the init's with an ``adapt``
    section and ``init`` pointing at the source run, so evaluate still finds its test split.
    """
    if config.init is None or config.adapt.field is None:
        raise ConfigError(
            "train config: adapt.only adapts a trained model to a field: give --init RUN "
            "--adapt FIELD"
        )
    assert config.init is not None and config.adapt.field is not None
    init, out = Path(config.init), Path(out)
    if is_ensemble(init):
        ensemble = read_ensemble(init)
        pairs = [(Path(m), member_dir(out, k)) for k, m in enumerate(ensemble["members"])]
    else:
        ensemble, pairs = None, [(init, out)]
    records = []
    kind = TRAIN if ensemble is None else ENSEMBLE
    inputs: list[str | Path] = [init, config.adapt.field]
    with run_stage("train", kind, out, inputs, progress=progress) as stage:
        for source_run, target in pairs:
            model, meta = load_model(source_run)
            record = adabn_in_place(model, config, input_config(meta), progress=stage.progress)
            target.mkdir(parents=True, exist_ok=True)
            save_model(target, model, {**meta, "adapt": record, "init": str(source_run.resolve())})
            records.append(record)
        if ensemble is not None:
            extra = {
                k: v for k, v in ensemble.items() if k not in ("members", "format", "averaging")
            }
            write_ensemble(out, [t for _, t in pairs], str(ensemble["averaging"]), extra)
        return stage.finish(AdaptResult(stage.out, records, ensemble is not None))


# -- hooks of a training run (train/training.py) ---------------------------------------------------
def field_adaptation(
    config: TrainConfig, model: nn.Module, progress: bool = False
) -> tuple[FieldCutouts | None, JointAdaptation | None]:
    """The field's cutouts (None without ``--adapt``) and the joint part of training (None
    unless a joint method is asked for), prepared before training starts."""
    methods = adapt_methods(config.adapt)
    if not methods:
        return None, None
    field = FieldCutouts(str(config.adapt.field), config.input, config.adapt, progress=progress)
    if not any(m in JOINT_METHODS for m in methods):
        return field, None
    return field, JointAdaptation(config.adapt, methods, field, model, config.seed)


def finish_adaptation(
    config: TrainConfig, lit: Any, field: FieldCutouts | None, datamodule: Any = None
) -> dict[str, Any] | None:
    """After training: AdaBN (when asked) on the selected model; the model.json record, with
    the validation AUROC (on the labelled data) before and after it. With ``adabn_keep:
    if_better`` the statistics stay only where the painted field's validation AUROC rises."""
    if field is None:
        return None
    methods = adapt_methods(config.adapt)
    adabn = None
    before = after = None
    if "adabn" in methods:
        before = validation_auroc(lit, datamodule)
        adabn = _judged_adabn(config, lit, field, datamodule)
        after = before if adabn.get("kept") is False else validation_auroc(lit, datamodule)
    record = adapt_record(config.adapt, methods, field, adabn)
    record["val_auroc_before_adabn"], record["val_auroc_after_adabn"] = before, after
    return record


def _judged_adabn(
    config: TrainConfig, lit: Any, field: FieldCutouts, datamodule: Any
) -> dict[str, Any]:
    """AdaBN as configured; with ``adabn_keep: if_better`` undone (training's statistics put
    back) unless the painted field's validation AUROC, all D4 views, rises with it."""
    keep = config.adapt.adabn_keep
    judged = painted_validation(config, datamodule) if keep == "if_better" else None
    if judged is None:
        return adabn_as_configured(lit.model, field, config)
    painted_before = validation_auroc(lit, datamodule, judged, N_ELEMENTS)
    training_statistics = batchnorm_statistics(lit.model)
    adabn = adabn_as_configured(lit.model, field, config)
    painted_after = validation_auroc(lit, datamodule, judged, N_ELEMENTS)
    kept = (
        painted_before is not None and painted_after is not None and painted_after > painted_before
    )
    if not kept:
        restore_batchnorm_statistics(training_statistics)
    return adabn | {
        "kept": kept,
        "painted_val_cutouts": len(judged),
        "painted_val_auroc_before": painted_before,
        "painted_val_auroc_after": painted_after,
    }


def adabn_judgement(adabn: dict[str, Any] | None) -> str | None:
    """The summary's line on a judged AdaBN (``adabn_keep: if_better``), else None."""
    if not adabn or "kept" not in adabn:
        return None
    before, after = (
        "-" if v is None else f"{v:.3f}"
        for v in (adabn["painted_val_auroc_before"], adabn["painted_val_auroc_after"])
    )
    verdict = "kept" if adabn["kept"] else "left out, training's statistics kept"
    return (
        f"AdaBN on the field {verdict}: AUROC on {adabn['painted_val_cutouts']} painted-field "
        f"validation cutouts {before} without, {after} with"
    )


def painted_validation(config: TrainConfig, datamodule: Any) -> np.ndarray | None:
    """Positions, in the validation set, of the painted field's cutouts, or None where the run
    paints no field or its validation holds not both classes of them."""
    if datamodule is None:
        return None
    rows = np.asarray(datamodule.val_indices)
    painted = in_painted_part(config, datamodule, rows)
    if painted is None:
        return None
    positions = np.flatnonzero(painted)
    labels = np.asarray(datamodule.labels)[rows[positions]]
    return positions if len(np.unique(labels[labels >= 0])) == 2 else None


def in_painted_part(config: TrainConfig, datamodule: Any, rows: np.ndarray) -> np.ndarray | None:
    """Which ``rows`` of the datamodule's source belong to the painted field (the last data
    set of a run that paints; rows appended later, a mined replay, do not); None where the run
    paints no field."""
    parts = datamodule.parts
    if painted_store_path(config, "") is None or len(parts) < 2:
        return None
    start = int(sum(len(p) for p in parts[:-1]))
    return (rows >= start) & (rows < start + len(parts[-1]))


def eval_logits(
    lit: Any, dataset: CutoutDataset, positions: np.ndarray, views: int = 1
) -> np.ndarray:
    """The model's logits (eval mode, no gradient) for ``positions`` of ``dataset`` as stored
    (no random draw); with ``views`` > 1 the logit of the mean probability over the first
    ``views`` D4 elements, as a scan with TTA scores."""
    model = lit.model
    was_training = model.training
    model.eval()
    scores = []
    try:
        with torch.no_grad():
            for lo in range(0, len(positions), 64):
                x = to_device(dataset.plain_input(positions[lo : lo + 64]), lit.device)
                if views == 1:
                    scores.append(lit(x).float().cpu().numpy())
                    continue
                per_view = [
                    lit(map_input(x, functools.partial(apply_d4, k=k))) for k in range(views)
                ]
                logits = torch.stack(per_view).float().cpu().numpy()
                scores.append(average_logits(logits, axis=0, average="probability"))
    finally:
        model.train(was_training)
    return np.concatenate(scores) if scores else np.empty(0, np.float32)


def validation_auroc(
    lit: Any, datamodule: Any, positions: np.ndarray | None = None, views: int = 1
) -> float | None:
    """AUROC of the model (eval mode; ``views`` D4 views averaged) on the labelled validation
    set (or its ``positions``); None where not known (no datamodule, or a model validated with
    batch statistics)."""
    from torchmetrics.functional.classification import binary_auroc

    dataset = getattr(datamodule, "val_dataset", None)
    if dataset is None or lit.config.model.bn_inference != "eval" or len(dataset) == 0:
        return None
    positions = np.arange(len(dataset)) if positions is None else np.asarray(positions)
    labels = np.asarray(dataset.labels)[positions]
    if len(np.unique(labels)) < 2:
        return None
    scores = eval_logits(lit, dataset, positions, views)
    auroc = binary_auroc(torch.from_numpy(scores), torch.from_numpy(labels).long())
    return float(auroc)


class UnpaintedHoldback:
    """``adapt.unpainted_holdback``: the painted field's unpainted cutouts are non-lenses only
    by prevalence, so before every epoch from the second the model scores those in the training
    split and the highest-scoring ``share`` of them are not drawn that epoch (label -1 for the
    sampler). A real lens of the field is what the model, trained on simulated lenses, scores
    highest; it is then not taught as a non-lens, while the field's other galaxies still are.
    Used as ``LensDataModule.train_label_filter``."""

    def __init__(self, positions: np.ndarray, share: float) -> None:
        self.positions = np.asarray(positions, np.int64)  # training-dataset positions
        self.share = share
        self.held_back_ids: list[int] = []  # the last epoch's, for model.json
        self.epochs = 0  # epochs that held some back

    @classmethod
    def of(cls, config: TrainConfig, datamodule: Any) -> UnpaintedHoldback | None:
        """The holdback of a run that trains on a painted field (its last part), else None."""
        share = config.adapt.unpainted_holdback
        rows = np.asarray(datamodule.train_indices)
        painted = in_painted_part(config, datamodule, rows) if share else None
        if painted is None:
            return None
        unpainted = painted & (np.asarray(datamodule.labels)[rows] == 0)
        return cls(np.flatnonzero(unpainted), share)

    def __call__(self, dataset: CutoutDataset, epoch: int, lit: Any) -> np.ndarray:
        labels = np.asarray(dataset.labels).copy()
        n_held = round(self.share * len(self.positions))
        if epoch < 1 or n_held == 0:  # the first epoch's model knows nothing yet
            return labels
        logits = eval_logits(lit, dataset, self.positions)
        held = self.positions[np.argsort(-logits, kind="stable")[:n_held]]
        labels[held] = -1
        self.held_back_ids = sorted(int(i) for i in np.asarray(dataset.ids)[held])
        self.epochs += 1
        return labels

    def record(self) -> dict[str, Any]:
        """model.json's ``adapt.unpainted_holdback``."""
        return {
            "share": self.share,
            "n_unpainted_train": len(self.positions),
            "epochs": self.epochs,
            "held_back_ids": self.held_back_ids,  # the field's likeliest real lenses, last epoch
        }
