"""One shadow's LoRA fine-tune on its members (METHOD §3), resumable, with the paper's checkpoint schedule.

A plain torch loop (no HF Trainer): AdamW (β = (0.9, 0.999), eps 1e-8), linear warmup then linear decay to 0
over the total steps, gradient-norm clipping, ``batch_size × grad_accum`` samples per optimizer step. The loss is
the answer-token cross-entropy over the full vocabulary: logits at position −3 against the label at −2.

Determinism: the data order of epoch e is a permutation drawn from ``(training.seed, e)``, the LoRA init from
``lora.seed + shadow``, and the torch RNG (dropout) is reseeded from ``(training.seed, shadow, step)`` before
every optimizer step. No RNG state therefore needs saving: a run resumed from a checkpoint reproduces the
uninterrupted run exactly. Departures from the paper's HF Trainer: the per-step loss is the mean over the
samples of the optimizer step (the same for any micro-batching), and the data order/dropout streams differ
from HF's (seed 42) while being just as seeded.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from memaudit.config import ExperimentConfig
from memaudit.errors import MemauditError
from memaudit.forward import answer_forward, autocast, encode_frame, member_mask
from memaudit.models import (
    apply_lora,
    load_adapter_weights,
    load_base_model,
    load_tokenizer,
    resolve_device,
    save_adapter,
)
from memaudit.pool import train_pool, validate_pool
from memaudit.schedule import (
    ADAPTER_DIR,
    COMPLETE_MARKER,
    STATE_FILE,
    checkpoint_dir,
    checkpoint_schedule,
    complete_checkpoints,
    steps_per_epoch,
)

RUN_FILE = "run.json"
LOG_FILE = "train_log.json"

__all__ = ["checkpoint_schedule", "claim_output_dir", "finetune", "restore_checkpoint"]


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def _linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """HF's linear schedule: ramp up over ``warmup`` steps, then down to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process_max_rss"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run_identity(cfg: ExperimentConfig, shadow: int, member: np.ndarray) -> dict[str, Any]:
    members = np.flatnonzero(member).astype("<i8")
    return {"fingerprint": cfg.fingerprint(), "shadow": int(shadow), "members_sha256": _sha256_bytes(members)}


def _sha256_bytes(array: np.ndarray) -> str:
    return hashlib.sha256(array.tobytes()).hexdigest()


def _claim_output_dir(output_dir: Path, identity: dict[str, Any], resume: bool) -> dict[int, Path]:
    """Check that ``output_dir`` is empty or holds this very run; returns its complete checkpoints."""
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
    _write_json(run_file, identity)
    return done


def _seal(folder: Path, step: int, epoch: float) -> None:
    """Write the checkpoint's COMPLETE marker (step, epoch, sha256 of the adapter files)."""
    files = {str(p.relative_to(folder)): _sha256(p) for p in sorted((folder / ADAPTER_DIR).rglob("*")) if p.is_file()}
    (folder / COMPLETE_MARKER).write_text(json.dumps({"step": step, "epoch": epoch, "files": files}, indent=1))


def _save_checkpoint(model, output_dir: Path, step: int, epoch: float, state: dict[str, Any]) -> Path:
    """Write ``ckpt-<step>`` atomically (adapter, trainer state, COMPLETE last); drop older trainer states."""
    final = checkpoint_dir(output_dir, step)
    tmp = output_dir / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_adapter(model, tmp / ADAPTER_DIR)
    torch.save(state, tmp / STATE_FILE)
    _seal(tmp, step, epoch)
    if final.exists():  # re-written after resuming from an earlier checkpoint: same content
        shutil.rmtree(final)
    os.rename(tmp, final)
    for other_step, other in complete_checkpoints(output_dir).items():
        if other_step != step:
            (other / STATE_FILE).unlink(missing_ok=True)
    return final


def restore_checkpoint(
    output_dir: str | Path, step: int, epoch: float, adapter_dir: str | Path, state_file: str | Path | None = None
) -> Path:
    """Lay a stored checkpoint (adapter folder, optional trainer state) into ``output_dir`` as ``finetune`` and
    ``score_shadow`` expect it; the files are moved. Used to resume from, or score, checkpoints kept elsewhere."""
    output_dir = Path(output_dir)
    final = checkpoint_dir(output_dir, step)
    tmp = output_dir / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.move(str(adapter_dir), tmp / ADAPTER_DIR)
    if state_file is not None:
        shutil.move(str(state_file), tmp / STATE_FILE)
    _seal(tmp, step, epoch)
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    return final


