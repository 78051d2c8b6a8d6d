"""LiRA membership scores against a shadow population (docs/method.md §5.4): the memorization ground truth.

For each sample i, the shadows split into IN_i (trained on i) and OUT_i. Online LiRA is the log-likelihood ratio

    LLR(i) = log N(x_i; μ_in, σ_in²) − log N(x_i; μ_out, σ_out²)

of the target's statistic x_i (the logit gap in this project), computed directly from Gaussian log-densities in
float64, with per-sample moments (ddof 0, the paper's) or, with ``global_variance=True``, one pooled variance
for IN and one for OUT shared by all samples (Carlini et al. advise it below ~64 shadows). The pooled variance
is the within-sample one, Σ_i Σ_{s∈IN_i} (x_si − μ_in,i)² / Σ_i |IN_i|; Carlini's code takes the std of all
values, which also counts the spread between samples. ``online=False`` is the one-sided offline test against
OUT: the log-odds log Φ(t) − log Φ(−t) with t = (x − μ_out)/σ_out (0 at μ_out, higher = more likely member).

Degenerate cases follow one rule, "an estimate that cannot be made falls back to its population counterpart":

- an empty IN (or OUT) set takes μ = (mean of the sample's shadows) + δ, where δ is the average offset of IN
  (OUT) values from their sample's shadow mean over all samples (0 when no shadow is IN anywhere);
- a set with fewer than 2 values takes the pooled variance above (which, if no sample has IN values, is the
  OUT one, and vice versa);
- every variance is floored at 1e-12 × the variance of all values (target and shadows), or 1 if they are all
  equal; this bounds every term, so the score is always finite;

then the score is clipped to [−clip, clip] (the notebooks' ``sanityze``; NaN never arises here).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import log_ndtr

_REL_FLOOR = 1e-12


@dataclass
class Moments:
    """Per-sample counts, means and sums of squared deviations of the IN and OUT shadow values."""

    n_in: np.ndarray
    mu_in: np.ndarray
    ss_in: np.ndarray
    n_out: np.ndarray
    mu_out: np.ndarray
    ss_out: np.ndarray


def check_stats(stats: np.ndarray, member: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate a [models, samples] statistic matrix and its membership; returns float64 and bool arrays."""
    stats = np.asarray(stats, dtype=np.float64)
    member = np.asarray(member)
    if stats.ndim != 2 or member.shape != stats.shape or stats.shape[0] == 0:
        raise ValueError(f"{what} got statistics {stats.shape} and membership {member.shape}")
    if member.dtype != np.bool_:
        if not np.isin(member, (0, 1)).all():
            raise ValueError(f"{what} membership is not boolean")
        member = member.astype(bool)
    if not np.isfinite(stats).all():
        raise ValueError(f"{what} got NaN or infinite statistics")
    return stats, member


def moments(stats: np.ndarray, member: np.ndarray) -> Moments:
    """Per-sample moments of ``stats`` [S, N] split by ``member`` [S, N]: means, then squared deviations from
    each value's own group mean (two passes over the data)."""
    weight = member.astype(np.float64)
    n_in = member.sum(axis=0)
    n_out = member.shape[0] - n_in
    sum_in = np.einsum("ij,ij->j", weight, stats)
    mu_in = sum_in / np.maximum(n_in, 1)
    mu_out = np.where(n_out > 0, (stats.sum(axis=0) - sum_in) / np.maximum(n_out, 1), 0.0)
    deviation = stats - np.where(member, mu_in, mu_out)
    deviation *= deviation
    ss_in = np.einsum("ij,ij->j", weight, deviation)
    ss_out = np.maximum(deviation.sum(axis=0) - ss_in, 0.0)
    return Moments(n_in, mu_in, ss_in, n_out, mu_out, ss_out)


def variance_floor(*arrays: np.ndarray) -> float:
    """1e-12 × the variance of all the values together (1 when they are all equal)."""
    values = np.concatenate([np.ravel(a) for a in arrays])
    spread = float(values.var())
    return _REL_FLOOR * spread if spread > 0 else 1.0


