"""Early warning without shadows (docs/method.md §6.1, docs/design.md §9): fine-tune one model only up to the
prediction checkpoint c_pred and rank its training samples by P-SMI there.

c_pred is found while training: at every scheduled checkpoint the members go through the model once (eval mode,
no gradient, the training's RNG untouched) and their median answer loss is compared with checkpoint 0's, by the
same rule as the audit (:func:`memaudit.metrics.prediction_checkpoint`); training stops at the first checkpoint
below ``evaluation.c_pred_loss_ratio`` × that median, or at ``at_step``. The learning-rate schedule is that of the
full fine-tune, so up to c_pred the model is exactly the one a full training would have produced. A sample is at
risk when its P-SMI at the chosen layer is below 0 (the off-the-shelf rule).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from memaudit.config import ExperimentConfig
from memaudit.data.poolfile import train_pool, validate_pool
from memaudit.data.splits import member_mask, membership_for
from memaudit.errors import MemauditError
from memaudit.metrics import prediction_checkpoint, psmi
from memaudit.model.forward import forward_batches
from memaudit.model.loading import load_tokenizer, num_layers, resolve_device, resolve_layers
from memaudit.model.tokenization import EncodedSamples, encode_frame
from memaudit.stages.aggregate import off_the_shelf_index
from memaudit.stages.finetune import finetune
from memaudit.stages.schedule import schedule_for, steps_per_epoch
from memaudit.store.atomic import atomic_path, write_bytes

PREDICTIONS = "predictions.parquet"
PREDICT_SUMMARY = "predict.json"
AT_RISK_RULE = "psmi < 0"


def probe(model, enc: EncodedSamples, pad_id: int, dev, cfg: ExperimentConfig, layers: list[int]):
    """Answer loss of every sample (float64 [n]) and its hidden states at ``layers`` (float32 [L, n, d]), in eval
    mode and without gradients; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    loss = np.empty(len(enc), dtype=np.float64)
    hidden = None
    labels = torch.as_tensor(enc.labels)
    with torch.inference_mode():
        batches = forward_batches(model, enc.input_ids, pad_id, dev, cfg.model, cfg.scoring.batch_size, layers)
        for batch, logits, states in batches:
            target = labels[batch].to(dev)
            loss[batch] = F.cross_entropy(logits, target, reduction="none").double().cpu().numpy()
            if hidden is None:
                hidden = torch.empty((len(layers), len(enc), states[0].shape[-1]), dtype=torch.float32, device=dev)
            hidden[:, torch.as_tensor(batch, device=dev)] = torch.stack(states).float()
    model.train(was_training)
    return loss, hidden


def layer_psmi(hidden: torch.Tensor, labels: np.ndarray, cfg: ExperimentConfig) -> np.ndarray:
    """P-SMI of every sample per layer, float64 [L, n] (the score stage's directions and seed)."""
    s = cfg.scoring
    return np.stack([psmi(h, labels, n_directions=s.psmi_directions, seed=s.psmi_seed) for h in hidden])


@dataclass
class CPredWatch:
    """Recognises c_pred from the median loss at successive checkpoints (checkpoint 0 first), and keeps the hidden
    states of the checkpoint it ends on (the lowest median so far, as the audit's fallback)."""

    ratio: float
    at_step: int | None = None
    steps: list[int] = field(default_factory=list)
    medians: list[float] = field(default_factory=list)
    kept: tuple[int, Any] | None = None

    def reached(self, step: int, loss: np.ndarray, hidden: Any) -> bool:
        median = float(np.median(loss))
        if not self.medians or median < min(self.medians):
            self.kept = (step, hidden)
        self.steps.append(step)
        self.medians.append(median)
        if self.at_step is not None:
            return step == self.at_step
        index, found = prediction_checkpoint(np.array(self.medians), self.ratio)
        return found and index == len(self.medians) - 1

    def rule(self, stopped_at: int | None) -> str:
        if self.at_step is not None:
            return "forced"
        return "auto" if stopped_at is not None else "fallback_lowest_median_loss"


def check_at_step(cfg: ExperimentConfig, n_members: int, at_step: int | None) -> None:
    steps = [s for s, _ in schedule_for(cfg, n_members)]
    if at_step is not None and at_step not in steps:
        shown = ", ".join(map(str, steps[:12])) + (" …" if len(steps) > 12 else "")
        raise MemauditError(f"--at-step {at_step} is not a scheduled checkpoint", f"use one of: {shown}")


def choose_layer(cfg: ExperimentConfig, layers: list[int], layer: int | None, source: str) -> tuple[int, str]:
    """The layer predictions are read at, and where it came from (``source`` describes a given ``layer``)."""
    if layer is None:
        return layers[off_the_shelf_index(cfg, layers)], "off-the-shelf layer"
    if layer not in layers:
        raise MemauditError(
            f"layer {layer} ({source}) is not among the computed layers {layers}",
            "pick one of them, or add it to model.layers",
        )
    return layer, source