def claim_output_dir(output_dir: str | Path, cfg: ExperimentConfig, shadow: int, member: np.ndarray) -> None:
    """Mark ``output_dir`` as holding this shadow's run (what ``finetune`` checks before resuming in it)."""
    _claim_output_dir(Path(output_dir), _run_identity(cfg, shadow, member), resume=True)


def _finished_log(output_dir: Path, schedule: dict[int, float]) -> dict[str, Any] | None:
    """The train log of a finished run (one that lists every scheduled checkpoint), else None."""
    try:
        log = json.loads((output_dir / LOG_FILE).read_text())
    except (OSError, ValueError):
        return None
    return log if set(schedule) <= {c["step"] for c in log.get("checkpoints", [])} else None


def _latest_state(done: dict[int, Path]) -> tuple[int, Path, dict[str, Any]] | None:
    for step in sorted(done, reverse=True):
        state_path = done[step] / STATE_FILE
        if state_path.is_file():
            try:
                return step, done[step], torch.load(state_path, map_location="cpu", weights_only=True)
            except Exception as exc:  # a truncated state file
                raise MemauditError(
                    f"trainer state {state_path} is unreadable ({type(exc).__name__})",
                    f"delete {done[step]} and resume from the checkpoint before it",
                ) from None
    return None


class _Trainer:
    """The mutable state of one training session (model, optimizer, history) and its checkpointing."""

    def __init__(self, cfg: ExperimentConfig, shadow: int, n: int, output_dir: Path, dev: torch.device):
        self.cfg, self.shadow, self.n, self.output_dir, self.dev = cfg, shadow, n, output_dir, dev
        t = cfg.training
        self.spe = steps_per_epoch(n, t.batch_size, t.grad_accum)
        self.total = self.spe * t.epochs
        self.schedule = dict(
            checkpoint_schedule(
                n,
                t.batch_size,
                t.grad_accum,
                t.epochs,
                cfg.checkpoints.per_epoch_in_first,
                cfg.checkpoints.every_epochs,
            )
        )
        self.history: dict[str, Any] = {
            "step_loss": [],
            "curve": [],
            "checkpoints": [],
            "wall_time_s": 0.0,
            "tokens": 0,
        }
        self.session_tokens = 0
        self.session_start = self.last_time = time.perf_counter()
        self.model = self.optimizer = self.scheduler = None

    def build(self, base_model: str | Path | None) -> None:
        cfg, t = self.cfg, self.cfg.training
        model = load_base_model(cfg.model, base_model, self.dev)
        self.model = apply_lora(model, cfg.lora, cfg.lora.seed + self.shadow)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=t.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=t.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _linear_schedule(t.warmup_steps, self.total))

    def restore(self, path: Path, state: dict[str, Any]) -> None:
        load_adapter_weights(self.model, path / ADAPTER_DIR, self.cfg.lora)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = state["history"]

    def log_state(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.session_start
        peak, peak_kind = _peak_memory(self.dev)
        return {
            "shadow": int(self.shadow),
            "n_members": self.n,
            "steps_per_epoch": self.spe,
            "total_steps": self.total,
            "device": str(self.dev),
            "autocast_bf16": bool(self.cfg.model.autocast_bf16 and self.dev.type == "cuda"),
            "tokens_per_s": self.session_tokens / elapsed if self.session_tokens else None,
            "wall_time_s": self.history["wall_time_s"] + time.perf_counter() - self.last_time,
            "tokens": self.history["tokens"],
            "peak_memory_bytes": peak,
            "peak_memory_kind": peak_kind,
            "loss": self.history["curve"],
            "checkpoints": self.history["checkpoints"],
        }

    def checkpoint(self, step: int, on_checkpoint: Callable[[int, Path], None] | None) -> None:
        now = time.perf_counter()
        self.history["wall_time_s"] += now - self.last_time
        self.last_time = now
        entry = {"step": step, "epoch": self.schedule[step], "path": checkpoint_dir(".", step).name}
        self.history["checkpoints"] = [c for c in self.history["checkpoints"] if c["step"] != step] + [entry]
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": self.history,
        }
        path = _save_checkpoint(self.model, self.output_dir, step, self.schedule[step], state)
        _write_json(self.output_dir / LOG_FILE, self.log_state())
        if on_checkpoint is not None:
            on_checkpoint(step, path)

    def step(self, step: int, rows: list[np.ndarray], labels: torch.Tensor, pad_id: int) -> tuple[float, float]:
        """One optimizer step on ``rows``; returns (mean loss, grad norm before clipping)."""
        t = self.cfg.training
        torch.manual_seed(_seed(t.seed, self.shadow, step))
        step_loss = 0.0
        for lo in range(0, len(rows), t.batch_size):
            with autocast(self.cfg.model, self.dev):
                logits, _ = answer_forward(self.model, rows[lo : lo + t.batch_size], pad_id, self.dev)
            target = labels[lo : lo + t.batch_size].to(self.dev)
            loss = F.cross_entropy(logits.float(), target, reduction="sum") / len(rows)
            loss.backward()
            step_loss += loss.item()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, t.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        n_tokens = int(sum(len(r) for r in rows))
        self.session_tokens += n_tokens
        self.history["tokens"] += n_tokens
        self.history["step_loss"].append(step_loss)
        return step_loss, grad_norm


