"""The pool file (``pool.parquet``): one row per sample, train pool and held-out test rows, in pool order.

Columns (extra columns are kept, e.g. the synthetic generator's ``hard`` flag):

| column | type | meaning |
|---|---|---|
| ``global_index`` | int64 | stable sample id (docs/method.md §1.1) |
| ``split`` | str | ``train`` (the pool the shadows are drawn from) or ``test`` (the 1/9 hold-out) |
| ``prompt`` | str | templated text up to, not including, the label: ends with ``"\\n\\n"`` or similar |
| ``options`` | list[str] | option labels (``A``..``D``, ``0``..``3``, ``0``/``1``) |
| ``gold_index`` | int64 | index of the true label in ``options`` |
| ``label_index`` | int64 | index of the inserted (possibly random) label in ``options`` |
| ``label_status`` | int8 | 1 = true label kept, 0 = random label drawn (it may equal the truth) |
| ``template_id`` | int64 | prompt template used |
| ``source_id`` | str | upstream id or row reference |

The *train pool* is the ``train`` rows in file order; a sample's position in it is what the membership
matrix and the score files index.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from memaudit.errors import MemauditError
from memaudit.store.atomic import atomic_path

POOL_COLUMNS: dict[str, str] = {
    "global_index": "int64",
    "split": "object",
    "prompt": "object",
    "options": "object",
    "gold_index": "int64",
    "label_index": "int64",
    "label_status": "int8",
    "template_id": "int64",
    "source_id": "object",
}


def validate_pool(df: pd.DataFrame, where: str = "pool") -> pd.DataFrame:
    """Check columns, types and invariants; returns the frame with canonical dtypes."""
    missing = [c for c in POOL_COLUMNS if c not in df.columns]
    if missing:
        raise MemauditError(f"{where} lacks column(s) {', '.join(missing)}", "rebuild it with memaudit stage prepare")
    if len(df) == 0:
        raise MemauditError(f"{where} is empty", "check the dataset source and its filters")
    df = df.astype({c: t for c, t in POOL_COLUMNS.items() if t != "object"})
    if df["global_index"].duplicated().any():
        raise MemauditError(f"{where} has duplicate global_index values", "rebuild it with memaudit stage prepare")
    bad_split = set(df["split"].unique()) - {"train", "test"}
    if bad_split:
        raise MemauditError(f"{where} has unknown split(s) {sorted(bad_split)}", "use 'train' or 'test'")
    n_options = df["options"].map(len).to_numpy()
    for column in ("gold_index", "label_index"):
        values = df[column].to_numpy()
        if ((values < 0) | (values >= n_options)).any():
            row = int(np.flatnonzero((values < 0) | (values >= n_options))[0])
            raise MemauditError(
                f"{where}: {column} out of range of the options at global_index {df['global_index'].iloc[row]}",
                "rebuild the pool with memaudit stage prepare",
            )
    if not (df["split"] == "train").any():
        raise MemauditError(f"{where} has no train rows", "use a larger dataset or a smaller holdout_fraction")
    return df


def write_pool(df: pd.DataFrame, path: str | Path) -> Path:
    """Validate and write the pool atomically (temp file, then rename)."""
    df = validate_pool(df)
    out = df.copy()
    out["options"] = out["options"].map(list)
    with atomic_path(path) as tmp:
        out.to_parquet(tmp, index=False)
    return Path(path)


def read_pool(path: str | Path) -> pd.DataFrame:
    """Read and validate a pool file; a missing or corrupted file raises :class:`MemauditError`."""
    path = Path(path)
    if not path.is_file():
        raise MemauditError(f"pool file {path} not found", "run memaudit stage prepare first")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for truncated or foreign files
        raise MemauditError(
            f"pool file {path} is not a readable parquet file ({type(exc).__name__})",
            "delete it and run memaudit stage prepare again",
        ) from None
    df["options"] = df["options"].map(lambda v: [str(x) for x in v])
    return validate_pool(df, where=f"pool file {path}")


def train_pool(df: pd.DataFrame) -> pd.DataFrame:
    """The train rows in pool order, re-indexed 0..N-1 (positions used by splits and score files)."""
    return df[df["split"] == "train"].reset_index(drop=True)


def inserted_labels(df: pd.DataFrame) -> list[str]:
    """The label string actually trained on, per row."""
    return [opts[i] for opts, i in zip(df["options"], df["label_index"], strict=True)]
