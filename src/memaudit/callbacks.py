"""The early warning inside the user's own training: a Hugging Face ``TrainerCallback`` (docs/method.md §6.1).

:class:`MemorizationCallback` watches a ``transformers.Trainer`` (a peft LoRA model or any causal LM) train on
multiple-choice samples. At the start of training and at every save it measures the median answer loss of a fixed,
seeded subsample; the first save whose median is below ``loss_ratio`` × the start's is c_pred, the audit's rule
(:class:`memaudit.stages.predict.CPredWatch`). There it ranks every sample by P-SMI of its hidden states at the
answer position, writes ``predictions.parquet`` and ``predict.json`` into the Trainer's ``output_dir`` and logs
them to the active MLflow run, if any. Later saves cost nothing.

It never changes the training: probes run in eval mode without gradients (the mode is restored), inside a fork
of the CPU and accelerator random states, and only in the main process; it never sets the Trainer's control flags.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import ValidationError
from transformers import TrainerCallback

from memaudit.config import ExperimentConfig
from memaudit.errors import MemauditError
from memaudit.model.loading import num_layers, resolve_layers
from memaudit.model.tokenization import EncodedSamples, encode_frame
from memaudit.redact import redact_url
from memaudit.stages.predict import (
    AT_RISK_RULE,
    CPredWatch,
    choose_layer,
    layer_psmi,
    prediction_frame,
    probe,
    write_prediction,
)

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ("prompt", "options", "label_index")
LAYER_SOURCE = "the layer argument"
MLFLOW_PREFIX = "memaudit"  # metric-name prefix and artifact folder in the user's MLflow run
_DEFAULTS = ExperimentConfig()
# callback argument → (config section, field): the building blocks read these from an ExperimentConfig
_SETTINGS = {
    "layers": ("model", "layers"),
    "loss_ratio": ("evaluation", "c_pred_loss_ratio"),
    "batch_size": ("scoring", "batch_size"),
    "psmi_directions": ("scoring", "psmi_directions"),
    "seed": ("scoring", "psmi_seed"),
    "max_len": ("training", "max_len"),
}


def settings_config(**arguments: Any) -> ExperimentConfig:
    """An :class:`ExperimentConfig` with the callback's arguments (keys of ``_SETTINGS``) in their fields; a bad
    value is a one-line :class:`MemauditError` naming the argument."""
    data: dict[str, dict[str, Any]] = {}
    for name, value in arguments.items():
        section, field = _SETTINGS[name]
        data.setdefault(section, {})[field] = value
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"][:2])
        name = next((n for n, place in _SETTINGS.items() if place[: len(loc)] == loc), "an argument")
        raise MemauditError(
            f"MemorizationCallback {name}={arguments.get(name)!r}: {err['msg']}", f"pass a valid {name}"
        ) from None


def _label_problem(options: Any, label: Any) -> str | None:
    """Why a row's ``options`` / ``label_index`` cannot be encoded, or None."""
    if isinstance(options, str) or not hasattr(options, "__len__") or len(options) < 2:
        return "options must be a list of at least two option labels (e.g. ['A', 'B', 'C', 'D'])"
    if isinstance(label, bool) or not isinstance(label, int | np.integer) or not 0 <= label < len(options):
        return f"label_index {label!r} is not an index into its {len(options)} options"
    return None


def sample_rows(samples: Any) -> pd.DataFrame:
    """The training samples as the rows :func:`prediction_frame` reads (``source_id`` = ``id`` or the row number,
    ``global_index`` = the row number); a bad frame is a one-line :class:`MemauditError`."""
    if not isinstance(samples, pd.DataFrame):
        raise MemauditError(
            f"samples must be a pandas DataFrame, got {type(samples).__name__}",
            "pass the training rows as a DataFrame with columns prompt, options, label_index (and optionally id)",
        )
    missing = [c for c in SAMPLE_COLUMNS if c not in samples.columns]
    if missing or samples.empty:
        what = f"have no column {missing[0]!r}" if missing else "are empty"
        raise MemauditError(
            f"the samples {what}",
            "pass the training rows with columns prompt, options, label_index (and optionally id)",
        )
    for index, options, label in zip(samples.index, samples["options"], samples["label_index"], strict=True):
        problem = _label_problem(options, label)
        if problem:
            raise MemauditError(f"samples row {index!r}: {problem}", "fix that row of the samples frame")
    rows = samples.reset_index(drop=True)
    ids = rows["id"].astype(str) if "id" in rows.columns else pd.Series(rows.index.astype(str))
    if ids.duplicated().any():
        raise MemauditError(f"samples id {ids[ids.duplicated()].iloc[0]!r} appears twice", "give every row its own id")
    return rows.assign(source_id=ids.to_numpy(), global_index=np.arange(len(rows), dtype=np.int64))