def finetune(
    cfg: ExperimentConfig,
    pool_df: pd.DataFrame,
    member: np.ndarray,
    shadow: int,
    base_model: str | Path | None,
    output_dir: str | Path,
    *,
    device: str = "auto",
    resume: bool = True,
    progress: bool = True,
    on_checkpoint: Callable[[int, Path], None] | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train shadow ``shadow`` on its members (``member``: bool over the train pool); returns the train log.

    Writes ``output_dir/ckpt-<step>/adapter/`` at every scheduled checkpoint (step 0 included) and
    ``output_dir/train_log.json``. With ``resume`` it continues from the last complete checkpoint; a run whose
    checkpoints are all present returns its log without loading the model. ``on_checkpoint(step, path)`` runs
    after each checkpoint is complete, ``on_log(step, metrics)`` at each logging interval.
    """
    pool_df = validate_pool(pool_df)
    train = train_pool(pool_df)
    member = member_mask(member, len(train))
    t = cfg.training
    output_dir = Path(output_dir)
    trainer = _Trainer(cfg, shadow, int(member.sum()), output_dir, resolve_device(device))
    done = _claim_output_dir(output_dir, _run_identity(cfg, shadow, member), resume)
    finished = _finished_log(output_dir, trainer.schedule) if set(trainer.schedule) <= set(done) else None
    if finished is not None:
        return finished

    tokenizer = load_tokenizer(cfg.model, base_model)
    enc = encode_frame(tokenizer, train[member].reset_index(drop=True), t.max_len)
    labels = torch.as_tensor(enc.labels, dtype=torch.long)
    trainer.build(base_model)
    start = 0
    latest = _latest_state(done) if resume else None
    if latest is not None:
        start, path, state = latest
        trainer.restore(path, state)
    trainer.model.train()
    if trainer.dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.dev)
    if start == 0:
        trainer.checkpoint(0, on_checkpoint)

    n, spe, total = trainer.n, trainer.spe, trainer.total
    effective = t.batch_size * t.grad_accum
    log_every = max(1, spe // cfg.checkpoints.per_epoch_in_first // 5)
    order, order_epoch = np.arange(n), -1
    with tqdm(total=total, initial=start, desc=f"finetune shadow {shadow}", unit="step", disable=not progress) as bar:
        for step in range(start, total):
            epoch, j = divmod(step, spe)
            if epoch != order_epoch:
                order, order_epoch = _epoch_order(t.seed, epoch, n), epoch
            idx = order[j * effective : (j + 1) * effective]
            loss, grad_norm = trainer.step(step, [enc.input_ids[i] for i in idx], labels[idx], tokenizer.pad_token_id)
            done_steps = step + 1
            tokens_per_s = trainer.session_tokens / max(time.perf_counter() - trainer.session_start, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:.0f}", refresh=False)
            if done_steps % log_every == 0 or done_steps == total:
                metrics = {
                    "loss": float(np.mean(trainer.history["step_loss"][-log_every:])),
                    "learning_rate": float(trainer.scheduler.get_last_lr()[0]),
                    "grad_norm": grad_norm,
                    "epoch": done_steps * effective / n,
                    "tokens_per_s": tokens_per_s,
                }
                trainer.history["curve"].append({"step": done_steps, **metrics})
                if on_log is not None:
                    on_log(done_steps, metrics)
            if done_steps in trainer.schedule:
                trainer.checkpoint(done_steps, on_checkpoint)
    result = trainer.log_state()
    _write_json(output_dir / LOG_FILE, result)
    return result
