"""What an audit does, counted exactly from its config and its pool's size: training steps and samples,
checkpoints, scoring forward passes, stored bytes; and the same for the early-warning path (one model to c_pred).

The pool's size comes from the data itself for the synthetic set and an own file, and from the upstream split
sizes (:data:`UPSTREAM_ROWS`) for the paper's datasets, so no download is needed to count.
"""

from __future__ import annotations

from dataclasses import dataclass

from memaudit.config import ExperimentConfig
from memaudit.cost.models import ModelShape, model_shape
from memaudit.errors import MemauditError
from memaudit.stages.schedule import schedule_for, steps_per_epoch

UPSTREAM_ROWS = {  # rows of each upstream split (the Hub's dataset cards; the local copies agree)
    "arc": {"train": 1119, "validation": 299, "test": 1172},  # ARC-Challenge
    "ethics": {"train": 13910, "validation": 3885, "test": 3964},  # commonsense (test = cm_test_hard)
    "mmlu": {"auxiliary_train": 99842, "dev": 285, "validation": 1531, "test": 14042},
}
STORED_BYTES = 4  # adapters and score arrays are float32 on disk


def _source_rows(cfg: ExperimentConfig) -> int:
    """Rows of the pool before the hold-out: train split (capped) + test split, or the synthetic set / own file."""
    ds = cfg.dataset
    if ds.name == "synthetic":
        rows = ds.synthetic.n_samples
    elif ds.name == "file":
        from memaudit.data.userfile import read_user_file

        rows = len(read_user_file(ds.path, ds.file_sha256))
    else:
        from memaudit.data.sources import spec_for

        spec, sizes = spec_for(ds.name), UPSTREAM_ROWS[ds.name]
        train, test = ds.train_split or spec.train_split, spec.test_split if ds.test_split is None else ds.test_split
        if train not in sizes or (test and test not in sizes):
            raise MemauditError(
                f"no known size for {ds.name} split {train!r} / {test!r}", f"use one of {', '.join(sizes)}"
            )
        return min(sizes[train], ds.max_train_rows or sizes[train]) + (sizes[test] if test else 0)
    return min(rows, ds.max_train_rows or rows)


def pool_sizes(cfg: ExperimentConfig) -> tuple[int, int]:
    """(train pool, held-out test rows) as the prepare task builds them."""
    rows = _source_rows(cfg)
    rows = min(rows, cfg.dataset.pool_size or rows)
    test = int(cfg.dataset.holdout_fraction * rows)
    return rows - test, test


@dataclass(frozen=True)
class AuditCounts:
    """An audit's work, exactly: per shadow and in all."""

    train_pool: int
    test_rows: int
    members: int  # training samples per shadow
    n_shadows: int
    steps_per_epoch: int
    steps_per_shadow: int
    epochs: int
    checkpoints: list[tuple[int, float]]  # (step, epoch) of every kept checkpoint
    layers: int  # hidden-state layers scored
    shape: ModelShape

    @property
    def samples_trained(self) -> int:
        """Training samples seen by all shadows: members × epochs × shadows."""
        return self.members * self.epochs * self.n_shadows

    @property
    def scoring_rows(self) -> int:
        """Forward passes of one sample, all shadows: every checkpoint scores the whole pool."""
        return len(self.checkpoints) * (self.train_pool + self.test_rows) * self.n_shadows

    def adapter_bytes(self, lora_targets: list[str], r: int) -> int:
        """Every stored checkpoint's LoRA adapter, all shadows."""
        return self.shape.lora_params(lora_targets, r) * STORED_BYTES * len(self.checkpoints) * self.n_shadows

    def score_bytes(self, n_options: int, with_mahalanobis: bool) -> int:
        """The score files: per checkpoint and sample the option logits, loss, P-SMI and its spread per layer,
        Mahalanobis per layer when computed."""
        per_sample = n_options + 1 + self.layers * (3 if with_mahalanobis else 2)
        return len(self.checkpoints) * (self.train_pool + self.test_rows) * per_sample * STORED_BYTES * self.n_shadows

    def hidden_bytes(self) -> int:
        """Hidden states, when stored (scoring.store_hidden): every layer at every checkpoint, bf16."""
        return len(self.checkpoints) * (self.train_pool + self.test_rows) * self.layers * self.shape.hidden * 2


def audit_counts(cfg: ExperimentConfig) -> AuditCounts:
    """The counts of the audit ``cfg`` describes."""
    train_pool, test_rows = pool_sizes(cfg)
    members = train_pool // 2
    t = cfg.training
    per_epoch = steps_per_epoch(members, t.batch_size, t.grad_accum)
    shape = model_shape(cfg.model)
    layers = len(shape.layers(cfg.model.layers))
    return AuditCounts(train_pool, test_rows, members, cfg.shadows.n_shadows, per_epoch, per_epoch * t.epochs,
                       t.epochs, schedule_for(cfg, members), layers, shape)  # fmt: skip


def early_warning_counts(counts: AuditCounts) -> tuple[int, int]:
    """(samples trained, member forward passes) of the early-warning path, at most: one model through its first
    epoch (c_pred falls within it in the paper's setups) and a probe of its members at each checkpoint there."""
    first_epoch = [c for c in counts.checkpoints if c[1] <= 1.0]
    return counts.members, len(first_epoch) * counts.members
