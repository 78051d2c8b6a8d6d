"""Baseline memorization predictors and the population ("static") metrics (docs/method.md §5.5–5.6).

Predictor signs (higher = more likely memorized): +loss, −logit gap, +Mahalanobis distance.
"""

from __future__ import annotations

import numpy as np
import torch

from memaudit.metrics.lira import check_stats, gaussian_llr, gaussians, moments, variance_floor
from memaudit.metrics.numeric import as_float64


def logit_gap(option_logits: np.ndarray, label_index: np.ndarray) -> np.ndarray:
    """Logit gap z[y] − max_{k≠y} z[k] of the inserted label: ``option_logits`` [..., K], ``label_index`` [...].

    Absent options are −inf and never win the max. Rule for a sample without any competing option: its gap is 0
    (a constant in every model, so it carries no membership signal and its LiRA score is 0). A label pointing at
    an absent option, or a NaN logit, raises ValueError.
    """
    z = np.asarray(option_logits, dtype=np.float64)
    y = np.asarray(label_index, dtype=np.int64)
    if z.ndim < 1 or y.shape != z.shape[:-1]:
        raise ValueError(f"logit_gap got logits of shape {z.shape} and labels of shape {y.shape}")
    if ((y < 0) | (y >= z.shape[-1])).any():
        raise ValueError("label_index out of range of the option logits")
    if np.isnan(z).any():
        raise ValueError("option logits contain NaN")
    own = np.take_along_axis(z, y[..., None], axis=-1)[..., 0]
    if not np.isfinite(own).all():
        raise ValueError("the inserted label's option logit is not finite")
    others = z.copy()
    np.put_along_axis(others, y[..., None], -np.inf, axis=-1)
    best_other = others.max(axis=-1)
    return np.where(np.isfinite(best_other), own - best_other, 0.0)


def mahalanobis(
    features: np.ndarray | torch.Tensor,
    *,
    n_components: int = 100,
    reference: np.ndarray | torch.Tensor | None = None,
    device: str | torch.device | None = None,
    rtol: float = 1e-10,
) -> np.ndarray:
    """Mahalanobis distance of each row of ``features`` [N, d] in the PCA space of ``reference`` → float64 [N].

    As the paper, the reference defaults to ``features`` itself (the target's training members, scored in-sample).
    PCA keeps the ``n_components`` leading components of the reference's biased covariance; in that space the
    covariance is diagonal, Σ = diag(λ) with λ the eigenvalues (/n), and d(i) = sqrt(Σ_j proj_j(i)² / λ_j).
    Components with λ ≤ ``rtol`` × λ_max are dropped (pseudo-inverse), so the result is finite; all-identical
    reference points give distance 0. Exact eigen-decomposition (no randomized SVD), float64, torch on ``device``.
    """
    if n_components < 1:
        raise ValueError(f"Mahalanobis needs n_components >= 1, got {n_components}")
    x = as_float64(features, device)
    ref = x if reference is None else as_float64(reference, x.device)
    if x.ndim != 2 or ref.ndim != 2 or x.shape[1] != ref.shape[1] or ref.shape[0] == 0:
        raise ValueError(f"Mahalanobis got features {tuple(x.shape)} and reference {tuple(ref.shape)}")
    if not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(ref).all())):
        raise ValueError("Mahalanobis got NaN or infinite features")
    mu = ref.mean(dim=0)
    rc = ref - mu
    n, dim = rc.shape
    if dim <= n:
        evals, evecs = torch.linalg.eigh(rc.T @ rc / n)
    else:  # fewer points than dimensions: eigen-decompose the Gram matrix instead
        evals, u = torch.linalg.eigh(rc @ rc.T / n)
        evecs = rc.T @ u / torch.sqrt(n * evals.clamp_min(torch.finfo(torch.float64).tiny))
    order = torch.argsort(evals, descending=True)[:n_components]
    evals, evecs = evals[order], evecs[:, order]
    top = float(evals[0]) if evals.numel() else 0.0
    keep = evals > rtol * top if top > 0 else torch.zeros_like(evals, dtype=torch.bool)
    proj = (x - mu) @ evecs[:, keep]
    return torch.sqrt(((proj * proj) / evals[keep]).sum(dim=1)).cpu().numpy()


def counterfactual_memorization(stats: np.ndarray, member: np.ndarray) -> np.ndarray:
    """Counterfactual memorization (Zhang et al. 2021) with the logit gap as performance: per sample,
    mean over the models trained on it − mean over the others, over ALL models ``stats``/``member`` [M, N]
    (the reference left model 0 out of the second mean). NaN where a sample is never IN or never OUT."""
    stats, member = check_stats(stats, member, "counterfactual memorization")
    n_in, n_out = member.sum(axis=0), (~member).sum(axis=0)
    mean_in = np.where(member, stats, 0.0).sum(axis=0) / np.maximum(n_in, 1)
    mean_out = np.where(member, 0.0, stats).sum(axis=0) / np.maximum(n_out, 1)
    return np.where((n_in > 0) & (n_out > 0), mean_in - mean_out, np.nan)


def attack_success_rate(stats: np.ndarray, member: np.ndarray, *, global_variance: bool = False) -> np.ndarray:
    """Per-sample success rate of the population LiRA attack (static ``memo_mia``, docs/method.md §5.6) → float64 [N].

    φ_in and φ_out are fitted per sample on ALL models ``stats``/``member`` [M, N] (the reference dropped model 0
    from φ_out), with the moments and fallback rule of :mod:`memaudit.metrics.lira`; model m is predicted IN
    for sample i iff log φ_in(g_m(i)) > log φ_out(g_m(i)), and ASR_i is the share of models predicted right.
    """
    stats, member = check_stats(stats, member, "attack success rate")
    mu_in, var_in, mu_out, var_out = gaussians(
        moments(stats, member), variance_floor(stats), global_variance=global_variance
    )
    predicted_in = gaussian_llr(stats, mu_in, var_in, mu_out, var_out) > 0
    return (predicted_in == member).mean(axis=0)
