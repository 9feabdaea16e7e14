"""Evaluation: metrics (AUROC with CI, TPR0/TPR10, TPR at FPR, purity), plots, HTML report, the
batch-norm study and the paper's Table I.

``evaluate`` is the entry of ``lensfinder evaluate``; ``metrics`` is numpy only and usable alone.
"""

from lensfinder.evaluate.bn_study import BnStudyResult, batchnorm_study
from lensfinder.evaluate.run import EvaluationResult, evaluate
from lensfinder.evaluate.table1 import Table1Budget, Table1Result, reproduce_table1

__all__ = [
    "BnStudyResult",
    "EvaluationResult",
    "Table1Budget",
    "Table1Result",
    "batchnorm_study",
    "evaluate",
    "reproduce_table1",
]
