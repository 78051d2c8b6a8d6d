"""Memorization metrics (METHOD §5): P-SMI, LiRA, baselines, and their evaluation (§6)."""

from memaudit.metrics.baselines import logit_gap, mahalanobis
from memaudit.metrics.psmi import psmi, psmi_slope

__all__ = ["logit_gap", "mahalanobis", "psmi", "psmi_slope"]
