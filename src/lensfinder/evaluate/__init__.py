"""Evaluation: metrics (AUROC with CI, TPR0/TPR10, TPR at FPR, purity), plots, HTML report.

``evaluate`` is the entry of ``lensfinder evaluate``; ``metrics`` is numpy only and usable alone.
"""

from lensfinder.evaluate.run import EvaluationResult, evaluate

__all__ = ["EvaluationResult", "evaluate"]
