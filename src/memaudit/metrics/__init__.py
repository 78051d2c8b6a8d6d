"""Memorization metrics (METHOD §5): P-SMI, LiRA, baselines, and their evaluation (§6)."""

from memaudit.metrics.baselines import attack_success_rate, counterfactual_memorization, logit_gap, mahalanobis
from memaudit.metrics.lira import lira, lira_loo
from memaudit.metrics.psmi import psmi, psmi_slope

__all__ = [
    "attack_success_rate",
    "counterfactual_memorization",
    "lira",
    "lira_loo",
    "logit_gap",
    "mahalanobis",
    "psmi",
    "psmi_slope",
]
