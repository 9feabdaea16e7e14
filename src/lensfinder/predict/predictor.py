"""Scoring cutouts with one model or an ensemble: the one place for batching, TTA, BN mode and
backends, so that a score means the same thing in ``evaluate``, ``scan`` and the BN study.

How scores are combined (one rule, applied the same way to TTA views and to ensemble members):

- ``ensemble_average="probability"``: the score is the mean of the sigmoid probabilities over all
  members and (with TTA) all eight D4 views. A member's reported logit is the logit of its mean
  probability over the views (computed stably in log space), so ``member_scores`` is always
  ``sigmoid(logits)``.
- ``ensemble_average="logit"``: the score is the sigmoid of the mean logit over all members and
  views; a member's logit is its mean logit over the views.

Either way an ensemble of identical members scores exactly like the member, and TTA on an image
that is invariant under D4 changes nothing.

theta_E (members with the Einstein-radius head) follows the same rule for views and members: an
equal-weight mixture of their Gaussians (``einstein.mixture``); members without the head are
left out of it, and without any such member ``Scores.theta_e`` is None.

BN "method 2" (the paper's): a member whose meta says ``model.bn_inference == "batch"`` runs with
its batch-norm layers in training mode (batch statistics, running statistics untouched), in
consecutive groups of ``model.bn_inference_batch`` valid cutouts. Its score for one object then
depends on the other objects in the same group: the order of the input and which rows are
skipped matter. Groups are formed over the sequence of valid rows only, identically in
``predict_arrays`` and ``predict_source`` (the last group may be smaller).

Members may have different input configs (bands, size, normalisation, layout): the input is
prepared once per distinct config, so such members can still be ensembled. Members trained with
different label rules cannot (their probabilities answer different questions).
"""

from __future__ import annotations

import functools
import itertools
import math
import queue
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from scipy.special import expit, logsumexp

from lensfinder.config import InputConfig, PredictConfig, to_dict
from lensfinder.data import open_source
from lensfinder.data.augment import N_ELEMENTS, apply_d4
from lensfinder.data.challenge import reason_kind
from lensfinder.data.cutouts import NISP_SHAPE, VIS_SHAPE, Cutouts, CutoutSource, repair_rows
from lensfinder.data.transforms import map_input, to_model_input
from lensfinder.einstein import mixture
from lensfinder.ensemble import expand_models
from lensfinder.errors import ConfigError, DataError, ModelFileError
from lensfinder.machine import available_cores
from lensfinder.models.batchnorm import bn_train_mode
from lensfinder.models.meta import input_config, read_meta
from lensfinder.predict.model_io import (
    Average,
    ModelInput,
    forward_outputs,
    has_theta_e,
    output_columns,
)
from lensfinder.predict.onnx_backend import cached_runner
from lensfinder.predict.onnx_cache import PRECISION_OF_BACKEND, CachedOnnx, Calibration
from lensfinder.stages import progress_bar as progress

PREFETCH_DEPTH = 2  # chunks read and prepared ahead of the model (bounded memory)
BACKENDS = ("torch", *PRECISION_OF_BACKEND)
BnMode = Literal["eval", "batch"]  # running statistics, or the batch's own (method 2)


@dataclass(frozen=True)
class Member:
    """One model of the ensemble, as this Predictor runs it."""

    name: str  # the run directory's name (or the ONNX file's stem)
    run_dir: Path
    version: str  # lensfinder version that wrote the model
    architecture: str
    input: InputConfig
    label_rule: str | None
    bn_inference: BnMode  # the mode used here
    bn_batch_size: int | None  # method 2's group size; None in eval mode
    meta: dict[str, Any] = field(repr=False, compare=False)


