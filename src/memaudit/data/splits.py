"""Which train-pool samples each shadow model trains on (docs/method.md §2): the membership matrix ``member[M, N]``.

Column j is the j-th row of the train pool (:func:`memaudit.data.poolfile.train_pool` order), row s is shadow model s.
The matrix is stored as a ``.npy`` file (bool, C order) written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from memaudit.config import ExperimentConfig
from memaudit.data.poolfile import read_pool, train_pool
from memaudit.errors import MemauditError
from memaudit.store.atomic import atomic_path

SCHEMES = ("paper", "balanced")


def membership_matrix(n_models: int, n_samples: int, *, scheme: str = "paper", seed: int = 0) -> np.ndarray:
    """Boolean ``[n_models, n_samples]`` membership matrix.

    - ``paper``: row s is ``np.random.RandomState(s).choice(n_samples, n_samples // 2, replace=False)``, the
      reference's ``get_random_split`` with ``split_id = s``, so every model holds exactly ``n_samples // 2``
      samples. ``seed`` is not used: each model's split id is its seed, so shadow s of any run on the same pool
      trains on the same samples.
    - ``balanced`` (``n_models`` even): every sample is IN for exactly ``n_models / 2`` models, and every model
      holds ``n_samples // 2`` samples (odd ``n_samples``: a seeded half of the models hold one more). Seeded by
      ``seed``: each column gets a random half of the models, then members move between over- and under-full
      rows within a column (keeping every column's count) until the row counts are met.
    """
    if n_models < 1 or n_samples < 2:
        raise MemauditError(
            f"membership needs at least 1 model and 2 samples (got {n_models} and {n_samples})",
            "use a larger pool or more shadows",
        )
    if scheme == "paper":
        member = np.zeros((n_models, n_samples), dtype=bool)
        for s in range(n_models):
            member[s, np.random.RandomState(s).choice(n_samples, n_samples // 2, replace=False)] = True
        return member
    if scheme == "balanced":
        return _balanced(n_models, n_samples, seed)
    raise MemauditError(f"unknown membership scheme {scheme!r}", f"use one of: {', '.join(SCHEMES)}")


def membership_for(cfg: ExperimentConfig, n_samples: int) -> np.ndarray:
    """The membership matrix of ``cfg``'s shadow population over a train pool of ``n_samples``."""
    s = cfg.shadows
    return membership_matrix(s.n_shadows, n_samples, scheme=s.scheme, seed=s.seed)


def _balanced(n_models: int, n_samples: int, seed: int) -> np.ndarray:
    if n_models % 2:
        raise MemauditError(
            f"scheme 'balanced' needs an even number of models (got {n_models})",
            "use an even shadows.n_shadows, or scheme 'paper'",
        )
    rng = np.random.RandomState(seed)
    half = n_models // 2
    member = np.zeros((n_models, n_samples), dtype=bool)
    np.put_along_axis(member, np.argsort(rng.random_sample((n_models, n_samples)), axis=0)[:half], True, axis=0)
    target = np.full(n_models, n_samples // 2)
    if n_samples % 2:
        target[rng.permutation(n_models)[:half]] += 1
    counts = member.sum(axis=1)
    while True:
        over, under = np.flatnonzero(counts > target), np.flatnonzero(counts < target)
        if len(over) == 0:
            return member
        a, b = over[rng.randint(len(over))], under[rng.randint(len(under))]
        candidates = np.flatnonzero(member[a] & ~member[b])  # non-empty: counts[a] > counts[b]
        j = candidates[rng.randint(len(candidates))]
        member[a, j], member[b, j] = False, True
        counts[a] -= 1
        counts[b] += 1


def write_membership(matrix: np.ndarray, path: str | Path) -> Path:
    """Write a bool ``[M, N]`` matrix as ``.npy`` atomically (temp file, then rename)."""
    matrix = np.asarray(matrix)
    if matrix.dtype != np.bool_ or matrix.ndim != 2:
        raise MemauditError(
            f"membership must be a 2-D bool array (got {matrix.dtype} with shape {matrix.shape})",
            "build it with memaudit.data.splits.membership_matrix",
        )
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(matrix), allow_pickle=False)
    return Path(path)


def read_membership(path: str | Path, n_samples: int | None = None) -> np.ndarray:
    """Read and validate a membership file; missing, corrupt or mis-shaped files raise :class:`MemauditError`."""
    path = Path(path)
    if not path.is_file():
        raise MemauditError(f"membership file {path} not found", "run memaudit stage split first")
    try:
        matrix = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/EOFError/OSError for truncated or foreign files
        raise MemauditError(
            f"membership file {path} is not a readable .npy file ({type(exc).__name__})",
            "delete it and run memaudit stage split again",
        ) from None
    if matrix.dtype != np.bool_ or matrix.ndim != 2:
        raise MemauditError(
            f"membership file {path} holds {matrix.dtype} with shape {matrix.shape}, expected a 2-D bool matrix",
            "delete it and run memaudit stage split again",
        )
    if n_samples is not None and matrix.shape[1] != n_samples:
        raise MemauditError(
            f"membership file {path} covers {matrix.shape[1]} samples but the pool has {n_samples} train rows",
            "run memaudit stage split again on this pool",
        )
    return matrix


def member_mask(member: np.ndarray, n_train: int) -> np.ndarray:
    """Validate a shadow's membership vector (bool [N] over the train pool); returns it as a bool array."""
    member = np.asarray(member)
    if member.dtype != np.bool_:
        raise MemauditError(f"membership has dtype {member.dtype}, expected bool", "pass a row of member.npy")
    if member.shape != (n_train,):
        raise MemauditError(
            f"membership has shape {member.shape} but the train pool has {n_train} rows",
            "use the member.npy written by the split stage for this pool",
        )
    if not member.any():
        raise MemauditError("this shadow has no training members", "check the split (member.npy)")
    return member


def shadow_members(pool_path: str | Path, member_path: str | Path, shadow: int) -> tuple[pd.DataFrame, np.ndarray]:
    """The pool and shadow ``shadow``'s row of the membership matrix, checked against each other."""
    pool = read_pool(pool_path)
    member = read_membership(member_path, n_samples=len(train_pool(pool)))
    if not 0 <= shadow < member.shape[0]:
        raise MemauditError(
            f"shadow {shadow} out of range 0..{member.shape[0] - 1} of {member_path}",
            "pass a shadow id in that range (--shadow), or re-run the split stage for this config",
        )
    return pool, member_mask(member[shadow], member.shape[1])