def subsample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted positions of a seeded random subsample of ``min(size, n)`` of ``n`` rows."""
    if size < 1:
        raise MemauditError(f"MemorizationCallback subsample={size} is below 1", "pass subsample >= 1 (e.g. 256)")
    return np.sort(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False))


def subset(enc: EncodedSamples, rows: np.ndarray) -> EncodedSamples:
    """The samples of ``enc`` at positions ``rows``."""
    return EncodedSamples(
        [enc.input_ids[i] for i in rows], enc.option_ids[rows], enc.label_index[rows], enc.truncated[rows]
    )


def quiet_probe(model, enc: EncodedSamples, pad_id: int, cfg: ExperimentConfig, layers: list[int]):
    """:func:`probe` (inputs on the device of the model's first parameter) inside a fork of the random states of
    the CPU and of every accelerator the model lives on: training's random streams (dropout, data order) go on as
    if it had not run."""
    dev = next(model.parameters()).device
    accelerators = sorted({p.device for p in model.parameters() if p.device.type != "cpu"}, key=str)
    kind = accelerators[0].type if accelerators else None
    with torch.random.fork_rng(devices=accelerators, device_type=kind):
        return probe(model, enc, pad_id, dev, cfg, layers)


class MemorizationCallback(TrainerCallback):
    """Predicts, early in training, which training samples the model will memorize (P-SMI < 0 at c_pred).

    ``samples``: the rows the Trainer trains on, with ``prompt`` (text up to right before the answer, e.g. ending
    ``"...\\n\\n"``), ``options`` (option labels, e.g. ``["A", "B", "C", "D"]``), ``label_index`` and optionally
    ``id``. ``layers``: the hidden-state layers P-SMI is computed at (``"all"`` = 1..L); ``layer``: the one
    predictions are read at (default: the last of ``layers``). Results: :attr:`c_pred_step`, :attr:`c_pred_epoch`,
    :attr:`predictions` (the frame of ``predictions.parquet``), :attr:`summary` (``predict.json``).
    """

    def __init__(
        self,
        samples: pd.DataFrame,
        tokenizer,
        *,
        layers: list[int] | str = "all",
        layer: int | None = None,
        loss_ratio: float = _DEFAULTS.evaluation.c_pred_loss_ratio,
        subsample: int = 256,
        seed: int = _DEFAULTS.scoring.psmi_seed,
        batch_size: int = _DEFAULTS.scoring.batch_size,
        psmi_directions: int = _DEFAULTS.scoring.psmi_directions,
        max_len: int = _DEFAULTS.training.max_len,
    ):
        self.cfg = settings_config(
            layers=layers, loss_ratio=loss_ratio, batch_size=batch_size, psmi_directions=psmi_directions,
            seed=seed, max_len=max_len,
        )  # fmt: skip
        self.rows = sample_rows(samples)
        self.enc = encode_frame(tokenizer, self.rows, max_len)
        self.probe_enc = subset(self.enc, subsample_rows(len(self.rows), subsample, seed))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.layer = layer
        if layers != "all":
            choose_layer(self.cfg, list(layers), layer, LAYER_SOURCE)
        self._mlflow_warned = False
        self._reset()

    def _reset(self) -> None:
        """Nothing measured yet (a new training starts)."""
        self.watch = CPredWatch(self.cfg.evaluation.c_pred_loss_ratio)
        self.layers: list[int] = []
        self.layer_at: tuple[int, str] | None = None  # (layer, where it came from), set on the model
        self.active = False
        self.c_pred_step: int | None = None
        self.c_pred_epoch: float | None = None
        self.predictions: pd.DataFrame | None = None
        self.summary: dict[str, Any] | None = None

    def _subsample_median(self, model, step: int) -> bool:
        """Probe the subsample at ``step``; True when this is c_pred."""
        loss, _ = quiet_probe(model, self.probe_enc, self.pad_id, self.cfg, [self.layer_at[0]])
        return self.watch.reached(step, loss, None)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        """Resolve the layers on the model and measure checkpoint 0 (the untrained model)."""
        self._reset()
        if not state.is_world_process_zero:
            return
        if state.global_step > 0:
            log.warning(
                "MemorizationCallback: training resumes at step %d, but c_pred needs the loss before the first step; "
                "no prediction in this run (start the training from scratch to get one)",
                state.global_step,
            )
            return
        source = getattr(model.config, "name_or_path", "") or type(model).__name__
        self.layers = resolve_layers(self.cfg.model.layers, num_layers(model), source)
        self.layer_at = choose_layer(self.cfg, self.layers, self.layer, LAYER_SOURCE)
        self.active = True
        self._subsample_median(model, 0)

    def on_save(self, args, state, control, model=None, **kwargs):
        """At each save until c_pred: the subsample's median loss; at c_pred, the predictions."""
        if not self.active or self.c_pred_step is not None or not state.is_world_process_zero:
            return
        if self._subsample_median(model, state.global_step):
            self._predict(model, state.global_step, float(state.epoch or 0.0), Path(args.output_dir))

    def on_train_end(self, args, state, control, **kwargs):
        if self.active and self.c_pred_step is None:
            medians = dict(zip(self.watch.steps, np.round(self.watch.medians, 6).tolist(), strict=True))
            log.warning(
                "MemorizationCallback: c_pred not reached (median answer loss of the subsample at each save: %s; "
                "c_pred needs one below %g × the first); no predictions written (train longer or raise loss_ratio)",
                medians,
                self.watch.ratio,
            )

    def _predict(self, model, step: int, epoch: float, out: Path) -> None:
        """P-SMI of every sample at c_pred ``step``: the frame, the summary, the files and the MLflow run."""
        _, hidden = quiet_probe(model, self.enc, self.pad_id, self.cfg, self.layers)
        values = layer_psmi(hidden, self.enc.labels, self.cfg)
        del hidden
        frame = prediction_frame(self.rows, values, self.layers, self.layer_at[0])
        self.c_pred_step, self.c_pred_epoch, self.predictions = step, epoch, frame
        self.summary = self._summary(frame)
        files = write_prediction(out, frame, self.summary)
        self._log_mlflow(step, files)

    def _summary(self, frame: pd.DataFrame) -> dict[str, Any]:
        n_at_risk = int(frame["at_risk"].sum())
        return {
            "n_samples": len(frame),
            "c_pred": {
                "step": self.c_pred_step,
                "epoch": self.c_pred_epoch,
                "rule": self.watch.rule(self.c_pred_step),
                "loss_ratio": self.watch.ratio,
                "subsample": len(self.probe_enc),
                "checkpoints": self.watch.steps,
                "median_loss": self.watch.medians,
            },
            "layer": self.layer_at[0],
            "layer_source": self.layer_at[1],
            "rule": AT_RISK_RULE,
            "n_at_risk": n_at_risk,
            "share_at_risk": n_at_risk / len(frame),
        }

    def _log_mlflow(self, step: int, files: list[Path]) -> None:
        """Metrics and files to the active MLflow run, if there is one; a failure is one warning, never an error."""
        mlflow = sys.modules.get("mlflow")  # a run can only be active where the user imported mlflow
        try:
            if mlflow is None or mlflow.active_run() is None:
                return
            keys = ("n_at_risk", "share_at_risk")
            metrics = {f"{MLFLOW_PREFIX}.c_pred_step": step, **{f"{MLFLOW_PREFIX}.{k}": self.summary[k] for k in keys}}
            mlflow.log_metrics(metrics, step=step)
            for path in files:
                mlflow.log_artifact(str(path), artifact_path=MLFLOW_PREFIX)
        except Exception as exc:  # tracking must never break the training
            if not self._mlflow_warned:
                self._mlflow_warned = True
                why = redact_url(" ".join(str(exc).split()))[:200]
                log.warning("MemorizationCallback: not logged to MLflow (%s: %s)", type(exc).__name__, why)
