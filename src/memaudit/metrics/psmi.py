"""Pointwise sliced mutual information (P-SMI) between hidden states and training labels (docs/method.md §5.2).

P-SMI(i) = mean over K random unit directions θ_k of

    log N(θ_kᵀx_i; μ_{k,y_i}, σ_{k,y_i}) − log Σ_c p_c N(θ_kᵀx_i; μ_kc, σ_kc)

with per-class Gaussians fitted, per direction, on the very samples that are scored (in-sample, as the paper)
and p_c the label frequencies. Low P-SMI ⇒ the representation does not support its label ⇒ more likely
memorized (the predictor is −P-SMI).

Departures from the reference code (docs/method.md §10.2), all deliberate:

- The directions are seeded (``numpy.random.default_rng(seed)``, N(0, I) rows normalised to unit length) and
  drawn on the CPU block by block from one stream, so the result does not depend on the device or the batch size.
- Everything is float64 and in log space (Gaussian log-densities + ``logsumexp``), so pdf underflow cannot make
  NaN or ±inf. Features are first centred and divided by their overall RMS; P-SMI is exactly invariant to both,
  and it makes the variance floor below scale-free.
- Per-class std is the unbiased one (ddof 1), as the paper's torch code (the ``psmi`` package uses ddof 0).
- Variance floor: along each direction a class's std is at least ``variance_floor`` × the std of all projected
  samples along it (duplicated points otherwise give σ = 0). If every sample projects to the same value along a
  direction, all σ are set to 1 there, which gives P-SMI 0 along it.
- A class with a single sample (the paper raises) borrows the pooled within-class variance of the classes that
  have ≥ 2 samples; its mean is the sample itself. If no class has 2 samples, ValueError.
- The std over directions (``return_std=True``, ddof 0 as ``np.std``) uses the same directions as the mean; the
  reference recomputed it with fresh directions.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from memaudit.metrics.numeric import as_float64, shares_memory

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _label_codes(labels: np.ndarray | torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels as codes 0..C-1 and the count of each class."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"P-SMI got labels of shape {labels.shape} for {n} samples")
    _, codes = np.unique(labels, return_inverse=True)
    return codes.astype(np.int64), np.bincount(codes).astype(np.int64)


def _normalised(x: torch.Tensor, owned: bool) -> torch.Tensor:
    """Centre and divide by the overall RMS (P-SMI is invariant to both; keeps magnitudes near 1).
    ``owned``: ``x`` is a private copy, so it is modified in place (saves one N × d float64 buffer)."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError("P-SMI got NaN or infinite features")
    mean = x.mean(dim=0, keepdim=True)
    x = x.sub_(mean) if owned else x - mean
    rms = float(torch.linalg.vector_norm(x)) / math.sqrt(x.numel())
    return x.div_(rms) if rms > 0 else x


def _pmi_block(
    z: torch.Tensor,
    codes: torch.Tensor,
    onehot: torch.Tensor,
    counts: torch.Tensor,
    log_prior: torch.Tensor,
    variance_floor: float,
) -> torch.Tensor:
    """Pointwise MI of every sample along every direction of one block: z [N, B] → [N, B]."""
    n_classes = counts.shape[0]
    mu = (onehot.T @ z) / counts[:, None]  # [C, B]
    resid = z - mu[codes]
    ss = onehot.T @ (resid * resid)  # [C, B]
    fitted = counts >= 2
    var = ss / (counts - 1).clamp_min(1)[:, None]
    if not bool(fitted.all()):
        pooled = ss[fitted].sum(dim=0) / (counts[fitted] - 1).sum()
        var = torch.where(fitted[:, None], var, pooled[None, :])
    total_std = z.std(dim=0, unbiased=False)  # [B]
    sigma = torch.maximum(var.sqrt(), variance_floor * total_std[None, :])
    sigma = torch.where(total_std[None, :] > 0, sigma, torch.ones_like(sigma))
    log_sigma = sigma.log()
    logpdf = -0.5 * ((z[None, :, :] - mu[:, None, :]) / sigma[:, None, :]) ** 2  # [C, N, B]
    logpdf -= (log_sigma + _LOG_SQRT_2PI)[:, None, :]
    own = logpdf.gather(0, codes[None, :, None].expand(1, -1, z.shape[1]))[0]
    logpdf += log_prior.reshape(n_classes, 1, 1)
    return own - torch.logsumexp(logpdf, dim=0)


