"""Shared fixtures: tiny data made on the fly by ``lensfinder.testing`` (never committed), and
quiet, small-thread torch."""

from __future__ import annotations

import os

os.environ.setdefault("LENSFINDER_QUIET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # 2 shared cores: 1 thread is faster

from collections.abc import Callable
from pathlib import Path

import pytest

from lensfinder.testing import make_tiny_layout, make_tiny_store


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """torch on one thread for every test: on 2 shared cores, tiny tensors run 2-20x faster so."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def layout_factory(tmp_path_factory) -> Callable[..., Path]:
    """``layout_factory(name, **kwargs)``: a fresh tiny layout (see ``make_tiny_layout``)."""

    def make(name: str = "layout", **kwargs) -> Path:
        return make_tiny_layout(tmp_path_factory.mktemp(name), **kwargs)

    return make


@pytest.fixture(scope="session")
def tiny_layout(tmp_path_factory) -> Path:
    """24 objects, half lenses, challenge-like flux units, with WCS and catalogue. Read-only!"""
    return make_tiny_layout(tmp_path_factory.mktemp("tiny_layout"), n=24, seed=0)


@pytest.fixture(scope="session")
def tiny_store(tiny_layout, tmp_path_factory) -> Path:
    """``tiny_layout`` packed into a Zarr store. Read-only!"""
    return make_tiny_store(tiny_layout, tmp_path_factory.mktemp("tiny_store") / "tiny.zarr")


@pytest.fixture(scope="session")
def kinds_layout(tmp_path_factory) -> Path:
    """40 objects, half lenses, with the simulator's ``kind`` column. Read-only!"""
    return make_tiny_layout(tmp_path_factory.mktemp("kinds_layout"), n=40, seed=5, kinds=True)


@pytest.fixture(scope="session")
def kinds_store(kinds_layout, tmp_path_factory) -> Path:
    """``kinds_layout`` packed into a Zarr store. Read-only!"""
    return make_tiny_store(kinds_layout, tmp_path_factory.mktemp("kinds_store") / "kinds.zarr")