def audit_train_steps(cfg: ExperimentConfig, n_train: int) -> int:
    """Optimizer steps of the full shadow audit of ``cfg`` on a train pool of ``n_train`` samples."""
    t = cfg.training
    counts = membership_for(cfg, n_train).sum(axis=1)
    return int(sum(steps_per_epoch(int(n), t.batch_size, t.grad_accum) * t.epochs for n in counts))


def prediction_frame(rows: pd.DataFrame, values: np.ndarray, layers: list[int], layer: int) -> pd.DataFrame:
    """predictions.parquet: the samples, P-SMI per layer and at ``layer``, rank (1 = most at risk), at_risk."""
    chosen = values[layers.index(layer)]
    frame = pd.DataFrame(
        {
            "id": rows["source_id"].astype(str).to_numpy(),
            "global_index": rows["global_index"].to_numpy(),
            "prompt": rows["prompt"].to_numpy(),
            "label": rows["label_index"].to_numpy(),
        }
    )
    for i, lay in enumerate(layers):
        frame[f"psmi_L{lay}"] = values[i]
    frame["psmi"] = chosen
    frame["rank"] = pd.Series(chosen).rank(method="first").astype(np.int64).to_numpy()
    frame["at_risk"] = chosen < 0
    return frame


def prediction_files(out: Path) -> list[Path]:
    """The two files of a prediction in the folder ``out``."""
    return [out / PREDICTIONS, out / PREDICT_SUMMARY]


def write_prediction(out: Path, frame: pd.DataFrame, summary: dict[str, Any]) -> list[Path]:
    """Atomically write ``predictions.parquet`` and ``predict.json`` into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / PREDICTIONS) as tmp:
        frame.to_parquet(tmp, index=False)
    write_bytes(out / PREDICT_SUMMARY, (json.dumps(summary, indent=2) + "\n").encode())
    return prediction_files(out)


@dataclass
class Prediction:
    frame: pd.DataFrame
    summary: dict[str, Any]


def _summary(cfg, watch: CPredWatch, log: dict, n_train: int, layer: tuple[int, str], frame) -> dict[str, Any]:
    step = watch.kept[0]
    full = audit_train_steps(cfg, n_train)
    return {
        "fingerprint": cfg.fingerprint(),
        "model": {"name": cfg.model.name, "revision": cfg.model.revision},
        "n_samples": len(frame),
        "c_pred": {
            "step": step,
            "epoch": step * cfg.training.batch_size * cfg.training.grad_accum / log["n_members"],
            "rule": watch.rule(log["stopped_at"]),
            "checkpoints": watch.steps,
            "median_loss": watch.medians,
        },
        "layer": layer[0],
        "layer_source": layer[1],
        "rule": AT_RISK_RULE,
        "n_at_risk": int(frame["at_risk"].sum()),
        "train_steps": step,
        "audit_train_steps": full,
        "cost_ratio": step / full,
        "train_wall_time_s": log["wall_time_s"],
    }


def predict(
    cfg: ExperimentConfig,
    pool_df: pd.DataFrame,
    member: np.ndarray,
    shadow: int,
    base_model: str | Path | None,
    work_dir: str | Path,
    *,
    at_step: int | None = None,
    layer: int | None = None,
    layer_source: str = "--layer",
    device: str = "auto",
    progress: bool = True,
) -> Prediction:
    """Fine-tune shadow ``shadow``'s model on ``member`` (bool over the train pool) up to c_pred (checkpoints under
    ``work_dir``, which must be empty) and predict which of its training samples it will memorize."""
    start = time.perf_counter()
    if not cfg.model.layers:
        raise MemauditError("the config computes no hidden-state layers", "set model.layers, e.g. 'all' or [1,2]")
    train = train_pool(validate_pool(pool_df))
    member = member_mask(member, len(train))
    check_at_step(cfg, int(member.sum()), at_step)
    rows = train[member].reset_index(drop=True)
    tokenizer, dev = load_tokenizer(cfg.model, base_model), resolve_device(device)
    enc = encode_frame(tokenizer, rows, cfg.training.max_len)
    watch, found = CPredWatch(cfg.evaluation.c_pred_loss_ratio, at_step), {}

    def stop_when(model, step: int) -> bool:
        if not found:  # checkpoint 0, before any training: a bad layer fails here
            found["layers"] = resolve_layers(cfg.model.layers, num_layers(model), cfg.model.name)
            found["layer"] = choose_layer(cfg, found["layers"], layer, layer_source)
        return watch.reached(step, *probe(model, enc, tokenizer.pad_token_id, dev, cfg, found["layers"]))

    log = finetune(
        cfg, pool_df, member, shadow, base_model, work_dir, device=str(dev), progress=progress, stop_when=stop_when
    )
    chosen = found["layer"]
    values = layer_psmi(watch.kept[1], enc.labels, cfg)
    frame = prediction_frame(rows, values, found["layers"], chosen[0])
    summary = _summary(cfg, watch, log, len(train), chosen, frame)
    summary["wall_time_s"] = time.perf_counter() - start
    return Prediction(frame, summary)
