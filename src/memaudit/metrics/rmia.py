"""RMIA membership scores (Zarifzadeh, Liu, Shokri, "Low-Cost High-Power Membership Inference Attacks", ICML 2024).

A model's probability of a sample, Pr(x | θ), is its softmax probability of the sample's labelled option at the
answer position. The likelihood ratio of x is Pr(x | target) / Pr(x), where Pr(x) is the mean of the reference
(shadow) models' Pr(x | θ) (online: all of them) or, offline, ((1 + a) · mean over the models that did not train
on x + (1 − a)) / 2, the paper's approximation of the IN models from the OUT ones. The score of x is the share of
the population z (samples the target did not train on) with ratio(x) / ratio(z) ≥ γ.

Computed in log space (float64): log ratio(z) ≤ log ratio(x) − log γ, one sort of the population's log ratios and a
binary search per sample, O((N + Z) log Z).
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from memaudit.metrics.evaluation import auc

A_GRID = np.round(np.linspace(0.0, 1.0, 101), 2)  # the offline a searched by fit_offline_a (ml_privacy_meter's)


def option_probability(option_logits: np.ndarray, label_index: np.ndarray) -> np.ndarray:
    """Pr(x | θ): the softmax probability of the labelled option over the K option logits ([..., K] → [...],
    float64; absent options are −inf), floored at the smallest positive float so that its log stays finite."""
    z = np.asarray(option_logits, dtype=np.float64)
    y = np.asarray(label_index, dtype=np.int64)
    if z.ndim < 1 or y.shape != z.shape[:-1] or ((y < 0) | (y >= z.shape[-1])).any():
        raise ValueError(f"option_probability got logits {z.shape} and labels {y.shape} (or a label out of range)")
    own = np.take_along_axis(z, y[..., None], axis=-1)[..., 0]
    log_p = own - logsumexp(z, axis=-1)
    return np.maximum(np.exp(log_p), np.finfo(np.float64).tiny)


def _probabilities(p: np.ndarray, what: str) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if not (np.isfinite(p).all() and (p > 0).all() and (p <= 1).all()):
        raise ValueError(f"rmia: {what} holds probabilities outside (0, 1]")
    return p


def _check(target_p, reference_p, reference_member, population) -> tuple[np.ndarray, ...]:
    """Validated float64 probabilities, bool membership and int population indices."""
    target_p, reference_p = _probabilities(target_p, "target_p"), _probabilities(reference_p, "reference_p")
    member = np.asarray(reference_member)
    population = np.asarray(population)
    n = target_p.shape[0] if target_p.ndim == 1 else -1
    if n < 1 or reference_p.ndim != 2 or reference_p.shape[1] != n or member.shape != reference_p.shape:
        raise ValueError(
            f"rmia: target_p {target_p.shape}, reference_p {reference_p.shape} and reference_member {member.shape} "
            "must be [N], [M, N] and [M, N]"
        )
    if member.dtype != np.bool_:
        if not np.isin(member, (0, 1)).all():
            raise ValueError("rmia: reference_member must be boolean")
        member = member.astype(bool)
    if population.ndim != 1 or population.size == 0 or not np.issubdtype(population.dtype, np.integer):
        raise ValueError("rmia: population must be a non-empty 1-d array of sample indices")
    if population.min() < 0 or population.max() >= n:
        raise ValueError(f"rmia: population indices must lie in [0, {n})")
    return target_p, reference_p, member, population


def log_marginal(reference_p: np.ndarray, reference_member: np.ndarray, offline_a: float | None) -> np.ndarray:
    """log Pr(x) [N]: the mean over all reference models (online), or the offline approximation from the OUT ones."""
    if offline_a is None:
        return np.log(reference_p.mean(axis=0))
    if not 0.0 <= offline_a <= 1.0:
        raise ValueError(f"rmia: offline_a must lie in [0, 1], got {offline_a}")
    out = ~reference_member
    n_out = out.sum(axis=0)
    if (n_out == 0).any():
        raise ValueError(f"rmia: {int((n_out == 0).sum())} samples have no OUT reference model (offline mode)")
    mean_out = np.where(out, reference_p, 0.0).sum(axis=0) / n_out
    return np.log(((1.0 + offline_a) * mean_out + (1.0 - offline_a)) / 2.0)


def rmia(
    target_p: np.ndarray,
    reference_p: np.ndarray,
    reference_member: np.ndarray,
    population: np.ndarray,
    *,
    gamma: float = 1.0,
    offline_a: float | None = None,
) -> np.ndarray:
    """RMIA score of every sample [N] in [0, 1]: the share of ``population`` it dominates by a factor ``gamma``."""
    if not (np.isfinite(gamma) and gamma > 0):
        raise ValueError(f"rmia: gamma must be > 0, got {gamma}")
    target_p, reference_p, member, population = _check(target_p, reference_p, reference_member, population)
    log_ratio = np.log(target_p) - log_marginal(reference_p, member, offline_a)
    sorted_population = np.sort(log_ratio[population])
    counts = np.searchsorted(sorted_population, log_ratio - np.log(gamma), side="right")
    return counts / population.size


def fit_offline_a(
    reference_p: np.ndarray, reference_member: np.ndarray, *, pair: tuple[int, int] = (0, 1), gamma: float = 1.0
) -> float:
    """The offline ``a`` (on :data:`A_GRID`) that maximises offline RMIA's AUC when reference model ``pair[0]``
    plays the target and ``pair[1]`` is the only reference, on the samples that ``pair[1]`` did not train on (the
    RMIA paper's and ml_privacy_meter's tuning). Ties go to the smallest ``a``."""
    reference_p = _probabilities(reference_p, "reference_p")
    member = np.asarray(reference_member, dtype=bool)
    t, r = pair
    if reference_p.ndim != 2 or member.shape != reference_p.shape or max(t, r) >= reference_p.shape[0] or t == r:
        raise ValueError("rmia: fitting offline_a needs two different reference models of [M, N] arrays")
    usable = np.flatnonzero(~member[r])
    is_member = member[t, usable]
    if is_member.all() or not is_member.any():
        raise ValueError("rmia: the pair shares no members and non-members to fit offline_a on")
    population = np.flatnonzero(~is_member)
    args = (reference_p[t, usable], reference_p[r : r + 1, usable], member[r : r + 1, usable], population)
    aucs = [auc(is_member, rmia(*args, gamma=gamma, offline_a=float(a))) for a in A_GRID]
    return float(A_GRID[int(np.argmax(aucs))])
