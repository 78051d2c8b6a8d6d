"""The pool (docs/method.md §1): one fixed, labelled, prompt-formatted set of samples per dataset.

:func:`build_pool` follows the reference's ``get_dataset`` / ``formatting`` / ``add_labels`` exactly:

1. rows of the upstream ``train_split`` (capped at ``max_train_rows``) get ``global_index`` 0..n-1, rows of
   ``test_split`` continue the numbering; the pool has N = both together (at most ``pool_size``: the first rows);
2. hold-out: ``RandomState(seed).choice(range(N), int(holdout_fraction * N), replace=False)`` are the test rows
   (kept in that drawn order, the order the reference formats them in), the other rows are the train pool in
   ascending ``global_index`` order;
3. templates: ``RandomState(seed).randint(0, len(templates))`` drawn sequentially over the train rows, a fresh
   ``RandomState(seed)`` for the test rows (ETHICS: the AITA/WIBTA template set for Reddit posts);
4. label noise, once, over the whole train pool with its own ``RandomState(seed)``: ``if rng.random() <=
   label_noise`` the label is ``rng.randint(0, n_options)`` (status 0; it may equal the truth), else the gold
   label (status 1). Test rows always keep the gold label. The noisy set is a property of the pool, identical for
   every shadow model.

The pool file is written with :func:`memaudit.data.poolfile.write_pool`; besides its schema it holds ``template_set``,
``source_split`` and the source's own extra columns (MMLU ``subject``; synthetic ``hard``, ``keyword_rank``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from memaudit.config import ExperimentConfig
from memaudit.data.sources import RAW_COLUMNS, hub_snapshot, load_split, spec_for
from memaudit.data.templates import TEMPLATE_SETS, ethics_template_set, format_ethics, format_mcq
from memaudit.data.userfile import read_user_file
from memaudit.errors import MemauditError


def load_sources(
    cfg: ExperimentConfig, data_dir: str | Path | None = None, progress: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """The raw train_hf and test_hf rows of the configured dataset, and its template family (mcq / ethics).

    The synthetic set and an own data file (dataset ``file``, :mod:`memaudit.data.userfile`) have no test_hf rows
    and are multiple-choice; ``data_dir`` is for the paper's datasets only."""
    ds = cfg.dataset
    if ds.name in ("synthetic", "file"):
        from memaudit.data.synthetic import generate_items

        train = generate_items(ds.synthetic) if ds.synthetic is not None else read_user_file(ds.path, ds.file_sha256)
        if ds.max_train_rows is not None:
            train = train.iloc[: ds.max_train_rows]
        return train, train.iloc[:0], "mcq"
    spec = spec_for(ds.name)
    config = ds.hub_config or spec.hub_config
    train_split = ds.train_split or spec.train_split
    test_split = spec.test_split if ds.test_split is None else ds.test_split
    folder = data_dir if data_dir is not None else ds.data_dir
    root = Path(folder) if folder is not None else hub_snapshot(spec, ds.hub_id or spec.hub_id, config, ds.revision)
    if folder is not None and not root.is_dir():
        raise MemauditError(f"data dir {root} does not exist", "pass --data-dir with an existing folder")
    train = load_split(spec, root, config, train_split, limit=ds.max_train_rows, progress=progress)
    test = load_split(spec, root, config, test_split, progress=progress) if test_split else train.iloc[:0]
    return train, test, spec.family


def _format(rows: pd.DataFrame, family: str, seed: int, force_template: int | None):
    """Prompts and template ids, one ``randint`` per row from a fresh ``RandomState(seed)``."""
    rng = np.random.RandomState(seed)
    prompts, template_ids, template_sets = [], [], []
    for text, labels, texts in zip(rows["text"], rows["option_labels"], rows["option_texts"], strict=True):
        set_name = ethics_template_set(text) if family == "ethics" else "mcq"
        n_templates = len(TEMPLATE_SETS[set_name])
        if force_template is None:
            template_id = int(rng.randint(0, n_templates))
        elif force_template < n_templates:
            template_id = force_template
        else:
            raise MemauditError(
                f"force_template {force_template} is out of range: the {set_name} set has {n_templates} templates",
                f"use dataset.force_template < {n_templates}",
            )
        prompt = (
            format_ethics(text, template_id) if family == "ethics" else format_mcq(text, labels, texts, template_id)
        )
        prompts.append(prompt)
        template_ids.append(template_id)
        template_sets.append(set_name)
    return prompts, template_ids, template_sets


