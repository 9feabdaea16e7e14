"""Training per CPU-minute: progressive resizing (early epochs at a lower resolution), frozen
stages, and the focal loss (more of each step spent on the cutouts that are still wrong)."""

from __future__ import annotations

import dataclasses
import json
import platform

import lightning.pytorch as pl
import pytest
import torch

from lensfinder.config import TrainConfig
from lensfinder.errors import ConfigError
from lensfinder.testing import TINY_INPUT, TINY_MODEL
from lensfinder.train.module import LensClassifier, resized_input


def tiny_three_epochs(**settings: object) -> TrainConfig:
    """Three short epochs of the test network on the tiny store (a fraction of 0.7: 2 of 3),
    the stop rule off."""
    return TrainConfig(
        input=TINY_INPUT,
        model=TINY_MODEL,
        max_epochs=3,
        max_train_samples=8,
        batch_size=4,
        batch_size_max=4,
        stop_auroc_drop=1.0,
        accelerator="cpu",
        **settings,  # type: ignore[arg-type]
    )


class InputSizes(pl.Callback):
    """The input size of every training and validation batch, per epoch."""

    def __init__(self) -> None:
        self.train: list[set[int]] = []
        self.val: list[set[int]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.train.append(set())
        self.val.append(set())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.train[-1].add(batch[0].shape[-1])

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self.val:  # not the sanity check before the first epoch
            self.val[-1].add(batch[0].shape[-1])


def test_resized_input_scales_each_tensor_and_keeps_surface_brightness():
    x = torch.full((3, 4, 100, 100), 2.5)
    small = resized_input(x, 64, 100)
    assert small.shape == (3, 4, 64, 64)
    assert torch.allclose(small, torch.full_like(small, 2.5))  # a flat image stays flat
    vis, nisp = resized_input((torch.rand(2, 1, 100, 100), torch.rand(2, 3, 34, 34)), 50, 100)
    assert vis.shape == (2, 1, 50, 50) and nisp.shape == (2, 3, 17, 17)
    y = torch.rand(2, 4, 100, 100)
    assert torch.equal(resized_input(y, 100, 100), y)


def test_cropped_input_is_the_centre_at_the_native_scale():
    x = torch.rand(2, 4, 100, 100)
    small = resized_input(x, 64, 100, "crop")
    assert small.shape == (2, 4, 64, 64) and torch.equal(small, x[..., 18:82, 18:82])
    vis, nisp = resized_input((x[:, :1], torch.rand(2, 3, 34, 34)), 50, 100, "crop")
    assert vis.shape == (2, 1, 50, 50) and nisp.shape == (2, 3, 17, 17)


@pytest.mark.parametrize("method", ["crop", "resample"])
def test_low_res_epochs_train_and_validate_small_then_full(tiny_store, tmp_path, method):
    from lensfinder.train import train

    cfg = tiny_three_epochs(low_res_size=16, low_res_fraction=0.7, low_res_method=method)
    seen = InputSizes()
    train(cfg, tiny_store, tmp_path / "run", progress=False, callbacks=[seen])
    assert seen.train == [{16}, {16}, {TINY_INPUT.size}]
    assert seen.val == [{16}, {16}, {TINY_INPUT.size}]
    metrics = json.loads((tmp_path / "run" / "model.json").read_text())["metrics"]
    assert metrics["best_epoch"] == 2  # the model kept was trained at full size


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"low_res_size": 100, "low_res_fraction": 0.5}, "expected 8 <= size < input.size"),
        ({"low_res_size": 64, "low_res_fraction": 1.5}, "low_res_fraction"),
    ],
)
def test_low_res_settings_are_checked(settings, problem):
    with pytest.raises(ConfigError, match=problem):
        TrainConfig(**settings)


def test_hard_negative_second_pass_trains_at_full_size(tmp_path):
    from lensfinder.train.hard_negatives import second_pass_config

    cfg = TrainConfig(max_epochs=10, low_res_size=64, low_res_fraction=0.5)
    assert cfg.low_res_epochs() == 5
    fine_tune = second_pass_config(cfg, tmp_path)
    assert fine_tune.low_res_size is None and fine_tune.low_res_epochs() == 0


def test_low_res_epochs_keep_their_share_and_one_full_epoch():
    cfg = TrainConfig(low_res_size=64, low_res_fraction=0.75, max_epochs=15)
    assert cfg.low_res_epochs() == 11
    assert TrainConfig(low_res_size=64, low_res_fraction=1.0, max_epochs=4).low_res_epochs() == 3
    assert TrainConfig(low_res_size=64, low_res_fraction=0.7, max_epochs=1).low_res_epochs() == 0
    assert TrainConfig(low_res_fraction=0.7).low_res_epochs() == 0  # no size: off


