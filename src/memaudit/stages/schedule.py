"""The checkpoint schedule (docs/method.md §3.4): which optimizer steps of a shadow's fine-tune are kept."""

from __future__ import annotations

import math

from memaudit.config import ExperimentConfig


def steps_per_epoch(n_members: int, batch_size: int, grad_accum: int) -> int:
    """Optimizer steps per epoch: ceil(ceil(n / batch_size) / grad_accum)."""
    return math.ceil(math.ceil(n_members / batch_size) / grad_accum)


def checkpoint_schedule(
    n_members: int,
    batch_size: int,
    grad_accum: int,
    epochs: int,
    per_epoch_in_first: int,
    every_epochs: int,
) -> list[tuple[int, float]]:
    """(step, epoch) of every checkpoint: step 0; ``per_epoch_in_first`` checkpoints in epoch 1 at multiples of
    ``save_steps = steps_per_epoch // per_epoch_in_first`` (the last one at the end of epoch 1); then the end of
    every ``every_epochs``-th epoch; and always the final step. Epoch = step · batch_size · grad_accum / n.

    With steps/epoch divisible by ``per_epoch_in_first`` this is the paper's schedule exactly (ARC: 0, 50, …, 250,
    500, …, 2500). Otherwise the paper's ``save_steps``/``after_c_only_every_n`` combination would skip epoch ends
    that are not multiples of ``save_steps``; here epoch ends are always kept.
    """
    if n_members <= 0:
        raise ValueError("n_members must be > 0")
    spe = steps_per_epoch(n_members, batch_size, grad_accum)
    save_steps = max(1, spe // per_epoch_in_first)
    steps = {0, spe, spe * epochs}
    steps.update(k * save_steps for k in range(1, per_epoch_in_first) if k * save_steps < spe)
    steps.update(e * spe for e in range(every_epochs, epochs + 1, every_epochs))
    return [(s, s * batch_size * grad_accum / n_members) for s in sorted(steps)]


def schedule_for(cfg: ExperimentConfig, n_members: int) -> list[tuple[int, float]]:
    """The schedule of a shadow with ``n_members`` training samples under ``cfg``: the one place it is expanded."""
    t, c = cfg.training, cfg.checkpoints
    return checkpoint_schedule(n_members, t.batch_size, t.grad_accum, t.epochs, c.per_epoch_in_first, c.every_epochs)