def gaussians(
    m: Moments, floor: float | np.ndarray, *, global_variance: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(μ_in, σ²_in, μ_out, σ²_out) per sample after the fallback rule; the last axis of ``m`` is samples."""
    total = m.n_in + m.n_out
    centre = (m.n_in * m.mu_in + m.n_out * m.mu_out) / np.maximum(total, 1)
    count_in = m.n_in.sum(axis=-1, keepdims=True)
    count_out = m.n_out.sum(axis=-1, keepdims=True)
    delta_in = (m.n_in * (m.mu_in - centre)).sum(axis=-1, keepdims=True) / np.maximum(count_in, 1)
    delta_out = (m.n_out * (m.mu_out - centre)).sum(axis=-1, keepdims=True) / np.maximum(count_out, 1)
    pooled_in = m.ss_in.sum(axis=-1, keepdims=True) / np.maximum(count_in, 1)
    pooled_out = m.ss_out.sum(axis=-1, keepdims=True) / np.maximum(count_out, 1)
    pooled_in, pooled_out = (
        np.where(count_in > 0, pooled_in, pooled_out),
        np.where(count_out > 0, pooled_out, pooled_in),
    )
    mu_in = np.where(m.n_in >= 1, m.mu_in, centre + delta_in)
    mu_out = np.where(m.n_out >= 1, m.mu_out, centre + delta_out)
    if global_variance:
        var_in = np.broadcast_to(pooled_in, m.ss_in.shape)
        var_out = np.broadcast_to(pooled_out, m.ss_out.shape)
    else:
        var_in = np.where(m.n_in >= 2, m.ss_in / np.maximum(m.n_in, 1), pooled_in)
        var_out = np.where(m.n_out >= 2, m.ss_out / np.maximum(m.n_out, 1), pooled_out)
    return mu_in, np.maximum(var_in, floor), mu_out, np.maximum(var_out, floor)


def gaussian_llr(x: np.ndarray, mu_in, var_in, mu_out, var_out) -> np.ndarray:
    """log N(x; μ_in, σ²_in) − log N(x; μ_out, σ²_out), float64."""
    return 0.5 * ((x - mu_out) ** 2 / var_out - (x - mu_in) ** 2 / var_in + np.log(var_out) - np.log(var_in))


def _score(
    x: np.ndarray, m: Moments, floor: float | np.ndarray, online: bool, global_variance: bool, clip: float
) -> np.ndarray:
    mu_in, var_in, mu_out, var_out = gaussians(m, floor, global_variance=global_variance)
    if online:
        score = gaussian_llr(x, mu_in, var_in, mu_out, var_out)
    else:
        t = (x - mu_out) / np.sqrt(var_out)
        score = log_ndtr(t) - log_ndtr(-t)
    return np.clip(score, -clip, clip)


def _floors_from_sums(total: np.ndarray, squares: np.ndarray, count: int) -> np.ndarray:
    """Per-row variance floors [R, 1] from each row's sum and sum of squares of its values (see module doc)."""
    spread = np.maximum(squares / count - (total / count) ** 2, 0.0)
    return np.where(spread > 0, _REL_FLOOR * spread, 1.0)[:, None]


def lira(
    target_stat: np.ndarray,
    shadow_stats: np.ndarray,
    shadow_member: np.ndarray,
    *,
    online: bool = True,
    global_variance: bool = False,
    clip: float = 100.0,
) -> np.ndarray:
    """LiRA score of each sample for the target: ``target_stat`` [N] against ``shadow_stats``/``shadow_member``
    [S, N] → float64 [N], finite, in [−clip, clip]. Higher = more likely a member. Rules: module docstring.

    ``target_stat`` may also be [T, N]: T statistics scored against the same shadows (e.g. one per checkpoint),
    each row as if passed alone; the shadow moments are then computed once."""
    stats, member = check_stats(shadow_stats, shadow_member, "LiRA")
    x = np.asarray(target_stat, dtype=np.float64)
    if x.shape[-1:] != stats.shape[1:] or x.ndim not in (1, 2) or not np.isfinite(x).all():
        raise ValueError(f"LiRA got a target statistic of shape {x.shape} for {stats.shape[1]} samples (or non-finite)")
    if x.ndim == 1:
        floor: float | np.ndarray = variance_floor(x, stats)
    else:
        total, squares = stats.sum() + x.sum(axis=1), (stats * stats).sum() + (x * x).sum(axis=1)
        floor = _floors_from_sums(total, squares, stats.size + x.shape[1])
    return _score(x, moments(stats, member), floor, online, global_variance, clip)


def _downdate(n, mu, ss, x, removed):
    """Moments without the value x where ``removed`` (a single-value removal, Welford in reverse)."""
    n_new = n - removed
    mu_new = np.where(n_new > 0, (n * mu - x) / np.maximum(n_new, 1), 0.0)
    ss_new = np.where(n_new > 0, np.maximum(ss - (x - mu) * (x - mu_new), 0.0), 0.0)
    return n_new, np.where(removed, mu_new, mu), np.where(removed, ss_new, ss)


def lira_loo(
    stats: np.ndarray,
    member: np.ndarray,
    *,
    online: bool = True,
    global_variance: bool = False,
    clip: float = 100.0,
    target_stats: np.ndarray | None = None,
    block: int = 16,
) -> np.ndarray:
    """Leave-one-out LiRA: row m of the result [M, N] scores model m as the target against the other M − 1
    models, exactly as :func:`lira` would. ``target_stats`` [M, N] (default ``stats``) is what is scored for
    model m, e.g. its statistic at an early checkpoint against the others' final ones. Vectorized: the
    population moments are computed once and model m's value is removed from them, ``block`` models at a time."""
    stats, member = check_stats(stats, member, "LiRA")
    if stats.shape[0] < 2:
        raise ValueError("leave-one-out LiRA needs at least 2 models")
    targets = stats if target_stats is None else check_stats(target_stats, member, "LiRA")[0]
    full = moments(stats, member)
    if target_stats is None:
        floor: float | np.ndarray = variance_floor(stats)
    else:  # the variance of (target row m ∪ the other rows), as lira() takes it, from running sums
        total = stats.sum() + targets.sum(axis=1) - stats.sum(axis=1)
        squares = (stats * stats).sum() + (targets * targets).sum(axis=1) - (stats * stats).sum(axis=1)
        floor = _floors_from_sums(total, squares, stats.size)
    result = np.empty_like(stats)
    for start in range(0, stats.shape[0], block):
        rows = slice(start, start + block)
        x, a = stats[rows], member[rows]
        n_in, mu_in, ss_in = _downdate(full.n_in, full.mu_in, full.ss_in, x, a)
        n_out, mu_out, ss_out = _downdate(full.n_out, full.mu_out, full.ss_out, x, ~a)
        m = Moments(n_in, mu_in, ss_in, n_out, mu_out, ss_out)
        row_floor = floor if np.isscalar(floor) else floor[rows]
        result[rows] = _score(targets[rows], m, row_floor, online, global_variance, clip)
    return result
