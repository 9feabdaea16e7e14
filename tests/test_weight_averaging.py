"""Weight averaging: the EMA is the analytic one, SWA the plain mean of epoch-end weights with BN
statistics recomputed, the averaged weights are what is saved, and "none" changes nothing."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn

from lensfinder.config import HardNegativeConfig, TrainConfig, load_config
from lensfinder.errors import ConfigError
from lensfinder.testing import tiny_train_config
from lensfinder.train import train
from lensfinder.train.training import check_config
from lensfinder.train.weight_averaging import (
    AveragedWeights,
    ema_decay_after,
    recompute_batch_norm,
    swa_start_epoch,
)


def tiny_config(**overrides) -> TrainConfig:
    return tiny_train_config(**({"max_epochs": 2} | overrides))


@pytest.fixture(scope="module")
def store(layout_factory, tmp_path_factory) -> Path:
    from lensfinder.data.store import pack

    out = tmp_path_factory.mktemp("wa_store") / "store.zarr"
    pack(layout_factory("wa_layout", n=60, seed=3), out, progress=False)
    return out


def model_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "model.safetensors")


def network_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of a module's state dict."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


# -- EMA on a toy model: the exact average of the weight sequence ------------------------------
class ToyModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self.model(x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


class RecordEveryStep(pl.Callback):
    """The raw weights after every optimiser step (runs before the averaging callback)."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.states.append(network_state(pl_module.model))


def test_ema_is_the_analytic_exponential_average_of_the_steps():
    decay = 0.6
    record, averaging = RecordEveryStep(), AveragedWeights("ema", ema_decay=decay)
    data = torch.utils.data.TensorDataset(torch.randn(16, 3))
    trainer = pl.Trainer(
        max_epochs=1,
        callbacks=[record, averaging],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(ToyModule(), torch.utils.data.DataLoader(data, batch_size=4))
    assert len(record.states) == 4 and averaging.n_averaged == 4
    # The first update copies; update n + 1 uses decay min(0.6, (1 + n) / (10 + n)).
    expected = dict(record.states[0])
    for n, state in enumerate(record.states[1:]):
        d = ema_decay_after(n, decay)
        for key, value in state.items():
            if value.is_floating_point():
                expected[key] = d * expected[key] + (1 - d) * value
            else:
                expected[key] = value  # num_batches_tracked follows the model
    assert [ema_decay_after(n, decay) for n in range(4)] == pytest.approx(
        [1 / 10, 2 / 11, 3 / 12, 4 / 13]
    )
    averaged = network_state(averaging._average_model.module.model)
    assert set(averaged) == set(expected)
    for key in expected:
        torch.testing.assert_close(averaged[key], expected[key], rtol=1e-6, atol=1e-7)
    # The averaged weights are not the last step's (the test would pass vacuously otherwise).
    assert not torch.allclose(averaged["0.weight"], record.states[-1]["0.weight"])


def test_recompute_batch_norm_sets_the_plain_mean_of_the_batches():
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Sequential(nn.BatchNorm1d(2), nn.Linear(2, 1))

        def forward(self, x):
            return self.model(x)

    wrapper = Wrapper().eval()
    torch.manual_seed(1)
    batches = [(torch.randn(4, 2) * 3 + 1, torch.zeros(4)) for _ in range(3)]
    trainer = SimpleNamespace(
        datamodule=SimpleNamespace(train_dataloader=lambda: iter(batches)),
        strategy=SimpleNamespace(batch_to_device=lambda batch: batch),
        precision_plugin=SimpleNamespace(forward_context=contextlib.nullcontext),
    )
    bn = wrapper.model[0]
    assert recompute_batch_norm(trainer, wrapper, None) == 12
    everything = torch.cat([x for x, _ in batches])
    torch.testing.assert_close(bn.running_mean, everything.mean(0))
    assert bn.momentum == 0.1 and not wrapper.training  # settings and mode put back
    assert recompute_batch_norm(trainer, wrapper, 4) == 4  # stops once 4 samples were seen
    torch.testing.assert_close(bn.running_mean, batches[0][0].mean(0))
    torch.testing.assert_close(bn.running_var, batches[0][0].var(0))


# -- in lensfinder training --------------------------------------------------------------------
class RecordEpochs(pl.Callback):
    """The raw weights at each epoch end, and the averaging callback's averaged network."""

    def __init__(self) -> None:
        self.raw: list[dict[str, torch.Tensor]] = []
        self.averaged: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Validation is over: the raw weights are back in the module.
        self.raw.append(network_state(pl_module.model))
        (averaging,) = [c for c in trainer.callbacks if isinstance(c, AveragedWeights)]
        self.averaged.append(network_state(averaging._average_model.module.model))


def test_ema_training_saves_the_averaged_weights(store, tmp_path):
    config = tiny_config(max_epochs=1, weight_averaging="ema", ema_decay=0.99)
    record = RecordEpochs()
    train(config, store, tmp_path / "run", progress=False, callbacks=[record])
    saved = model_tensors(tmp_path / "run")
    averaged, raw = record.averaged[0], record.raw[0]
    for key, value in saved.items():
        torch.testing.assert_close(value, averaged[key])
    assert any(not torch.equal(saved[k], raw[k]) for k in saved if raw[k].is_floating_point())
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["weight_averaging"] == {"method": "ema", "decay": 0.99}


def test_swa_averages_epoch_end_weights_and_recomputes_batch_norm(store, tmp_path):
    config = tiny_config(max_epochs=2, weight_averaging="swa", swa_start=0.0, swa_bn_samples=16)
    assert swa_start_epoch(config) == 0
    record = RecordEpochs()
    train(config, store, tmp_path / "run", progress=False, callbacks=[record])
    raw0, raw1 = record.raw
    averaged = record.averaged[1]
    bn_buffers = {k for k in raw0 if "running_" in k or "num_batches" in k}
    for key in set(raw0) - bn_buffers:
        torch.testing.assert_close(averaged[key], (raw0[key] + raw1[key]) / 2)
    # BN statistics recomputed for the averaged weights, not the last model's.
    running = [k for k in bn_buffers if "running_mean" in k]
    assert running and any(not torch.allclose(averaged[k], raw1[k]) for k in running)
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    best = meta["metrics"]["best_epoch"]
    saved = model_tensors(tmp_path / "run")
    for key in saved:  # the saved model is the best epoch's average
        torch.testing.assert_close(saved[key], record.averaged[best][key])


def test_resumed_ema_run_continues_the_same_average(store, tmp_path):
    config = tiny_config(max_epochs=1, weight_averaging="ema")
    train(config, store, tmp_path / "run", progress=False)
    checkpoint = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)
    assert "current_model_state" in checkpoint and "averaging_state" in checkpoint
    steps_first = int(checkpoint["global_step"])
    record = RecordEpochs()
    longer = dataclasses.replace(config, max_epochs=2)
    result = train(longer, store, tmp_path / "run", progress=False, callbacks=[record])
    assert result.resumed_from_epoch == 0
    checkpoint = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)
    n_averaged = int(checkpoint["averaging_state"]["n_averaged"])
    assert n_averaged == int(checkpoint["global_step"]) > steps_first  # one update per step


