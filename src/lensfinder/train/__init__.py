"""Training with the paper's recipe on Lightning: ``train(config, store, out) -> TrainResult``.

``run`` imports torch and Lightning only inside ``train``, so importing this package stays cheap.
"""

from lensfinder.train.training import TrainResult, train

__all__ = ["TrainResult", "train"]
