"""The paper's experiments: its Table I and the batch-norm study.

They train models and then measure them, so they sit above ``train`` and ``evaluate`` (which only
measures) and import both.
"""

from lensfinder.experiments.bn_study import BnStudyResult, batchnorm_study
from lensfinder.experiments.table1 import Table1Budget, Table1Result, reproduce_table1

__all__ = [
    "BnStudyResult",
    "Table1Budget",
    "Table1Result",
    "batchnorm_study",
    "reproduce_table1",
]