def test_averaging_off_changes_nothing(store, tmp_path):
    """With weight averaging "none" (and hard negatives off) its other settings do nothing:
    the same weights as the defaults, bit for bit; EMA on gives other weights."""
    plain = tiny_config()
    off = tiny_config(
        ema_decay=0.5,
        swa_start=0.9,
        swa_bn_samples=3,
        hard_negatives=HardNegativeConfig(top_nonlenses=1, epochs=9),
    )
    ema = tiny_config(weight_averaging="ema", ema_decay=0.5)
    weights = {}
    for name, config in (("plain", plain), ("off", off), ("ema", ema)):
        train(config, store, tmp_path / name, progress=False)
        weights[name] = model_tensors(tmp_path / name)
    assert all(torch.equal(weights["plain"][k], weights["off"][k]) for k in weights["plain"])
    assert not all(torch.equal(weights["plain"][k], weights["ema"][k]) for k in weights["plain"])
    meta = json.loads((tmp_path / "off" / "model.json").read_text())
    assert meta["weight_averaging"] is None and meta["hard_negatives"] is None


def test_settings_come_from_yaml_and_bad_ones_fail_in_one_line(tmp_path):
    path = tmp_path / "averaged.yaml"
    path.write_text("weight_averaging: swa\nswa_start: 0.75\nmax_epochs: 30\n")
    config = load_config(TrainConfig, path)
    assert config.weight_averaging == "swa" and swa_start_epoch(config) == 22  # of 30 epochs
    path.write_text("weight_averaging: polyak\n")
    with pytest.raises(ConfigError, match="weight_averaging"):
        load_config(TrainConfig, path)
    for bad in ({"ema_decay": 1.0}, {"swa_start": 1.5}, {"swa_bn_samples": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            check_config(dataclasses.replace(TrainConfig(), **bad))
    assert np.isclose(ema_decay_after(10**6, 0.999), 0.999)