@dataclass
class Scores:
    """Scores of ``n`` rows, aligned with the input (arrays) or the requested indices (source).

    ``score`` is the ensemble probability (float64); ``logits`` and ``member_scores`` are
    ``(n_members, n)``. Rows that could not be scored (``valid`` False) hold NaN, so they can never
    pass for a real score; ``reasons`` says why per row (in full) and ``skipped`` counts them by
    kind (see ``reason_kind``).

    ``theta_e`` and ``theta_e_sigma``: the Einstein radius (arcsec) and its 1-sigma, a mixture
    of the members' (and TTA views') Gaussians (``einstein.mixture``), from the members with the
    Einstein-radius head; None when no member has one (never a made-up value).
    """

    score: np.ndarray
    logits: np.ndarray
    member_scores: np.ndarray
    valid: np.ndarray
    ids: np.ndarray | None = None
    indices: np.ndarray | None = None
    reasons: list[str | None] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    theta_e: np.ndarray | None = None
    theta_e_sigma: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.score)

    @property
    def n_valid(self) -> int:
        return int(self.valid.sum())

    def only_valid(self) -> Scores:
        """The scored rows alone (drops the NaN rows of skipped cutouts)."""
        keep = self.valid

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[..., keep]

        return Scores(
            score=self.score[keep],
            logits=self.logits[:, keep],
            member_scores=self.member_scores[:, keep],
            valid=self.valid[keep],
            ids=pick(self.ids),
            indices=pick(self.indices),
            reasons=[r for r, k in zip(self.reasons, keep, strict=True) if k],
            skipped=dict(self.skipped),
            theta_e=pick(self.theta_e),
            theta_e_sigma=pick(self.theta_e_sigma),
        )

    def summary(self) -> str:
        text = f"scored {self.n_valid} of {len(self)} cutouts with {len(self.logits)} member(s)"
        if self.skipped:
            parts = ", ".join(f"{reason}: {count}" for reason, count in self.skipped.items())
            text += f"; skipped {len(self) - self.n_valid} ({parts})"
        return text


def average_logits(logits: np.ndarray, axis: int, average: Average) -> np.ndarray:
    """The logit of the average over ``axis``: the mean logit ("logit"), or the logit of the mean
    probability ("probability"), computed in log space so that it stays finite for large logits.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if average == "logit":
        return logits.mean(axis=axis)
    if average == "probability":
        log_k = math.log(logits.shape[axis])
        log_p = logsumexp(-np.logaddexp(0.0, -logits), axis=axis) - log_k  # log mean sigmoid(l)
        log_q = logsumexp(-np.logaddexp(0.0, logits), axis=axis) - log_k  # log mean sigmoid(-l)
        return log_p - log_q
    raise ConfigError(f"ensemble_average {average!r}: expected 'probability' or 'logit'")


def ensemble_score(member_logits: np.ndarray, average: Average) -> np.ndarray:
    """The ensemble probability from ``(n_members, n)`` member logits."""
    member_logits = np.asarray(member_logits, dtype=np.float64)
    if average == "probability":
        return expit(member_logits).mean(axis=0)
    return expit(average_logits(member_logits, axis=0, average=average))


def _rows(x: ModelInput, start: int, stop: int) -> ModelInput:
    return map_input(x, lambda t: t[start:stop])


def _n_rows(x: ModelInput) -> int:
    return len(x[0]) if isinstance(x, tuple) else len(x)


class TorchRunner:
    """Runs one torch model on prepared batches; BN method 2 when ``bn_batch`` is set."""

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        channels_last: bool,
        bn_batch: bool,
        source: str,
        bf16: bool = False,
    ) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.channels_last = channels_last
        self.bn_batch = bn_batch
        self.source = source
        self.bf16 = bf16
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        if self.device.type == "cuda":  # page-locked: the copy runs without a staging copy
            t = t.pin_memory()
        t = t.to(self.device, non_blocking=True)
        if self.channels_last and t.ndim == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    @property
    def theta_e_head(self) -> bool:
        return has_theta_e(self.model)

    def __call__(self, x: ModelInput) -> np.ndarray:
        """``(n,)`` logits."""
        return self.outputs(x)[:, 0]

    def outputs(self, x: ModelInput) -> np.ndarray:
        """``(n, k)``: the logit, then theta_E's mean and sigma with the head (one pass)."""
        x = map_input(x, self._to_device)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
        with torch.inference_mode(), autocast:
            if self.bn_batch:
                with bn_train_mode(self.model):
                    try:
                        out = forward_outputs(self.model, x)
                    except ValueError as exc:  # e.g. batch norm over one value per channel
                        raise ConfigError(
                            f"{self.source}: BN method 2 cannot run on a batch of "
                            f"{_n_rows(x)} here ({exc}); use a larger bn batch size"
                        ) from None
            else:
                out = forward_outputs(self.model, x)
        return output_columns(out, _n_rows(x), self.source)