class StemWeights(pl.Callback):
    """The stem's and the head's weights after every training epoch."""

    def __init__(self) -> None:
        self.stem: list[torch.Tensor] = []
        self.head: list[torch.Tensor] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        net = pl_module.model.backbone
        self.stem.append(net.conv_stem.weight.detach().clone())
        self.head.append(net.get_classifier().weight.detach().clone())


def test_frozen_stages_get_no_update_while_frozen_and_learn_after(tiny_store, tmp_path):
    from lensfinder.train import train

    cfg = tiny_three_epochs(frozen_stages=2, frozen_fraction=0.7, warmup_epochs=0)
    seen = StemWeights()
    train(cfg, tiny_store, tmp_path / "run", progress=False, callbacks=[seen])
    assert torch.equal(seen.stem[0], seen.stem[1])  # frozen (AdamW's decay too)
    assert not torch.equal(seen.stem[1], seen.stem[2])  # learns once thawed
    assert not torch.equal(seen.head[0], seen.head[1])  # the rest trains throughout


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"frozen_stages": 2, "frozen_fraction": 1.5}, "frozen_fraction"),
        ({"frozen_stages": 2, "devices": 2}, "one process only"),
        ({"frozen_stages": -1}, "frozen_stages must be >= 0"),
    ],
)
def test_frozen_settings_are_checked(settings, problem):
    with pytest.raises(ConfigError, match=problem):
        TrainConfig(**settings)


def test_frozen_stages_beyond_the_network_is_one_line(tmp_path):
    from lensfinder.models.factory import create_model

    model = create_model(TINY_MODEL, TINY_INPUT)
    assert len(model.leading_stages(3)) == 4  # conv_stem, bn1, two blocks
    with pytest.raises(ConfigError, match="frozen_stages 99"):
        model.leading_stages(99)


def test_early_stopping_judges_from_after_warm_up_and_low_res_epochs():
    """A high peak lr swings validation AUROC by 0.1 in the warm-up epoch: the drop rule once
    stopped such a run after 2 epochs (lr 3e-3, seed 1). Warm-up epochs are not judged."""
    from lensfinder.train.training import first_candidate_epoch

    assert first_candidate_epoch(TrainConfig()) == 1  # one warm-up epoch
    assert first_candidate_epoch(TrainConfig(warmup_epochs=0)) == 0
    low_res = TrainConfig(max_epochs=15, low_res_size=64, low_res_fraction=0.75)
    assert first_candidate_epoch(low_res) == 11
    assert first_candidate_epoch(TrainConfig(max_epochs=1)) == 0  # the last epoch always counts


def test_focal_loss_weighs_confident_right_answers_down_and_wrong_ones_not():
    """gamma 0 is the paper's BCE to the last bit; with gamma 2 each cutout's BCE is scaled by
    (1 - p_t)^2: a confidently right one (p_t = 0.95) counts 1/400 of its BCE, a confidently
    wrong one (p_t = 0.05) ~0.9 of it. The module trains on exactly this loss."""
    logits = torch.tensor([3.0, -3.0, 3.0, -3.0, 0.0])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    plain = LensClassifier(TrainConfig(input=TINY_INPUT, model=TINY_MODEL, channels_last=False))
    assert torch.equal(plain.loss_of((logits, None), labels)[0], bce.mean())
    focal = LensClassifier(
        TrainConfig(input=TINY_INPUT, model=TINY_MODEL, channels_last=False, focal_gamma=2.0)
    )
    p_true = torch.sigmoid(torch.where(labels > 0, logits, -logits))
    expected = bce * (1 - p_true) ** 2
    assert torch.allclose(focal.loss_of((logits, None), labels)[0], expected.mean())
    assert expected[0] < bce[0] / 300 and expected[2] > 0.9 * bce[2]  # right vs wrong, same |logit|
    with pytest.raises(ConfigError, match="focal_gamma -1"):
        TrainConfig(focal_gamma=-1.0)


def _in_a_fresh_process(code: str, **env: str) -> str:
    """stdout of ``code`` in a new interpreter whose torch has a pool of two threads, with
    ``env`` added to its environment."""
    import os
    import subprocess
    import sys

    env = os.environ | {"OMP_NUM_THREADS": "2"} | env
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def _has_flush_flag() -> bool:
    """Whether this CPU can flush denormals (x86); this thread is left not flushing."""
    supported = bool(torch.set_flush_denormal(True))
    torch.set_flush_denormal(False)
    return supported