def label_noise(
    gold_index: np.ndarray, n_options: np.ndarray, noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Inserted label index and status (1 = gold kept, 0 = random draw) per train-pool row (docs/method.md §1.3)."""
    rng = np.random.RandomState(seed)
    label_index = np.asarray(gold_index, dtype=np.int64).copy()
    status = np.ones(len(label_index), dtype=np.int8)
    for i, k in enumerate(np.asarray(n_options)):
        if rng.random() <= noise:
            label_index[i] = rng.randint(0, int(k))
            status[i] = 0
    return label_index, status


def holdout_positions(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train positions ascending, test positions in drawn order) of a pool of ``n`` rows."""
    test = np.random.RandomState(seed).choice(range(n), int(fraction * n), replace=False).astype(np.int64)
    keep = np.ones(n, dtype=bool)
    keep[test] = False
    return np.flatnonzero(keep), test


def build_pool(cfg: ExperimentConfig, data_dir: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """The pool of docs/method.md §1 in the :mod:`memaudit.data.poolfile` schema (train rows, then test rows)."""
    ds = cfg.dataset
    train_hf, test_hf, family = load_sources(cfg, data_dir, progress)
    full = pd.concat([train_hf, test_hf], ignore_index=True).iloc[: ds.pool_size]
    if len(full) == 0:
        raise MemauditError(f"dataset {ds.name} has no rows", "check the data files and dataset.max_train_rows")
    full["global_index"] = np.arange(len(full), dtype=np.int64)
    train_pos, test_pos = holdout_positions(len(full), ds.holdout_fraction, ds.seed)
    if len(train_pos) == 0:
        raise MemauditError(f"the hold-out leaves no train rows out of {len(full)}", "lower dataset.holdout_fraction")
    parts = []
    for split, positions in (("train", train_pos), ("test", test_pos)):
        rows = full.iloc[positions].reset_index(drop=True)
        prompts, template_ids, template_sets = _format(rows, family, ds.seed, ds.force_template)
        gold = rows["gold_index"].to_numpy(dtype=np.int64)
        if split == "train":
            n_options = rows["option_labels"].map(len).to_numpy()
            label_index, status = label_noise(gold, n_options, ds.label_noise, ds.seed)
        else:
            label_index, status = gold.copy(), np.ones(len(rows), dtype=np.int8)
        extras = rows.drop(columns=[*RAW_COLUMNS, "global_index"])
        parts.append(
            pd.DataFrame(
                {
                    "global_index": rows["global_index"].to_numpy(),
                    "split": split,
                    "prompt": prompts,
                    "options": rows["option_labels"].map(list),
                    "gold_index": gold,
                    "label_index": label_index,
                    "label_status": status,
                    "template_id": np.asarray(template_ids, dtype=np.int64),
                    "source_id": rows["source_id"].astype(str),
                    "template_set": template_sets,
                    "source_split": rows["source_split"].astype(str),
                }
            ).join(extras)
        )
    return pd.concat(parts, ignore_index=True)


def pool_summary(pool: pd.DataFrame) -> dict[str, Any]:
    """Sizes and label statistics of a pool (train rows unless said otherwise)."""
    train = pool[pool["split"] == "train"]
    n_options = Counter(int(k) for k in train["options"].map(len))
    return {
        "n_train": len(train),
        "n_test": int((pool["split"] == "test").sum()),
        "share_random_labels": float((train["label_status"] == 0).mean()),
        "share_wrong_labels": float((train["label_index"] != train["gold_index"]).mean()),
        "options_per_sample": dict(sorted(n_options.items())),
    }
