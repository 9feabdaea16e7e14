"""The data layer: read challenge layouts, pack them into a store, and feed models.

``open_source(path)`` gives the same reading interface (``cutouts.CutoutSource``) over a packed
store (``store``) and an unpacked layout; ``transforms.to_model_input`` is the one place where
pixels become model input. torch is imported only by ``transforms``, ``augment``, ``sampler``
and ``dataset``.
"""

from lensfinder.data.challenge import ChallengeLayout, Problem, read_layout
from lensfinder.data.cutouts import Cutouts, CutoutSource
from lensfinder.data.source import LayoutSource, open_source

__all__ = [
    "ChallengeLayout",
    "CutoutSource",
    "Cutouts",
    "LayoutSource",
    "Problem",
    "open_source",
    "read_layout",
]