class Predictor:
    """Scores raw cutouts with one model or an ensemble (see the module docstring for the rules).

    ``run_dirs``: run directories (``model.safetensors`` + ``model.json``) or ensemble
    directories (``ensemble.json``, expanded into their members), or, with an ONNX backend,
    also ``.onnx`` files written by ``lensfinder export``.
    ``device``: torch device (default: CUDA when available, else CPU); the ONNX backends run on
    CPU, from files cached beside the models (``onnx_cache``: exported, or quantised, once).
    Each member runs in the BN mode its training recorded (``_bn_mode``; the BN study's
    predictor, ``experiments.bn_study.StudyPredictor``, forces one).
    ``onnx_threads``: ONNX Runtime intra-op threads (default: ``cfg.onnx_threads`` if the config
    has it, else ONNX Runtime's own choice). ``channels_last``: torch memory format (default on;
    faster for these CNNs on CPU, see benchmarks/bench_backends.py). ``calibration``: the
    cutouts that set the int8 ranges of backend "onnx-int8" (default: synthetic ones).
    ``cores``: the CPU cores this predictor may use (default: the process's), which decides
    whether ``cfg.prefetch`` None prefetches (a scan worker passes its share of the machine).
    """

    def __init__(
        self,
        run_dirs: Sequence[Path | str] | Path | str,
        cfg: PredictConfig | None = None,
        device: str | None = None,
        *,
        onnx_threads: int | None = None,
        channels_last: bool | None = None,
        calibration: Calibration | None = None,
        cores: int | None = None,
    ) -> None:
        self.cfg = cfg or PredictConfig()
        self.calibration = calibration
        if isinstance(run_dirs, str | Path):
            run_dirs = [run_dirs]
        run_dirs = expand_models(run_dirs)  # an ensemble directory is its members
        if not run_dirs:
            raise ConfigError("predict: no model given (pass at least one run directory)")
        self._check_config(device)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.uses_onnx:
            self.device = torch.device("cpu")
        self.channels_last = True if channels_last is None else channels_last
        self.bf16 = self._bf16()
        if onnx_threads is None:
            onnx_threads = getattr(self.cfg, "onnx_threads", None)
        self.onnx_threads = onnx_threads
        self.prefetch = self._prefetch(cores)

        self.members: list[Member] = []
        self.onnx_files: list[CachedOnnx] = []  # how each member's ONNX file was got
        self._runners: list[Any] = []
        for run_dir in run_dirs:
            member, runner = self._load(Path(run_dir))
            self.members.append(member)
            self._runners.append(runner)
        self._check_label_rules()
        # theta_E comes from the members that have the head; without any, Scores hold None.
        self.theta_e_head = any(runner.theta_e_head for runner in self._runners)
        self._plan_groups()

    def _check_config(self, device: str | None) -> None:
        """What the config's own checks (``PredictConfig.validate``) cannot see: the device."""
        self.cfg.validate()  # a config edited after it was made
        if self.uses_onnx and device not in (None, "cpu"):
            raise ConfigError(
                f"predict: the {self.cfg.backend} backend runs on CPU, not {device!r}"
            )

    def _plan_groups(self) -> None:
        """Members grouped by input config (the input is prepared once per group), and the rows
        per chunk."""
        groups: dict[str, list[int]] = {}
        for i, member in enumerate(self.members):
            key = repr(to_dict(member.input))
            groups.setdefault(key, []).append(i)
        self._groups = [(self.members[ids[0]].input, ids) for ids in groups.values()]
        # Rows per chunk: a multiple of every method-2 group size, so that groups never straddle
        # two chunks, and at least one batch.
        bn_sizes = [m.bn_batch_size for m in self.members if m.bn_batch_size]
        base = math.lcm(*bn_sizes) if bn_sizes else 1
        self.chunk_rows = base * math.ceil(self.cfg.batch_size / base)

    def _prefetch(self, cores: int | None) -> bool:
        """``cfg.prefetch``, or where it is None: on for a GPU, and on CPU only when inference
        leaves one of the ``cores`` this predictor may use (default: the process's) free."""
        if self.cfg.prefetch is not None:
            return bool(self.cfg.prefetch)
        if self.device.type != "cpu":
            return True
        cores = cores or available_cores()
        threads = (self.onnx_threads or cores) if self.uses_onnx else torch.get_num_threads()
        return threads < cores

    def _bf16(self) -> bool:
        """Whether the torch backend runs under bf16 autocast (``cfg.torch_precision``)."""
        precision = self.cfg.torch_precision
        if self.uses_onnx:  # bfloat16 with ONNX is refused by PredictConfig
            return False
        if precision == "auto":
            return self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        return precision == "bfloat16"

    # -- loading ---------------------------------------------------------------------------

    @property
    def uses_onnx(self) -> bool:
        return self.cfg.backend in PRECISION_OF_BACKEND

    def _bn_mode(self, path: Path, model_cfg: dict[str, Any]) -> tuple[BnMode, int | None]:
        """The member's BN mode and method-2 group size (None in eval mode), as its training
        recorded them."""
        mode = model_cfg.get("bn_inference", "eval")
        if mode not in ("eval", "batch"):
            raise ModelFileError(f"{path}: unknown bn_inference {mode!r} in model meta")
        group = int(model_cfg.get("bn_inference_batch") or 8) if mode == "batch" else None
        return mode, group

    def _load(self, path: Path) -> tuple[Member, Any]:
        onnx_file = path.suffix == ".onnx" and path.is_file()
        if onnx_file and not self.uses_onnx:
            raise ConfigError(f"{path}: an ONNX file needs backend 'onnx' (or 'onnx-int8')")
        model, runner = None, None
        if onnx_file:
            runner = self._onnx(path)
            meta = runner.meta
        elif self.uses_onnx:
            meta = read_meta(path)  # no torch model unless the ONNX file must be built
        else:  # timm, imported only here: an ONNX scan starts ~2 s sooner without it
            from lensfinder.models.checkpoint import load_model

            model, meta = load_model(path)
        model_cfg = meta.get("model") or {}
        if not isinstance(model_cfg, dict):
            model_cfg = to_dict(model_cfg)
        mode, group = self._bn_mode(path, model_cfg)
        member = Member(
            name=path.stem if onnx_file else path.name,
            run_dir=path,
            version=str(meta.get("lensfinder_version", "unknown")),
            architecture=str(meta.get("architecture") or model_cfg.get("arch", "unknown")),
            input=input_config(meta, path),
            label_rule=meta.get("label_rule"),
            bn_inference=mode,
            bn_batch_size=group,
            meta=meta,
        )
        if self.uses_onnx:
            if mode == "batch":
                raise ConfigError(
                    f"{path}: BN method 2 (batch statistics at inference) cannot run in ONNX; "
                    "use backend 'torch'"
                )
            return member, runner or self._onnx(path)
        assert model is not None  # only the ONNX backends skip the torch model
        return member, TorchRunner(
            model, self.device, self.channels_last, mode == "batch", str(path), self.bf16
        )

    def _onnx(self, path: Path) -> Any:
        """The member's ONNX Runtime session, from the file cached beside it (built if need be)."""
        precision = PRECISION_OF_BACKEND[self.cfg.backend]
        found = cached_runner(path, precision, self.onnx_threads, self.calibration)
        if found is None:  # the exporter (timm, onnx), imported only to build the file
            from lensfinder.predict.onnx_build import onnx_runner

            found = onnx_runner(path, precision, self.onnx_threads, self.calibration)
        runner, cached = found
        self.onnx_files.append(cached)
        return runner

    def _check_label_rules(self) -> None:
        """Members must predict the same thing; a member that does not record its rule is let
        through (older or hand-made model files)."""
        known = [m for m in self.members if m.label_rule]
        for first, other in itertools.pairwise(known):
            if other.label_rule != first.label_rule:
                raise ModelFileError(
                    f"ensemble mismatch: {first.run_dir} was trained with label rule "
                    f"{first.label_rule!r} but {other.run_dir} with {other.label_rule!r}; "
                    "their probabilities mean different things"
                )

    # -- scoring ---------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """What this Predictor does, for reports and result files."""
        return {
            "backend": self.cfg.backend,
            "tta": self.cfg.tta,
            "ensemble_average": self.cfg.ensemble_average,
            "theta_e_head": self.theta_e_head,
            "batch_size": self.cfg.batch_size,
            "device": str(self.device),
            "channels_last": self.channels_last if self.cfg.backend == "torch" else None,
            "onnx_threads": self.onnx_threads if self.uses_onnx else None,
            "onnx_files": [f.info() for f in self.onnx_files],
            "members": [
                {
                    "name": m.name,
                    "run_dir": str(m.run_dir),
                    "version": m.version,
                    "architecture": m.architecture,
                    "bn_inference": m.bn_inference,
                    "bn_batch_size": m.bn_batch_size,
                }
                for m in self.members
            ],
        }

    def _views(self, x: ModelInput) -> Iterator[ModelInput]:
        if not self.cfg.tta:
            yield x
            return
        for k in range(N_ELEMENTS):
            yield map_input(x, functools.partial(apply_d4, k=k))

    def _run_member(self, index: int, x: ModelInput) -> np.ndarray:
        """``(n, k)`` outputs of one member: the logit, then theta_E's mean and sigma if any."""
        batch = self.members[index].bn_batch_size or self.cfg.batch_size
        n = _n_rows(x)
        parts = [
            self._runners[index].outputs(_rows(x, start, min(n, start + batch)))
            for start in range(0, n, batch)
        ]
        return np.concatenate(parts) if parts else np.empty((0, 1))

    def _prepare(self, vis: np.ndarray, nisp: np.ndarray) -> list[ModelInput]:
        """Model input of raw cutouts, once per distinct input config (``self._groups``)."""
        return [to_model_input(vis, nisp, input_cfg) for input_cfg, _ in self._groups]

    def _run_prepared(self, inputs: list[ModelInput]) -> tuple[np.ndarray, np.ndarray]:
        """``(n_members, n)`` member logits and ``(n_members, n, 2)`` member theta_E (mean,
        sigma; NaN for a member without the head), TTA views combined, of prepared input of at
        most ``chunk_rows`` cutouts, all valid. theta_E is rotation invariant: its views combine
        as a mixture (the mean of the views' means, their spread added to sigma)."""
        n = _n_rows(inputs[0])
        logits = np.empty((len(self.members), n), dtype=np.float64)
        theta = np.full((len(self.members), n, 2), np.nan)
        for x, (_, member_ids) in zip(inputs, self._groups, strict=True):
            views: dict[int, list[np.ndarray]] = {i: [] for i in member_ids}
            for view in self._views(x):  # one view at a time: memory for one copy of the input
                for i in member_ids:
                    views[i].append(self._run_member(i, view))
            for i, outs in views.items():
                out = np.stack(outs)  # (views, n, k)
                logits[i] = average_logits(out[..., 0], axis=0, average=self.cfg.ensemble_average)
                if out.shape[-1] > 1:
                    theta[i, :, 0], theta[i, :, 1] = mixture(out[..., 1], out[..., 2], axis=0)
        return logits, theta

    def _prepared(
        self, chunks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]
    ) -> Iterator[tuple[np.ndarray, list[ModelInput]]]:
        """``(rows, model input)`` per chunk of raw ``(rows, vis, nisp)``: read and prepared in a
        background thread while the model runs on the previous chunk when ``self.prefetch``
        (ONNX Runtime and torch release the GIL); the chunks and their order are the same either
        way, so are the scores."""
        prepared = ((rows, self._prepare(vis, nisp)) for rows, vis, nisp in chunks)
        return _ahead(prepared, PREFETCH_DEPTH) if self.prefetch else prepared

    def _valid_chunks(
        self,
        source: Any,
        indices: np.ndarray,
        valid: np.ndarray,
        reasons: list[str | None],
        bar: Any,
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(rows, vis, nisp)``: consecutive chunks of ``chunk_rows`` valid cutouts of
        ``indices`` (the last may be smaller), ``rows`` their positions in ``indices``; read
        the source's ``read_chunks`` chunks at a time. Marks ``valid`` and ``reasons`` as it
        reads, so BN method 2 groups are formed over valid rows only."""
        pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        n_pending = 0
        step = self.chunk_rows * max(
            1, int(getattr(source, "read_chunks", CutoutSource.read_chunks))
        )
        n = len(indices)
        for start in range(0, n, step):
            stop = min(n, start + step)
            cut = source.read(indices[start:stop])
            repair_rows(cut)
            ok = np.asarray(cut.valid, dtype=bool).copy()
            for j in np.flatnonzero(~ok):
                reasons[start + j] = cut.reasons[j] or "invalid"
            valid[start:stop] = ok
            bar.update(stop - start)
            if ok.all():  # the usual case: no copies (fresh large arrays cost page faults)
                pending.append((np.arange(start, stop), cut.vis, cut.nisp))
            elif ok.any():
                pending.append((start + np.flatnonzero(ok), cut.vis[ok], cut.nisp[ok]))
            n_pending += int(ok.sum())
            final = stop == n
            if n_pending < self.chunk_rows and not final:
                continue
            if not pending:
                continue
            if len(pending) == 1:
                rows, vis, nisp = pending[0]
            else:
                rows, vis, nisp = (np.concatenate(p) for p in zip(*pending, strict=True))
            usable = len(rows) if final else len(rows) - len(rows) % self.chunk_rows
            for a in range(0, usable, self.chunk_rows):
                b = min(usable, a + self.chunk_rows)
                yield rows[a:b], vis[a:b], nisp[a:b]
            pending = [(rows[usable:], vis[usable:], nisp[usable:])] if usable < len(rows) else []
            n_pending = len(rows) - usable

    def _scores(
        self,
        logits: np.ndarray,
        theta: np.ndarray,
        valid: np.ndarray,
        reasons: list[str | None],
        ids: np.ndarray | None = None,
        indices: np.ndarray | None = None,
    ) -> Scores:
        skipped = Counter(reason_kind(r) for r, ok in zip(reasons, valid, strict=True) if not ok)
        theta_e, theta_e_sigma = (
            mixture(theta[..., 0], theta[..., 1], axis=0) if self.theta_e_head else (None, None)
        )
        return Scores(
            score=ensemble_score(logits, self.cfg.ensemble_average),
            logits=logits,
            member_scores=expit(logits),
            valid=valid,
            ids=ids,
            indices=indices,
            reasons=reasons,
            skipped=dict(skipped.most_common()),
            theta_e=theta_e,
            theta_e_sigma=theta_e_sigma,
        )

    def warm_up(self) -> None:
        """Score one chunk of noise cutouts and forget it: ONNX Runtime and torch allocate and
        pick kernels on their first run (0.3-0.4 s of a scan worker's first shard, measured),
        which a long-lived worker pays once, before its timed work."""
        rng = np.random.default_rng(0)
        self.predict_arrays(
            rng.normal(size=(self.chunk_rows, *VIS_SHAPE)).astype(np.float32),
            rng.normal(size=(self.chunk_rows, *NISP_SHAPE)).astype(np.float32),
        )

    def predict_arrays(self, vis: np.ndarray, nisp: np.ndarray, progress: bool = False) -> Scores:
        """Score raw cutouts, as a source's ``read`` returns them: ``vis (n,200,200)``,
        ``nisp (n,3,66,66)``. Every row is scored: a few non-finite pixels are repaired
        (``data.nonfinite``, on a copy); a row with more is a DataError (in BN method 2 one
        bad row would spoil its companions), so drop such rows first or use
        ``predict_source``, which skips them.
        """
        vis, nisp = np.asarray(vis), np.asarray(nisp)
        if vis.ndim != 3 or nisp.ndim != 4 or len(vis) != len(nisp):
            raise DataError(
                f"predict: expected vis (n,H,W) and nisp (n,3,h,w) with the same n, got "
                f"{vis.shape} and {nisp.shape}"
            )
        if not (np.isfinite(vis).all() and np.isfinite(nisp).all()):
            cut = Cutouts(vis.copy(), nisp.copy(), np.ones(len(vis), bool), [None] * len(vis))
            repair_rows(cut)
            if not cut.valid.all():
                first = int(np.argmin(cut.valid))
                raise DataError(
                    f"predict: {int((~cut.valid).sum())} cutout(s) have too many non-finite "
                    f"pixels (first: row {first}, {cut.reasons[first]}); remove them or use "
                    "predict_source, which skips them"
                )
            vis, nisp = cut.vis, cut.nisp
        n = len(vis)
        logits = np.empty((len(self.members), n), dtype=np.float64)
        theta = np.full((len(self.members), n, 2), np.nan)
        bar = _bar(n, progress)
        chunks = (
            (
                np.arange(a, min(n, a + self.chunk_rows)),
                vis[a : a + self.chunk_rows],
                nisp[a : a + self.chunk_rows],
            )
            for a in range(0, n, self.chunk_rows)
        )
        for rows, inputs in self._prepared(chunks):
            logits[:, rows], theta[:, rows] = self._run_prepared(inputs)
            bar.update(len(rows))
        bar.close()
        return self._scores(logits, theta, np.ones(n, dtype=bool), [None] * n)

    def predict_source(
        self,
        source: Any,
        indices: Sequence[int] | np.ndarray | None = None,
        progress: bool = True,
    ) -> Scores:
        """Score a CutoutSource (or the path of a store or layout) row by row, streaming: memory
        stays flat whatever the size. Rows the source marks invalid, or with non-finite pixels,
        are skipped (NaN scores, ``valid`` False) and their reasons counted. Results are aligned
        with ``indices`` (default: every row), with the source's ``ids``.
        """
        if isinstance(source, str | Path):
            source = open_source(source)
        total = len(source)
        if indices is None:
            indices = np.arange(total, dtype=np.int64)
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < 0 or indices.max() >= total):
            raise DataError(f"predict: indices outside the source's {total} rows")
        n = len(indices)
        logits = np.full((len(self.members), n), np.nan)
        theta = np.full((len(self.members), n, 2), np.nan)
        valid = np.zeros(n, dtype=bool)
        reasons: list[str | None] = [None] * n
        bar = _bar(n, progress)
        chunks = self._valid_chunks(source, indices, valid, reasons, bar)
        for rows, inputs in self._prepared(chunks):
            logits[:, rows], theta[:, rows] = self._run_prepared(inputs)
        bar.close()
        ids = np.asarray(source.ids)[indices] if n else np.zeros(0, dtype=np.int64)
        return self._scores(logits, theta, valid, reasons, ids=ids, indices=indices)


def _ahead(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """Yield ``items``, computed up to ``depth`` ahead in a daemon thread; its errors are raised
    here, and stopping early (an error, a KeyboardInterrupt) stops it after its current item."""
    ready: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, value: Any) -> bool:
        while not stop.is_set():
            try:
                ready.put((kind, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put("item", item):
                    return
            put("done", None)
        except BaseException as exc:  # handed to the consumer, raised there
            put("error", exc)

    thread = threading.Thread(target=work, name="lensfinder-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = ready.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    return progress(iter(()), total=total, desc="scoring", unit="cutout")
