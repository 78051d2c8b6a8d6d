"""Memorization metrics (docs/method.md §5): P-SMI, LiRA, baselines, and their evaluation (§6).

Pure array code: float64, seeded, no file or service access; bad arrays raise ValueError.
"""

from memaudit.metrics.baselines import attack_success_rate, counterfactual_memorization, logit_gap, mahalanobis
from memaudit.metrics.evaluation import (
    METRICS,
    Roc,
    auc,
    average_ranks,
    best_layer,
    evaluate,
    fpr_at_tpr,
    memorized,
    memorized_threshold,
    off_the_shelf,
    prediction_checkpoint,
    roc,
    spearman,
    tpr_at_fpr,
)
from memaudit.metrics.lira import lira, lira_loo
from memaudit.metrics.predictors import Predictor, predictor_names
from memaudit.metrics.psmi import psmi, psmi_slope
from memaudit.metrics.rmia import fit_offline_a, option_probability, rmia

__all__ = [
    "METRICS",
    "Predictor",
    "Roc",
    "attack_success_rate",
    "auc",
    "average_ranks",
    "best_layer",
    "counterfactual_memorization",
    "evaluate",
    "fit_offline_a",
    "fpr_at_tpr",
    "lira",
    "lira_loo",
    "logit_gap",
    "mahalanobis",
    "memorized",
    "memorized_threshold",
    "off_the_shelf",
    "option_probability",
    "prediction_checkpoint",
    "predictor_names",
    "psmi",
    "psmi_slope",
    "rmia",
    "roc",
    "spearman",
    "tpr_at_fpr",
]