@pytest.mark.skipif(not _has_flush_flag(), reason="no flush-to-zero flag (not x86)")
def test_denormals_flush_in_every_torch_thread_when_set_first_and_late_is_reported():
    """Set before torch's pool starts (as ``train`` does from the command line), every thread
    flushes; set after, training says so where the pool's threads do not."""
    first = _in_a_fresh_process(
        "import torch\n"
        "from lensfinder.train.devices import flush_denormals, denormals_flushed\n"
        "print(flush_denormals(), denormals_flushed())"
    )
    assert first == "None True"
    late = _in_a_fresh_process(
        "import torch\n"
        "from lensfinder.train.devices import flush_denormals, denormals_flushed\n"
        "(torch.ones(1 << 20) * 2.0).sum()  # the pool starts here\n"
        "note = flush_denormals()\n"
        "print(note is not None and 'worker threads' in note, denormals_flushed())"
    )
    # threads started before the flag do not inherit it, and the note says so (seen alone;
    # beside the rest of the suite the pool came out flushing once): never one without the other
    assert late in ("True False", "False True")


def test_training_flushes_denormals_and_keeps_freed_memory(tiny_store, tmp_path, monkeypatch):
    """A confident network's backward pass runs on denormals, many times slower on x86 cores
    (README, "Session 27"): training turns them to zero, the time budget's yardstick too; and
    it keeps freed memory for reuse (below)."""
    from lensfinder.train import devices, train
    from lensfinder.train.devices import denormals

    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU has no flush-to-zero flag")
    assert (denormals(1) * 1.0).item() > 0.0
    calls: list[bool] = []
    monkeypatch.setattr(devices, "retain_freed_memory", lambda: calls.append(True) or True)
    config = dataclasses.replace(tiny_three_epochs(), max_epochs=1)
    train(config, tiny_store, tmp_path / "run", progress=False)
    assert (denormals(1) * 1.0).item() == 0.0
    assert calls


def test_openmp_threads_wait_passively_only_beside_other_busy_processes(tmp_path):
    """Spinning threads train cpu-best 1.4x faster on idle cores and 2-10x slower on cores
    other processes keep busy (README, "Session 27"): the package decides as it is imported."""
    from lensfinder.machine import openmp_wait_policy, others_running

    assert openmp_wait_policy(0, 2) is None  # idle: OpenMP's default, spin then sleep
    assert openmp_wait_policy(1, 2) == "PASSIVE"
    assert openmp_wait_policy(1, 1) == "PASSIVE"
    assert openmp_wait_policy(7, 16) is None
    assert openmp_wait_policy(8, 16) == "PASSIVE"
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("1.91 1.40 1.30 3/181 12345\n")  # this process and 2 others runnable
    assert others_running(samples=3, pause_s=0, source=str(loadavg)) == 2
    assert others_running(samples=3, pause_s=0, source=str(tmp_path / "none")) == 0
    loadavg.write_text("garbled\n")
    assert others_running(samples=1, pause_s=0, source=str(loadavg)) == 0


def test_a_users_own_openmp_wait_policy_wins():
    code = "import os, lensfinder; print(os.environ['OMP_WAIT_POLICY'])"
    assert _in_a_fresh_process(code, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"


def _page_faults_of_growing_blocks(retain: bool, **env: str) -> tuple[bool, int]:
    """Whether ``retain_freed_memory`` took its settings in a fresh process, and the minor page
    faults of allocating, filling and freeing torch tensors of 1, 2, ..., 30 MB there after it
    (torch's, not numpy's: numpy asks for huge pages, which fault 2 MB at a time)."""
    code = (
        "import resource, torch\n"
        "from lensfinder.machine import retain_freed_memory\n"
        f"kept = retain_freed_memory() if {retain} else False\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for mb in range(1, 31):\n"
        "    block = torch.ones(mb << 18)\n"
        "    del block\n"
        "print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    kept, faults = _in_a_fresh_process(code, **env).split()
    return kept == "True", int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator settings")
def test_freed_memory_is_kept_for_reuse_and_a_users_own_malloc_settings_win(monkeypatch):
    """By default glibc hands large freed blocks back to the kernel and faults them in again on
    the next step (3-4 million page faults in 3 epochs of cpu-best: README, "Session 28"):
    training keeps them. 465 MB allocated in growing blocks fault ~119,000 pages by default
    and, kept, ~22,000 here."""
    from lensfinder.machine import MALLOC_ENVIRONMENT

    for name in (*MALLOC_ENVIRONMENT, "GLIBC_TUNABLES"):  # Dask's nannies may leave one here
        monkeypatch.delenv(name, raising=False)
    kept, faults_kept = _page_faults_of_growing_blocks(retain=True)
    _, faults_default = _page_faults_of_growing_blocks(retain=False)
    assert kept
    assert faults_default > 80_000
    assert faults_kept < faults_default / 3
    users, _ = _page_faults_of_growing_blocks(retain=True, MALLOC_TRIM_THRESHOLD_="131072")
    assert not users


def test_freed_memory_settings_are_glibcs_only(monkeypatch):
    from lensfinder import machine

    monkeypatch.setattr(machine.platform, "libc_ver", lambda: ("musl", ""))
    assert not machine.retain_freed_memory()
