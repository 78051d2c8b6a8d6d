"""Synthetic score files with planted memorization, for the aggregate's tests and benchmark (no model needed).

Every model of a population trains on the ``paper`` split of a pool (``RandomState(s).choice(N, N//2)``). The
final logit gap of sample i under model m is ``base_i + member·(1 + shift·planted_i) + noise``: members of a
*planted* sample gain ``shift`` more than other members, which is what LiRA detects. Planted samples are all the
truly mislabeled ones plus random others; they are hard (low ``base``), so their members still end with a lower
gap (higher loss) than the other members. Earlier checkpoints interpolate from an untrained state; P-SMI of
members is lower for planted samples, more so at later checkpoints and deeper layers; the loss is the
cross-entropy over the options. Everything is seeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from memaudit.scorefile import write_scores


@dataclass
class SyntheticScores:
    """What :func:`write_synthetic_scores` wrote and planted."""

    paths: list[Path]
    pool: pd.DataFrame  # full pool, train rows first (pool.parquet schema)
    member: np.ndarray  # bool [M, N]
    planted: np.ndarray  # bool [N]


def paper_membership(n_models: int, n_samples: int) -> np.ndarray:
    """Model s trains on ``RandomState(s).choice(N, N // 2, replace=False)`` (METHOD §2)."""
    member = np.zeros((n_models, n_samples), dtype=bool)
    for s in range(n_models):
        member[s, np.random.RandomState(s).choice(n_samples, n_samples // 2, replace=False)] = True
    return member


def checkpoint_epochs(n_checkpoints: int) -> np.ndarray:
    """0, 0.2, …, 1, then whole epochs (the paper's 15-checkpoint schedule for n_checkpoints = 15)."""
    first = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])[:n_checkpoints]
    return np.concatenate([first, np.arange(2.0, 2.0 + max(0, n_checkpoints - len(first)))])


def _pool(n: int, n_test: int, k: int, rng: np.random.Generator, noise: float) -> pd.DataFrame:
    total = n + n_test
    n_opts = np.where(rng.random(total) < 0.1, k - 1, k) if k > 2 else np.full(total, k)
    gold = rng.integers(0, n_opts)
    noisy = rng.random(total) < noise
    noisy[n:] = False
    label = np.where(noisy, rng.integers(0, n_opts), gold)
    letters = [chr(ord("A") + j) for j in range(k)]
    return pd.DataFrame(
        {
            "global_index": np.arange(total, dtype=np.int64),
            "split": ["train"] * n + ["test"] * n_test,
            "prompt": [f"Question {i}?\n\n" for i in range(total)],
            "options": [letters[:m] for m in n_opts],
            "gold_index": gold.astype(np.int64),
            "label_index": label.astype(np.int64),
            "label_status": (~noisy).astype(np.int8),
            "template_id": np.zeros(total, dtype=np.int64),
            "source_id": [f"synthetic-{i}" for i in range(total)],
        }
    )


def _option_logits(gap: np.ndarray, label: np.ndarray, n_opts: np.ndarray, k: int, rng) -> np.ndarray:
    """Logits [C, N, K] whose label gap is ``gap`` [C, N]: best competitor at 0, others below, absent = −inf."""
    n = label.shape[0]
    others = -np.abs(rng.normal(0.0, 1.0, (n, k))) - 0.1
    runner_up = (label + 1 + rng.integers(0, np.maximum(n_opts - 1, 1))) % n_opts
    others[np.arange(n), runner_up] = 0.0
    others[np.arange(k)[None, :] >= n_opts[:, None]] = -np.inf
    logits = np.broadcast_to(others, (*gap.shape, k)).copy()
    logits[:, np.arange(n), label] = gap
    return logits.astype(np.float32)


def _loss(logits: np.ndarray, label: np.ndarray) -> np.ndarray:
    top = logits.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(logits - top).sum(axis=-1)) + top[..., 0]
    return (lse - logits[:, np.arange(label.shape[0]), label]).astype(np.float32)


def write_synthetic_scores(
    out_dir: str | Path,
    *,
    n_models: int = 8,
    n_samples: int = 400,
    n_checkpoints: int = 15,
    n_options: int = 4,
    layers: tuple[int, ...] = (1, 2),
    planted_fraction: float = 0.1,
    shift: float = 4.0,
    label_noise: float = 0.05,
    n_test: int = 20,
    with_mahalanobis: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> SyntheticScores:
    """Write ``n_models`` score files ``out_dir/shadow-<s>.npz`` and return the pool, membership and plant."""
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    n, k = n_samples, n_options
    pool = _pool(n, n_test, k, rng, label_noise)
    train, test = pool.iloc[:n], pool.iloc[n:]
    label = train["label_index"].to_numpy()
    n_opts = train["options"].map(len).to_numpy()
    wrong = label != train["gold_index"].to_numpy()
    planted = wrong | (rng.random(n) < planted_fraction - wrong.mean())
    member = paper_membership(n_models, n)
    epochs = checkpoint_epochs(n_checkpoints)
    progress_c = 1.0 - np.exp(-3.0 * epochs)  # 0 at checkpoint 0, ≈ 0.95 at epoch 1
    base = np.where(planted, rng.normal(-2.0, 1.0, n), rng.normal(3.5, 1.0, n))  # planted = hard
    start = rng.normal(0.0, 0.3, n)
    depth = (np.arange(len(layers)) + 1) / len(layers)
    hardness = planted + 0.3 * rng.standard_normal(n)  # what P-SMI sees, imperfectly
    test_base = rng.normal(2.0, 1.0, n_test)
    test_label = test["label_index"].to_numpy()
    paths = []
    for s in tqdm(range(n_models), desc="synthetic score files", disable=not progress):
        mrng = np.random.default_rng([seed, s])
        final = base + member[s] * (1.0 + shift * planted) + mrng.normal(0.0, 0.5, n)
        gap = progress_c[:, None] * final + (1.0 - progress_c[:, None]) * start
        logits = _option_logits(gap, label, n_opts, k, mrng)
        strength = progress_c[:, None, None] * depth[None, :, None]
        psmi = 0.3 - strength * hardness + mrng.normal(0.0, 0.15, (len(epochs), len(layers), n))
        psmi[:, :, ~member[s]] = np.nan
        test_gap = progress_c[:, None] * test_base
        test_logits = _option_logits(test_gap, test_label, test["options"].map(len).to_numpy(), k, mrng)
        arrays = {
            "shadow": np.int64(s),
            "global_index": train["global_index"].to_numpy(),
            "member": member[s],
            "label_index": label,
            "checkpoints": np.round(epochs * 100).astype(np.int64),
            "epochs": epochs,
            "option_logits": logits,
            "loss": _loss(logits, label),
            "layers": np.asarray(layers, dtype=np.int64),
            "psmi": psmi.astype(np.float32),
            "test_global_index": test["global_index"].to_numpy(),
            "test_label_index": test_label,
            "test_option_logits": test_logits,
            "test_loss": _loss(test_logits, test_label),
        }
        if with_mahalanobis:
            maha = np.abs(mrng.normal(3.0, 1.0, psmi.shape)) + 0.2 * strength * hardness
            maha[:, :, ~member[s]] = np.nan
            arrays["mahalanobis"] = maha.astype(np.float32)
        paths.append(write_scores(out_dir / f"shadow-{s}.npz", **arrays))
    return SyntheticScores(paths, pool, member, planted)
