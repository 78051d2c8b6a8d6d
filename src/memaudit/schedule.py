"""Checkpoint schedule (METHOD §3.4) and the on-disk layout of one shadow's checkpoints.

``output_dir/ckpt-<step>/adapter/`` holds the LoRA weights of a checkpoint; ``ckpt-<step>/COMPLETE`` is written
last, so a folder without it is ignored (a kill mid-write). ``ckpt-<step>/trainer_state.pt`` (optimizer,
scheduler, loss history) exists only in the latest checkpoint.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

CKPT_PREFIX = "ckpt-"
COMPLETE_MARKER = "COMPLETE"
ADAPTER_DIR = "adapter"
STATE_FILE = "trainer_state.pt"
_CKPT_RE = re.compile(rf"^{CKPT_PREFIX}(\d+)$")


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


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"{CKPT_PREFIX}{step}"


def complete_checkpoints(output_dir: str | Path) -> dict[int, Path]:
    """Step → folder of every checkpoint under ``output_dir`` whose COMPLETE marker exists."""
    output_dir = Path(output_dir)
    found: dict[int, Path] = {}
    if not output_dir.is_dir():
        return found
    for child in output_dir.iterdir():
        match = _CKPT_RE.match(child.name)
        if match and child.is_dir() and (child / COMPLETE_MARKER).is_file():
            found[int(match.group(1))] = child
    return dict(sorted(found.items()))
