"""One shadow's local checkpoint folder, as the finetune and score stages read and write it.

``<folder>/ckpt-<step>/adapter/`` holds the LoRA weights of a checkpoint and ``ckpt-<step>/COMPLETE`` (the seal of
:mod:`memaudit.store.seal`, over the adapter files) is written last, so a folder without it is ignored (a kill
mid-write). ``ckpt-<step>/trainer_state.pt`` (optimizer, scheduler, history) exists only in the latest checkpoint.
``<folder>/run.json`` names the run the folder belongs to (fingerprint, shadow, members), so a resume never mixes
two runs, and ``<folder>/train_log.json`` is the training log.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memaudit.config import ExperimentConfig
from memaudit.errors import MemauditError
from memaudit.model.lora import save_adapter
from memaudit.store.atomic import write_bytes
from memaudit.store.layout import ADAPTER_DIR, TRAIN_LOG, TRAINER_STATE, checkpoint_name, checkpoint_step
from memaudit.store.seal import MARKER, folder_mismatches, seal_folder

RUN_FILE = "run.json"


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / checkpoint_name(step)


def complete_checkpoints(output_dir: str | Path) -> dict[int, Path]:
    """Step → folder of every checkpoint under ``output_dir`` whose COMPLETE marker exists."""
    output_dir = Path(output_dir)
    found: dict[int, Path] = {}
    if not output_dir.is_dir():
        return found
    for child in output_dir.iterdir():
        step = checkpoint_step(child.name)
        if step is not None and child.is_dir() and (child / MARKER).is_file():
            found[step] = child
    return dict(sorted(found.items()))


def verify_checkpoint(folder: Path) -> None:
    """Raise when a sealed checkpoint's adapter files differ from its COMPLETE marker."""
    bad = folder_mismatches(folder)
    if bad:
        raise MemauditError(
            f"checkpoint {folder} does not match its COMPLETE marker ({bad[0]})",
            "delete that checkpoint and re-run the finetune stage (it resumes)",
        )


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_bytes(path, json.dumps(data, indent=1).encode())


def run_identity(cfg: ExperimentConfig, shadow: int, member: np.ndarray) -> dict[str, Any]:
    """What makes a checkpoint folder this shadow's: the config fingerprint, the shadow id, its members."""
    members = np.flatnonzero(member).astype("<i8")
    digest = hashlib.sha256(members.tobytes()).hexdigest()
    return {"fingerprint": cfg.fingerprint(), "shadow": int(shadow), "members_sha256": digest}


def claim_output_dir(output_dir: str | Path, identity: dict[str, Any], *, resume: bool = True) -> dict[int, Path]:
    """Check that ``output_dir`` is empty or holds this very run, mark it as this run's; returns its complete
    checkpoints."""
    output_dir = Path(output_dir)
    done = complete_checkpoints(output_dir)
    run_file = output_dir / RUN_FILE
    if run_file.is_file():
        try:
            stored = json.loads(run_file.read_text())
        except ValueError:
            stored = None
        if stored != identity:
            raise MemauditError(
                f"{output_dir} holds checkpoints of another run (config, shadow or members differ)",
                "use an empty --output folder for this shadow",
            )
    elif done:
        raise MemauditError(f"{output_dir} holds checkpoints without {RUN_FILE}", "use an empty --output folder")
    if done and not resume:
        raise MemauditError(f"{output_dir} already holds checkpoints", "resume (the default) or use an empty folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_file, identity)
    return done


def _seal(folder: Path) -> None:
    """Seal a checkpoint folder over its adapter files (the trainer state is dropped from older checkpoints)."""
    seal_folder(folder, sorted(p for p in (folder / ADAPTER_DIR).rglob("*") if p.is_file()))


def _move_into_place(tmp: Path, final: Path) -> Path:
    _seal(tmp)
    if final.exists():  # re-written after resuming from an earlier checkpoint: same content
        shutil.rmtree(final)
    os.rename(tmp, final)
    return final


def save_checkpoint(model, output_dir: Path, step: int, state: dict[str, Any]) -> Path:
    """Write ``ckpt-<step>`` atomically (adapter, trainer state, COMPLETE last); drop older trainer states."""
    final = checkpoint_dir(output_dir, step)
    tmp = output_dir / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_adapter(model, tmp / ADAPTER_DIR)
    torch.save(state, tmp / TRAINER_STATE)
    _move_into_place(tmp, final)
    for other_step, other in complete_checkpoints(output_dir).items():
        if other_step != step:
            (other / TRAINER_STATE).unlink(missing_ok=True)
    return final


def restore_checkpoint(
    output_dir: str | Path, step: int, adapter_dir: str | Path, state_file: str | Path | None = None
) -> Path:
    """Lay a stored checkpoint (adapter folder, optional trainer state) into ``output_dir`` as ``finetune`` and
    ``score_shadow`` expect it; the files are moved. Used to resume from, or score, checkpoints kept elsewhere."""
    final = checkpoint_dir(output_dir, step)
    tmp = Path(output_dir) / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.move(str(adapter_dir), tmp / ADAPTER_DIR)
    if state_file is not None:
        shutil.move(str(state_file), tmp / TRAINER_STATE)
    return _move_into_place(tmp, final)


def finished_log(output_dir: Path, steps: set[int]) -> dict[str, Any] | None:
    """The train log of a finished run (one that lists every scheduled checkpoint ``steps``), else None."""
    try:
        log = json.loads((output_dir / TRAIN_LOG).read_text())
    except (OSError, ValueError):
        return None
    return log if steps <= {c["step"] for c in log.get("checkpoints", [])} else None


def latest_state(done: dict[int, Path]) -> tuple[int, Path, dict[str, Any]] | None:
    """(step, folder, trainer state) of the latest checkpoint that holds a trainer state, else None."""
    for step in sorted(done, reverse=True):
        state_path = done[step] / TRAINER_STATE
        if state_path.is_file():
            try:
                return step, done[step], torch.load(state_path, map_location="cpu", weights_only=True)
            except Exception as exc:  # a truncated state file
                raise MemauditError(
                    f"trainer state {state_path} is unreadable ({type(exc).__name__})",
                    f"delete {done[step]} and resume from the checkpoint before it",
                ) from None
    return None
