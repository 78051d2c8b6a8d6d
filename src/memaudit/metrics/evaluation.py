"""Evaluation of memorization predictors against the LiRA ground truth (docs/method.md §6.1).

Scores are oriented "higher = more likely memorized" (−P-SMI, +loss, −logit gap, +Mahalanobis, +early LiRA).
As in the paper's protocol (step 3), samples whose score is NaN or infinite are dropped before the ROC.

The ROC is computed here with numpy and gives exactly the points of sklearn's
``roc_curve(drop_intermediate=False)`` (one point per distinct score, thresholds included; a test checks it on
tie-heavy data); it skips sklearn's input validation, which took 2/3 of the time of the aggregate's ~1,700 ROCs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Roc:
    """One ROC curve, as sklearn ``roc_curve(drop_intermediate=False)``; thresholds on the oriented score."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray

    def fpr_at_tpr(self, tpr: float = 0.75) -> float:
        """FPR at the first ROC point whose TPR is strictly above ``tpr`` (the paper's FPR@TPR)."""
        return float(self.fpr[np.argmax(self.tpr > tpr)])

    def tpr_at_fpr(self, fpr: float) -> float:
        """Highest TPR among the ROC points with FPR ≤ ``fpr``."""
        return float(self.tpr[self.fpr <= fpr].max())

    def auc(self) -> float:
        """Trapezoidal area under the curve (sklearn's ``auc`` of these points)."""
        return float(np.trapezoid(self.tpr, self.fpr))


def roc(is_positive: np.ndarray, score: np.ndarray) -> Roc:
    """ROC of ``score`` (higher = more likely positive) for the labels ``is_positive``, non-finite scores dropped."""
    y = np.asarray(is_positive, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"ROC got labels {y.shape} and scores {s.shape}")
    keep = np.isfinite(s)
    y, s = y[keep], s[keep]
    if y.all() or not y.any():
        raise ValueError("ROC needs both positive and negative samples with finite scores")
    order = np.argsort(s)[::-1]  # ties share one ROC point, so their order does not matter
    s, y = s[order], y[order]
    ends = np.append(np.flatnonzero(np.diff(s)), s.size - 1)  # last index of each distinct score
    tps = np.cumsum(y, dtype=np.float64)[ends]
    fps = 1.0 + ends - tps
    return Roc(
        np.concatenate([[0.0], fps]) / fps[-1],
        np.concatenate([[0.0], tps]) / tps[-1],
        np.concatenate([[np.inf], s[ends]]),
    )


def fpr_at_tpr(is_positive: np.ndarray, score: np.ndarray, tpr: float = 0.75) -> float:
    """FPR at the first ROC point with TPR > ``tpr``; higher score = more likely positive."""
    return roc(is_positive, score).fpr_at_tpr(tpr)


def tpr_at_fpr(is_positive: np.ndarray, score: np.ndarray, fpr: float = 0.01) -> float:
    """Highest TPR reachable at FPR ≤ ``fpr``."""
    return roc(is_positive, score).tpr_at_fpr(fpr)


def auc(is_positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve."""
    return roc(is_positive, score).auc()


METRICS = ("fpr_at_tpr", "auc", "tpr_at_fpr_1pct", "tpr_at_fpr_0.1pct")  # the keys of evaluate()


def evaluate(is_positive: np.ndarray, score: np.ndarray, *, tpr: float = 0.75) -> dict[str, float]:
    """The reported numbers of one predictor (:data:`METRICS`): FPR@TPR, AUC, TPR at FPR 1 % and 0.1 %."""
    curve = roc(is_positive, score)
    values = (curve.fpr_at_tpr(tpr), curve.auc(), curve.tpr_at_fpr(0.01), curve.tpr_at_fpr(0.001))
    return dict(zip(METRICS, values, strict=True))


def off_the_shelf(is_memorized: np.ndarray, psmi_values: np.ndarray) -> tuple[float, float]:
    """(FPR, TPR) of the rule "memorized iff P-SMI < 0" (docs/method.md §6.1 step 6; applied directly rather than as the
    first ROC threshold below 0 of −P-SMI, which also counts the largest negative score's ties)."""
    y = np.asarray(is_memorized, dtype=bool)
    p = np.asarray(psmi_values, dtype=np.float64)
    keep = np.isfinite(p)
    y, predicted = y[keep], p[keep] < 0
    if y.all() or not y.any():
        raise ValueError("the off-the-shelf point needs memorized and non-memorized samples")
    return float(predicted[~y].mean()), float(predicted[y].mean())


def memorized_threshold(llr: np.ndarray, *, rule: str = "top_fraction", fraction: float = 0.10, threshold: float = 4.0):
    """The LiRA value from which one model's member counts as memorized: the 1 − ``fraction`` quantile of its
    members' scores (rule ``top_fraction``, the paper's) or the fixed ``threshold`` (rule ``threshold``)."""
    llr = np.asarray(llr, dtype=np.float64)
    if llr.size == 0:
        raise ValueError("no member to rank for memorization")
    if rule == "top_fraction":
        return float(np.quantile(llr, 1 - fraction))
    if rule == "threshold":
        return float(threshold)
    raise ValueError(f"unknown memorization rule {rule!r}")


def memorized(llr: np.ndarray, *, rule: str = "top_fraction", fraction: float = 0.10, threshold: float = 4.0):
    """Memorized flags from LiRA scores of one model's members: ``llr ≥`` :func:`memorized_threshold` (ties
    included, as the paper)."""
    llr = np.asarray(llr, dtype=np.float64)
    return llr >= memorized_threshold(llr, rule=rule, fraction=fraction, threshold=threshold)


def prediction_checkpoint(median_member_loss: np.ndarray, ratio: float = 0.05) -> tuple[int, bool]:
    """Index of the first checkpoint whose median member loss is below ``ratio`` × that of the first checkpoint
    (docs/method.md §6.1 step 7), and whether it was found. Fallback when none is: the checkpoint with the lowest median
    loss (the earliest of ties), returned with ``False``."""
    losses = np.asarray(median_member_loss, dtype=np.float64)
    if losses.ndim != 1 or losses.size == 0 or not np.isfinite(losses).all():
        raise ValueError("c_pred needs one finite median loss per checkpoint")
    below = np.flatnonzero(losses < ratio * losses[0])
    if below.size:
        return int(below[0]), True
    return int(np.argmin(losses)), False


def best_layer(fpr_by_layer: Sequence[float | None]) -> int | None:
    """Index of the layer with the lowest FPR@TPR (the first of ties); layers without a number (None or NaN)
    are skipped; None when no layer has one."""
    values = np.array([np.nan if v is None else v for v in fpr_by_layer], dtype=np.float64)
    if not np.isfinite(values).any():
        return None
    return int(np.nanargmin(np.where(np.isfinite(values), values, np.nan)))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, ties sharing the mean of their ranks (scipy's ``rankdata(method="average")``)."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], x.size]
    mean_rank = (starts + ends + 1) / 2.0  # ranks starts+1 .. ends, averaged
    ranks = np.empty_like(x)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation of two equally long finite vectors (Pearson's of their average ranks)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ValueError(f"spearman needs two vectors of the same length ≥ 2, got shapes {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("spearman needs finite values (drop NaN and infinite ones first)")
    rx, ry = average_ranks(x) - (x.size + 1) / 2, average_ranks(y) - (y.size + 1) / 2
    denominator = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    if denominator == 0:
        raise ValueError("spearman is undefined for a constant vector")
    return float((rx * ry).sum() / denominator)
