"""Tiny hand-built pools, configs and models shared by test_models, test_train and test_score.

The toy task: the question names one keyword; the keyword's category decides the answer letter. A few rows get
a random (noisy) label. Everything is seeded and small enough to train in seconds on one CPU core.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from memaudit.config import load_config
from memaudit.data.poolfile import inserted_labels, validate_pool
from memaudit.model.tiny import ensure_base_model

CATEGORIES = {
    "A": ["red", "blue", "green"],
    "B": ["cat", "dog", "horse"],
    "C": ["oak", "pine", "elm"],
    "D": ["iron", "gold", "tin"],
}
FILLER = ["the", "a", "item", "thing", "here", "now", "small", "big"]
TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "pretrain_steps": 20,
    "pretrain_lr": 3e-3,
}


def toy_pool(n_train: int = 40, n_test: int = 8, seed: int = 0, noise: float = 0.1) -> pd.DataFrame:
    """A validated pool frame with ``n_train`` train rows then ``n_test`` test rows."""
    rng = np.random.default_rng(seed)
    letters = list(CATEGORIES)
    rows = []
    for i in range(n_train + n_test):
        gold = int(rng.integers(4))
        keyword = CATEGORIES[letters[gold]][int(rng.integers(3))]
        words = [*rng.choice(FILLER, size=int(rng.integers(1, 4))), keyword]
        prompt = f"Question: {' '.join(words)}?\n\nOPTIONS: A B C D\n\nAnswer:\n"
        is_train = i < n_train
        noisy = is_train and rng.random() < noise
        label = int(rng.integers(4)) if noisy else gold
        rows.append(
            {
                "global_index": 100 + i,
                "split": "train" if is_train else "test",
                "prompt": prompt,
                "options": letters,
                "gold_index": gold,
                "label_index": label,
                "label_status": 0 if noisy else 1,
                "template_id": 0,
                "source_id": f"toy-{i}",
            }
        )
    return validate_pool(pd.DataFrame(rows))


def toy_corpus(df: pd.DataFrame) -> list[str]:
    """Texts for the tiny tokenizer and its pre-training: prompts followed by their labels."""
    return [p + label for p, label in zip(df["prompt"], inserted_labels(df), strict=True)]


def toy_members(n: int, seed: int = 0) -> np.ndarray:
    member = np.zeros(n, dtype=bool)
    member[np.random.RandomState(seed).choice(n, n // 2, replace=False)] = True
    return member


TOY_SETS = [f"model.tiny.{k}={v}" for k, v in TINY.items()] + [
    "model.layers=[1, 2]",
    "training.batch_size=4",
    "training.grad_accum=1",
    "training.epochs=2",
    "training.max_len=32",
    "training.learning_rate=1e-2",
    "training.warmup_steps=1",
    "lora.r=4",
    "checkpoints.per_epoch_in_first=2",
    "scoring.batch_size=16",
    "scoring.psmi_directions=64",
    "scoring.mahalanobis_components=8",
]


def toy_config(*overrides: str):
    """The demo preset shrunk to the toy task (``--preset demo`` + ``TOY_SETS``): 2-layer hidden-32 model,
    2 epochs of batch 4 (10 steps for 20 members; checkpoints 0, 2, 5, 10)."""
    return load_config(preset="demo", overrides=[*TOY_SETS, *overrides])


def toy_base_model(cfg, df: pd.DataFrame, cache_dir: Path) -> Path:
    """The tiny base model for ``cfg`` trained on the pool's texts (built once per cache folder)."""
    return ensure_base_model(cfg.model, toy_corpus(df), cache_dir)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run several times faster on one intra-op thread (the 2-core test machine is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
