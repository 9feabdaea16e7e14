"""Evaluation: metrics (AUROC with CI, TPR0/TPR10, TPR at FPR, purity), plots, HTML report.

``evaluate`` is the entry of ``lensfinder evaluate``; ``metrics`` is numpy only and usable alone.
This package only measures; experiments that train (Table I, the BN study) live in
``lensfinder.experiments``.
"""

from lensfinder.evaluate.evaluation import EvaluationResult, evaluate

__all__ = ["EvaluationResult", "evaluate"]
