"""The data layer: read challenge layouts, pack them into a store, and feed models.

``open_source(path)`` gives the same reading interface over a packed store and an unpacked
layout; ``transforms.to_model_input`` is the one place where pixels become model input.
torch is imported only by ``transforms``, ``augment``, ``sampler`` and ``dataset``.
"""

from lensfinder.data.challenge import ChallengeLayout, Problem, read_layout
from lensfinder.data.source import Cutouts, CutoutSource, LayoutSource, open_source


def pack(*args, **kwargs):
    """See ``lensfinder.data.store.pack`` (imported on use: it needs zarr)."""
    from lensfinder.data.store import pack as run

    return run(*args, **kwargs)


def open_store(path):
    """See ``lensfinder.data.store.open_store``."""
    from lensfinder.data.store import open_store as run

    return run(path)


__all__ = [
    "ChallengeLayout",
    "CutoutSource",
    "Cutouts",
    "LayoutSource",
    "Problem",
    "open_source",
    "open_store",
    "pack",
    "read_layout",
]
