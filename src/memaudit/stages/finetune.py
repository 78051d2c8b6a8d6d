"""One shadow's LoRA fine-tune on its members (docs/method.md §3), resumable, with the paper's checkpoint schedule.

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

import resource
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
from memaudit.data.poolfile import train_pool, validate_pool
from memaudit.data.splits import member_mask
from memaudit.model.forward import answer_forward, autocast
from memaudit.model.loading import load_base_model, load_tokenizer, resolve_device
from memaudit.model.lora import apply_lora, load_adapter_weights
from memaudit.model.tokenization import EncodedSamples, encode_frame
from memaudit.stages.checkpoints import (
    checkpoint_dir,
    claim_output_dir,
    finished_log,
    latest_state,
    run_identity,
    save_checkpoint,
    write_json,
)
from memaudit.stages.schedule import schedule_for, steps_per_epoch
from memaudit.store.layout import ADAPTER_DIR, TRAIN_LOG

OnCheckpoint = Callable[[int, Path], None]
OnLog = Callable[[int, dict[str, float]], None]
StopWhen = Callable[[torch.nn.Module, int], bool]


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


class _Trainer:
    """The mutable state of one training session (model, optimizer, history) and its checkpointing."""

    def __init__(self, cfg: ExperimentConfig, shadow: int, n: int, output_dir: Path, dev: torch.device):
        self.cfg, self.shadow, self.n, self.output_dir, self.dev = cfg, shadow, n, output_dir, dev
        t = cfg.training
        self.spe = steps_per_epoch(n, t.batch_size, t.grad_accum)
        self.total = self.spe * t.epochs
        self.schedule = dict(schedule_for(cfg, n))
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
        self.stop_when: StopWhen | None = None
        self.stopped_at: int | None = None

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

    def tokens_per_s(self) -> float:
        return self.session_tokens / max(time.perf_counter() - self.session_start, 1e-9)

    def log_state(self) -> dict[str, Any]:
        peak, peak_kind = _peak_memory(self.dev)
        return {
            "shadow": int(self.shadow),
            "n_members": self.n,
            "steps_per_epoch": self.spe,
            "total_steps": self.total,
            "device": str(self.dev),
            "autocast_bf16": self.cfg.model.autocast_bf16,
            "tokens_per_s": self.tokens_per_s() if self.session_tokens else None,
            "wall_time_s": self.history["wall_time_s"] + time.perf_counter() - self.last_time,
            "tokens": self.history["tokens"],
            "peak_memory_bytes": peak,
            "peak_memory_kind": peak_kind,
            "loss": self.history["curve"],
            "checkpoints": self.history["checkpoints"],
            "stopped_at": self.stopped_at,
        }

    def checkpoint(self, step: int, on_checkpoint: OnCheckpoint | None) -> bool:
        """Save the checkpoint of ``step``; True when ``stop_when`` ends training there."""
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
        path = save_checkpoint(self.model, self.output_dir, step, state)
        write_json(self.output_dir / TRAIN_LOG, self.log_state())
        if on_checkpoint is not None:
            on_checkpoint(step, path)
        if self.stop_when is not None and self.stop_when(self.model, step):
            self.stopped_at = step
        return self.stopped_at is not None

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

    def record(self, done_steps: int, grad_norm: float, every: int, on_log: OnLog | None) -> None:
        """Append the mean loss of the last ``every`` steps (and lr, grad norm, epoch, speed) to the curve."""
        metrics = {
            "loss": float(np.mean(self.history["step_loss"][-every:])),
            "learning_rate": float(self.scheduler.get_last_lr()[0]),
            "grad_norm": grad_norm,
            "epoch": done_steps * self.cfg.training.batch_size * self.cfg.training.grad_accum / self.n,
            "tokens_per_s": self.tokens_per_s(),
        }
        self.history["curve"].append({"step": done_steps, **metrics})
        if on_log is not None:
            on_log(done_steps, metrics)


def _resume(trainer: _Trainer, done: dict[int, Path], resume: bool) -> int:
    """Restore the latest stored trainer state (when resuming); returns the step training continues from."""
    latest = latest_state(done) if resume else None
    if latest is None:
        return 0
    start, path, state = latest
    trainer.restore(path, state)
    return start


def _train_loop(
    trainer: _Trainer,
    enc: EncodedSamples,
    pad_id: int,
    start: int,
    progress: bool,
    on_checkpoint: OnCheckpoint | None,
    on_log: OnLog | None,
) -> None:
    """Optimizer steps ``start`` .. total, logging and checkpointing on the schedule."""
    t = trainer.cfg.training
    labels = torch.as_tensor(enc.labels, dtype=torch.long)
    effective = t.batch_size * t.grad_accum
    log_every = max(1, trainer.spe // trainer.cfg.checkpoints.per_epoch_in_first // 5)
    order, order_epoch = np.arange(trainer.n), -1
    desc = f"finetune shadow {trainer.shadow}"
    with tqdm(total=trainer.total, initial=start, desc=desc, unit="step", disable=not progress) as bar:
        for step in range(start, trainer.total):
            epoch, j = divmod(step, trainer.spe)
            if epoch != order_epoch:
                order, order_epoch = _epoch_order(t.seed, epoch, trainer.n), epoch
            idx = order[j * effective : (j + 1) * effective]
            loss, grad_norm = trainer.step(step, [enc.input_ids[i] for i in idx], labels[idx], pad_id)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{trainer.tokens_per_s():.0f}", refresh=False)
            if (step + 1) % log_every == 0 or step + 1 == trainer.total:
                trainer.record(step + 1, grad_norm, log_every, on_log)
            if step + 1 in trainer.schedule and trainer.checkpoint(step + 1, on_checkpoint):
                return


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
    on_checkpoint: OnCheckpoint | None = None,
    on_log: OnLog | None = None,
    stop_when: StopWhen | None = None,
) -> dict[str, Any]:
    """Train shadow ``shadow`` on its members (``member``: bool over the train pool); returns the train log.

    Writes ``output_dir/ckpt-<step>/adapter/`` at every scheduled checkpoint (step 0 included) and
    ``output_dir/train_log.json``. With ``resume`` it continues from the last complete checkpoint; a run whose
    checkpoints are all present returns its log without loading the model. ``on_checkpoint(step, path)`` runs
    after each checkpoint is complete, ``on_log(step, metrics)`` at each logging interval; training ends early at
    the first checkpoint where ``stop_when(model, step)`` is true (the log's ``stopped_at``; the learning-rate
    schedule stays that of the full run).
    """
    train = train_pool(validate_pool(pool_df))
    member = member_mask(member, len(train))
    output_dir = Path(output_dir)
    trainer = _Trainer(cfg, shadow, int(member.sum()), output_dir, resolve_device(device))
    done = claim_output_dir(output_dir, run_identity(cfg, shadow, member), resume=resume)
    if set(trainer.schedule) <= set(done) and (finished := finished_log(output_dir, set(trainer.schedule))):
        return finished
    tokenizer = load_tokenizer(cfg.model, base_model)
    enc = encode_frame(tokenizer, train[member].reset_index(drop=True), cfg.training.max_len)
    trainer.build(base_model)
    trainer.stop_when = stop_when
    start = _resume(trainer, done, resume)
    trainer.model.train()
    if trainer.dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.dev)
    if not (start == 0 and trainer.checkpoint(0, on_checkpoint)):
        _train_loop(trainer, enc, tokenizer.pad_token_id, start, progress, on_checkpoint, on_log)
    result = trainer.log_state()
    write_json(output_dir / TRAIN_LOG, result)
    return result
