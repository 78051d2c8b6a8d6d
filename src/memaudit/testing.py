"""Test and benchmark support: synthetic score files with planted memorization (no model needed).

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

from memaudit.data.splits import membership_matrix
from memaudit.stages.schedule import checkpoint_schedule
from memaudit.stages.scorefile import write_scores


@dataclass
class SyntheticScores:
    """What :func:`write_synthetic_scores` wrote and planted."""

    paths: list[Path]
    pool: pd.DataFrame  # full pool, train rows first (pool.parquet schema)
    member: np.ndarray  # bool [M, N]
    planted: np.ndarray  # bool [N]


def checkpoint_epochs(n_checkpoints: int) -> np.ndarray:
    """The paper's schedule shape for ``n_checkpoints``: 0, 0.2, …, 1, then whole epochs (15 checkpoints = 10
    epochs, as ARC), from the schedule the stages use."""
    schedule = checkpoint_schedule(100, 1, 1, max(1, n_checkpoints - 5), 5, 1)[:n_checkpoints]
    return np.array([epoch for _, epoch in schedule])


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


@dataclass
class _Plan:
    """The population-level draws: pool, membership, plant, and each sample's base statistics."""

    pool: pd.DataFrame
    member: np.ndarray
    planted: np.ndarray
    epochs: np.ndarray
    base: np.ndarray  # final logit gap without membership
    start: np.ndarray  # logit gap at checkpoint 0
    hardness: np.ndarray  # what P-SMI sees, imperfectly
    test_base: np.ndarray
    n_options: int


def _plan(rng, n: int, n_test: int, k: int, n_models: int, n_checkpoints: int, noise: float, fraction: float):
    pool = _pool(n, n_test, k, rng, noise)
    train = pool.iloc[:n]
    wrong = train["label_index"].to_numpy() != train["gold_index"].to_numpy()
    planted = wrong | (rng.random(n) < fraction - wrong.mean())
    base = np.where(planted, rng.normal(-2.0, 1.0, n), rng.normal(3.5, 1.0, n))  # planted = hard
    start = rng.normal(0.0, 0.3, n)
    hardness = planted + 0.3 * rng.standard_normal(n)
    member = membership_matrix(n_models, n, scheme="paper")
    epochs = checkpoint_epochs(n_checkpoints)
    return _Plan(pool, member, planted, epochs, base, start, hardness, rng.normal(2.0, 1.0, n_test), k)


def _model_arrays(plan: _Plan, s: int, mrng, layers: tuple[int, ...], depth: np.ndarray, shift: float, with_maha: bool):
    """The score-file arrays of model ``s``; ``depth`` [L] scales how well each layer's P-SMI sees the plant."""
    n = plan.member.shape[1]
    train, test = plan.pool.iloc[:n], plan.pool.iloc[n:]
    label, k = train["label_index"].to_numpy(), plan.n_options
    progress_c = 1.0 - np.exp(-3.0 * plan.epochs)  # 0 at checkpoint 0, ≈ 0.95 at epoch 1
    final = plan.base + plan.member[s] * (1.0 + shift * plan.planted) + mrng.normal(0.0, 0.5, n)
    gap = progress_c[:, None] * final + (1.0 - progress_c[:, None]) * plan.start
    logits = _option_logits(gap, label, train["options"].map(len).to_numpy(), k, mrng)
    strength = progress_c[:, None, None] * depth[None, :, None]
    psmi = 0.3 - strength * plan.hardness + mrng.normal(0.0, 0.15, (len(plan.epochs), len(layers), n))
    psmi[:, :, ~plan.member[s]] = np.nan
    test_label = test["label_index"].to_numpy()
    test_gap = progress_c[:, None] * plan.test_base
    test_logits = _option_logits(test_gap, test_label, test["options"].map(len).to_numpy(), k, mrng)
    arrays = {
        "shadow": np.int64(s),
        "global_index": train["global_index"].to_numpy(),
        "member": plan.member[s],
        "label_index": label,
        "checkpoints": np.round(plan.epochs * 100).astype(np.int64),
        "epochs": plan.epochs,
        "option_logits": logits,
        "loss": _loss(logits, label),
        "layers": np.asarray(layers, dtype=np.int64),
        "psmi": psmi.astype(np.float32),
        "test_global_index": test["global_index"].to_numpy(),
        "test_label_index": test_label,
        "test_option_logits": test_logits,
        "test_loss": _loss(test_logits, test_label),
    }
    if with_maha:
        maha = np.abs(mrng.normal(3.0, 1.0, psmi.shape)) + 0.2 * strength * plan.hardness
        maha[:, :, ~plan.member[s]] = np.nan
        arrays["mahalanobis"] = maha.astype(np.float32)
    return arrays


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
    layer_strength: tuple[float, ...] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> SyntheticScores:
    """Write ``n_models`` score files ``out_dir/shadow-<s>.npz`` and return the pool, membership and plant.

    ``layer_strength`` (one value per layer, default rising with depth) is how strongly each layer's P-SMI
    separates planted samples."""
    rng = np.random.default_rng(seed)
    plan = _plan(rng, n_samples, n_test, n_options, n_models, n_checkpoints, label_noise, planted_fraction)
    depth = np.asarray(layer_strength if layer_strength is not None else (np.arange(len(layers)) + 1) / len(layers))
    paths = []
    for s in tqdm(range(n_models), desc="synthetic score files", disable=not progress):
        mrng = np.random.default_rng([seed, s])
        arrays = _model_arrays(plan, s, mrng, layers, depth, shift, with_mahalanobis)
        paths.append(write_scores(Path(out_dir) / f"shadow-{s}.npz", **arrays))
    return SyntheticScores(paths, plan.pool, plan.member, plan.planted)