class _Running:
    """Sum over directions, and (Chan et al.'s pairwise update) mean and squared deviations, block by block."""

    def __init__(self, n: int, device: torch.device, with_std: bool):
        self.total, self.mean, self.m2 = (torch.zeros(n, dtype=torch.float64, device=device) for _ in range(3))
        self.done, self.with_std = 0, with_std

    def add(self, pmi: torch.Tensor) -> None:
        size = pmi.shape[1]
        self.total += pmi.sum(dim=1)
        if self.with_std:
            block_mean = pmi.mean(dim=1)
            block_m2 = ((pmi - block_mean[:, None]) ** 2).sum(dim=1)
            delta = block_mean - self.mean
            self.m2 += block_m2 + delta * delta * (self.done * size / (self.done + size))
            self.mean += delta * (size / (self.done + size))
        self.done += size


def _classes(labels: np.ndarray | torch.Tensor, n: int, dev: torch.device):
    """(codes, counts, one-hot, log prior) of the labels as float64 tensors on ``dev``."""
    codes_np, counts_np = _label_codes(labels, n)
    if not (counts_np >= 2).any():
        raise ValueError("P-SMI needs a class with at least 2 samples")
    codes = torch.as_tensor(codes_np, device=dev)
    counts = torch.as_tensor(counts_np, dtype=torch.float64, device=dev)
    onehot = torch.nn.functional.one_hot(codes, counts_np.shape[0]).to(torch.float64)
    return codes, counts, onehot, (counts / n).log()


def psmi(
    features: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    n_directions: int = 2000,
    seed: int = 0,
    device: str | torch.device | None = None,
    return_std: bool = False,
    batch_size: int | None = None,
    max_block_bytes: int = 512 * 2**20,
    variance_floor: float = 1e-6,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """P-SMI of each sample: ``features`` [N, d] (numpy or torch), ``labels`` [N] → float64 [N], always finite.

    Runs with torch in float64 on ``device`` (default: the features' device, CPU for numpy input; "auto": CUDA
    when available), over blocks of ``batch_size`` directions (default: as many as fit in ``max_block_bytes`` of
    work arrays). With ``return_std=True`` also returns the per-sample std over directions (ddof 0). See the
    module docstring for the rules.
    """
    if n_directions < 1:
        raise ValueError(f"P-SMI needs at least one direction, got {n_directions}")
    x = as_float64(features, device)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"P-SMI got features of shape {tuple(x.shape)}")
    owned = not shares_memory(x, features)
    n, dim = x.shape
    codes, counts, onehot, log_prior = _classes(labels, n, x.device)
    x = _normalised(x, owned)
    if batch_size is None:
        batch_size = max(1, int(max_block_bytes // (8 * n * (3 * counts.shape[0] + 6))))
    rng = np.random.default_rng(seed)
    running = _Running(n, x.device, return_std)
    while running.done < n_directions:
        theta = rng.standard_normal((min(batch_size, n_directions - running.done), dim))
        theta /= np.linalg.norm(theta, axis=1, keepdims=True)
        z = x @ torch.as_tensor(theta, device=x.device).T
        running.add(_pmi_block(z, codes, onehot, counts, log_prior, variance_floor))
    result = (running.total / n_directions).cpu().numpy()
    if return_std:
        return result, (running.m2 / n_directions).sqrt().cpu().numpy()
    return result


def psmi_slope(psmi_by_checkpoint: np.ndarray) -> np.ndarray:
    """P-SMI(c) − P-SMI(checkpoint 0) along the first axis (``PSmiSlopeMetrics``); shape kept, float64."""
    values = np.asarray(psmi_by_checkpoint, dtype=np.float64)
    if values.ndim == 0 or values.shape[0] == 0:
        raise ValueError("psmi_slope needs values for at least checkpoint 0")
    return values - values[:1]
