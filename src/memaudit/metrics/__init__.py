"""Memorization metrics (METHOD §5): P-SMI, LiRA, baselines, and their evaluation (§6)."""

from memaudit.metrics.baselines import attack_success_rate, counterfactual_memorization, logit_gap, mahalanobis
from memaudit.metrics.evaluation import (
    Roc,
    auc,
    best_layer,
    evaluate,
    fpr_at_tpr,
    memorized,
    off_the_shelf,
    prediction_checkpoint,
    roc,
    tpr_at_fpr,
)
from memaudit.metrics.lira import lira, lira_loo
from memaudit.metrics.psmi import psmi, psmi_slope

__all__ = [
    "Roc",
    "attack_success_rate",
    "auc",
    "best_layer",
    "counterfactual_memorization",
    "evaluate",
    "fpr_at_tpr",
    "lira",
    "lira_loo",
    "logit_gap",
    "mahalanobis",
    "memorized",
    "off_the_shelf",
    "prediction_checkpoint",
    "psmi",
    "psmi_slope",
    "roc",
    "tpr_at_fpr",
]
