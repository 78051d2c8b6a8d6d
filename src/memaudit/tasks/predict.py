"""The predict task (GPU on a cluster): the early warning of docs/design.md §9, one model fine-tuned up to c_pred and
its training samples ranked by P-SMI; stored sealed under the run's ``predict/<variant>/`` (reused when sealed) and
logged to the run's MLflow parent run."""

from __future__ import annotations

import functools
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memaudit import tracking
from memaudit.config import ExperimentConfig
from memaudit.config.fingerprint import digest
from memaudit.data.poolfile import read_pool, train_pool
from memaudit.data.splits import membership_for
from memaudit.errors import MemauditError
from memaudit.report.outputs import SUMMARY
from memaudit.stages.predict import PREDICT_SUMMARY, predict, prediction_files, write_prediction
from memaudit.store import download_uri
from memaudit.tasks.runtime import (
    Task,
    TaskResult,
    base_model_folder,
    set_threads,
    task,
    track_quietly,
    tracking_uri,
    work_dir,
)

WHOLE_SET = -1  # members_of: train on every train-pool sample, as the user would


@dataclass(frozen=True)
class PredictOptions:
    """What a prediction is asked for (KFP parameters: -1 / "" = not set)."""

    members_of: int = WHOLE_SET
    at_step: int = -1
    layer: int = -1
    layer_from: str = ""

    def variant(self, cfg: ExperimentConfig) -> str:
        """The store key of this prediction: the config's evaluation fingerprint and these options."""
        return digest({"evaluation": cfg.evaluation_fingerprint(), **asdict(self)})


def _summary_file(source: str, dest: Path) -> Path:
    """summary.json of a stored audit: a run output folder, a summary.json, or an s3:// aggregate prefix/file."""
    if source.startswith("s3://"):
        return download_uri(source if source.endswith(".json") else f"{source.rstrip('/')}/{SUMMARY}", dest)
    path = Path(source)
    path = path / SUMMARY if path.is_dir() else path
    if not path.is_file():
        raise MemauditError(f"--layer-from {source}: no {SUMMARY} found", "pass an audit's output folder")
    return path


def audit_layer(cfg: ExperimentConfig, source: str) -> int:
    """The best P-SMI layer recorded by the stored audit ``source`` of the same base model."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            summary = json.loads(_summary_file(source, Path(tmp) / SUMMARY).read_text())
            model, layer = summary.get("model") or {}, int(summary["best_layer"]["layer"])
        except (ValueError, KeyError, TypeError):
            raise MemauditError(
                f"--layer-from {source}: its {SUMMARY} has no best layer", "re-run its aggregate"
            ) from None
    if model.get("name") != cfg.model.name or model.get("revision") != cfg.model.revision:
        raise MemauditError(
            f"--layer-from {source} audited {model.get('name') or 'an unrecorded model'}, not {cfg.model.name}",
            "pass an audit of the same base model (and revision), or choose --layer",
        )
    return layer


def training_members(cfg: ExperimentConfig, n_train: int, members_of: int) -> tuple[np.ndarray, int]:
    """(members, shadow id seeding the LoRA init): the whole train pool, or shadow ``members_of``'s half."""
    if members_of == WHOLE_SET:
        return np.ones(n_train, dtype=bool), 0
    if not 0 <= members_of < cfg.shadows.n_shadows:
        raise MemauditError(
            f"--members-of {members_of} is not a shadow of this config", f"use 0 to {cfg.shadows.n_shadows - 1}"
        )
    return membership_for(cfg, n_train)[members_of], members_of


def _chosen_layer(cfg: ExperimentConfig, options: PredictOptions) -> tuple[int | None, str]:
    if options.layer >= 0:
        return options.layer, "--layer"
    if options.layer_from:
        return audit_layer(cfg, options.layer_from), f"best layer of {options.layer_from}"
    return None, ""


def _build(t: Task, options: PredictOptions, paths: tuple[str, str], out: Path, progress: bool) -> None:
    pool_path, base_model_path = paths
    pool = read_pool(pool_path)
    member, shadow = training_members(t.cfg, len(train_pool(pool)), options.members_of)
    layer, source = _chosen_layer(t.cfg, options)
    set_threads()
    with work_dir("predict") as work:
        result = predict(
            t.cfg,
            pool,
            member,
            shadow,
            base_model_folder(base_model_path),
            work,
            at_step=None if options.at_step < 0 else options.at_step,
            layer=layer,
            layer_source=source,
            device=t.cfg.scoring.device,
            progress=progress,
        )
    result.summary.update(members_of=None if options.members_of == WHOLE_SET else options.members_of)
    write_prediction(out, result.frame, result.summary)


def predict_task(
    *,
    config_json: str,
    parent_run_id: str,
    pool_path: str,
    base_model_path: str,
    output_path: str,
    options: PredictOptions | None = None,
    progress: bool = False,
) -> TaskResult:
    """Predict (or reuse the sealed prediction) into the folder ``output_path``; log it to the MLflow parent run."""
    options = options or PredictOptions()
    with task("predict", config_json=config_json) as t:
        out, prefix = Path(output_path), t.layout.prediction(options.variant(t.cfg))
        if t.reuse_or_build_dir(
            prefix, out, lambda folder: _build(t, options, (pool_path, base_model_path), folder, progress)
        ):
            t.skipped()
        summary: dict[str, Any] = json.loads((out / PREDICT_SUMMARY).read_text())
        files = prediction_files(out)
        role = tracking.PREDICTION_ROLE  # not an audit: memaudit compare leaves it out
        log = functools.partial(tracking.log_summary, tracking_uri(), parent_run_id, summary, files, role=role)
        track_quietly("the prediction", log)
        t.outcome.update(c_pred=summary["c_pred"]["step"], n_at_risk=summary["n_at_risk"])
    return TaskResult(uri=t.store.uri(prefix), metadata={"c_pred_step": summary["c_pred"]["step"], **_counts(summary)})


def _counts(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("layer", "n_samples", "n_at_risk", "train_steps", "audit_train_steps", "cost_ratio")
    return {k: summary[k] for k in keys}
