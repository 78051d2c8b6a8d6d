"""An audit in MLflow: one parent run per pipeline run, one child run per shadow, the headline on the parent.

Every function takes the tracking URI and a run id, so each pipeline task (its own process, maybe its own pod) logs
with a fresh :class:`mlflow.MlflowClient`; nothing relies on MLflow's process-global active run.

* The parent's params are the settings a person compares audits on (:data:`COMPARED_SETTINGS`); the whole config is
  its ``config.json`` artifact. Both come from the config only (never the environment) and pass a credential guard
  (:mod:`memaudit.redact`). Tags: preset, dataset, model, fingerprints, memaudit's version and commit.
* The pool is the parent's input dataset (:class:`PoolInput`), so MLflow's runs table shows it.
* A rerun of a shadow's task replaces that shadow's child run (the old one is deleted), so every shadow has exactly
  one active child under its parent; the parent's ``shadows_complete`` counts them as they finish.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memaudit import __version__
from memaudit.config import ExperimentConfig
from memaudit.errors import MemauditError
from memaudit.redact import looks_secret, secret_env_values
from memaudit.tracking.client import client, experiment_id, get_run, log_metrics, log_params

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
CONFIG_ARTIFACT, SUMMARY_ARTIFACT = "config.json", "summary.json"
SHADOWS_COMPLETE = "shadows_complete"
ROLE_TAG, SHADOW_TAG = "memaudit.role", "memaudit.shadow"
EVALUATION_TAG = "memaudit.evaluation_fingerprint"  # runs with the same value are the same audit
PIPELINE_ROLE, PREDICTION_ROLE = "pipeline", "prediction"  # an audit's parent run; an early-warning run's
COMPARED_SETTINGS = (  # the parent run's params: what differs between the audits a person compares
    "dataset.name", "dataset.hub_id", "dataset.pool_size", "dataset.label_noise", "dataset.seed",
    "model.name", "model.revision", "model.dtype", "model.quantization",
    "lora.r", "lora.alpha", "lora.dropout", "lora.target_modules",
    "training.learning_rate", "training.batch_size", "training.grad_accum", "training.epochs", "training.max_len",
    "training.seed", "checkpoints.per_epoch_in_first",
    "scoring.psmi_directions",
    "shadows.n_shadows", "shadows.target", "shadows.seed",
    "evaluation.lira_mode", "evaluation.memorized_rule", "evaluation.memorized_fraction", "evaluation.tpr_target",
    "evaluation.c_pred_loss_ratio", "evaluation.ground_truth",
)  # fmt: skip
_PARENT_FIX = "pass the run id returned by start_parent_run (the prepare task) and the same tracking URI"


@dataclass(frozen=True)
class PoolInput:
    """The pool as an MLflow input dataset: what the runs table's Dataset column shows."""

    name: str
    digest: str
    source_type: str  # "hugging_face" or "local"
    source: dict[str, Any]
    profile: dict[str, Any] = field(default_factory=dict)
    context: str = "train"


# ------------------------------------------------------------------------------------------------- params


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, name + ".")
        else:
            yield name, value


def guard_secrets(values: Mapping[str, Any], what: str = "param") -> dict[str, Any]:
    """``values`` without entries that name or carry a credential (each drop is logged by key, never by value)."""
    env_secrets = secret_env_values()
    kept = {}
    for key, value in values.items():
        if looks_secret(key, _param_value(value), env_secrets):
            log.warning("not logging %s %r to MLflow: it looks like a credential", what, key)
        else:
            kept[key] = value
    return kept


def code_version() -> dict[str, str]:
    """memaudit's version and git commit (``MEMAUDIT_GIT_COMMIT``, else the checkout it runs from, else 'unknown')."""
    commit = os.environ.get("MEMAUDIT_GIT_COMMIT", "").strip()
    if not commit:
        package = Path(__file__).resolve().parent
        try:  # only a checkout that tracks this very file (not a venv that happens to sit inside some repo)
            subprocess.run(["git", "ls-files", "--error-unmatch", Path(__file__).name], cwd=package, check=True,
                           capture_output=True, timeout=5)  # fmt: skip
            head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package, check=True, capture_output=True, timeout=5)
            commit = head.stdout.decode().strip()
        except (OSError, subprocess.SubprocessError):
            commit = "unknown"
    return {"code_version": __version__, "git_commit": commit}


def safe_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """The whole config, flattened to dotted keys, without credential-looking entries."""
    return guard_secrets(dict(_flatten(cfg.to_dict())))


def config_params(cfg: ExperimentConfig) -> dict[str, str]:
    """The parent run's params: :data:`COMPARED_SETTINGS` of the config (credential-looking ones dropped)."""
    flat = safe_config(cfg)
    return {key: _param_value(flat[key]) for key in COMPARED_SETTINGS if key in flat}


def run_tags(cfg: ExperimentConfig) -> dict[str, str]:
    """The parent's tags: what a person filters audits by."""
    version = code_version()
    tags = {
        "preset": cfg.preset or "custom",
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "memaudit.fingerprint": cfg.fingerprint(),
        EVALUATION_TAG: cfg.evaluation_fingerprint(),
        "memaudit.version": version["code_version"],
        "memaudit.git_commit": version["git_commit"],
    }
    return guard_secrets(tags, what="tag")


# ------------------------------------------------------------------------------------------------ metrics


def metric_name(key: str) -> str:
    """A valid MLflow metric key: '@' → '_at_', other characters MLflow refuses → '_'."""
    return re.sub(r"[^/\w.\- ]", "_", key.replace("@", "_at_"))


def _number(key: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise MemauditError(
            f"metric {key!r} is not a number (got {type(value).__name__})", "log numbers only"
        ) from None


def flatten_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """Numbers of a nested summary as dotted metric keys (``predictors.psmi.fpr_at_tpr_0.75``); booleans → 0/1;
    strings, lists and None are left to the summary.json artifact.
    """
    return {metric_name(k): float(v) for k, v in _flatten(summary) if isinstance(v, numbers.Real)}


def _curve_points(key: str, curve: Any) -> list[tuple[int, float]]:
    """A curve as [(step, value)], from a mapping {step: value} or a sequence of (step, value) pairs."""
    items = curve.items() if isinstance(curve, Mapping) else curve
    try:
        return [(int(step), _number(key, value)) for step, value in items]
    except (TypeError, ValueError):
        raise MemauditError(
            f"curve {key!r} is not a list of (step, value) pairs", "log curves as [[step, value], ...]"
        ) from None


def _points(values: Mapping[str, Any]) -> list[tuple[str, float, int]]:
    """Numbers at step 0 and ``*_curve`` entries as step-indexed points under the key without the suffix."""
    points: list[tuple[str, float, int]] = []
    for key, value in values.items():
        if value is None:
            continue
        if key.endswith("_curve"):
            points += [(metric_name(key.removesuffix("_curve")), v, step) for step, v in _curve_points(key, value)]
        else:
            points.append((metric_name(key), _number(key, value), 0))
    return points


# ------------------------------------------------------------------------------------------------- public


def _log_pool(mlflow_client: Any, run_id: str, pool: PoolInput) -> None:
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    source, profile = guard_secrets(pool.source, what="dataset source"), guard_secrets(pool.profile, "profile")
    dataset = Dataset(pool.name, pool.digest, pool.source_type, json.dumps(source), profile=json.dumps(profile))
    mlflow_client.log_inputs(run_id, [DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, pool.context)])])


def start_parent_run(
    cfg: ExperimentConfig, *, uri: str, run_name: str | None = None, pool: PoolInput | None = None
) -> str:
    """Open the pipeline run's parent run in experiment ``cfg.run.experiment``; returns its run id.

    Params: :func:`config_params`; the whole config as the ``config.json`` artifact; tags: :func:`run_tags`;
    ``pool``: the input dataset.
    """
    with client(uri) as mlflow_client:
        experiment = experiment_id(mlflow_client, cfg.run.experiment, uri)
        name = run_name or f"{cfg.preset or 'custom'}-{cfg.fingerprint()[:8]}"
        run = mlflow_client.create_run(experiment, run_name=name, tags={**run_tags(cfg), ROLE_TAG: PIPELINE_ROLE})
        run_id = run.info.run_id
        log_params(mlflow_client, run_id, config_params(cfg))
        mlflow_client.log_dict(run_id, safe_config(cfg), CONFIG_ARTIFACT)
        if pool is not None:
            _log_pool(mlflow_client, run_id, pool)
        return run_id


def _children(mlflow_client: Any, parent: Any, extra: str = "") -> list[Any]:
    query = f"tags.mlflow.parentRunId = '{parent.info.run_id}'" + extra
    return mlflow_client.search_runs([parent.info.experiment_id], filter_string=query, max_results=50000)


def log_shadow(
    uri: str,
    parent_run_id: str,
    shadow: int,
    train_log: Mapping[str, Any],
    extra_metrics: Mapping[str, Any] | None = None,
) -> str:
    """Log one shadow's training as a child run of ``parent_run_id``; returns the child's run id.

    ``train_log``: keys ending in ``_curve`` are curves, ``[[step, value], ...]`` or ``{step: value}``, logged with
    steps under the key without the suffix (``loss_curve`` → ``loss``); other keys are numbers (``tokens_per_s``,
    ``peak_memory_mb``, ``wall_time_s``, ``n_members`` …); None values are skipped. A rerun for the same shadow
    replaces the earlier child run. The parent's ``shadows_complete`` then counts its finished children (step =
    the count, so its latest value is the highest).
    """
    points = _points({**train_log, **(extra_metrics or {})})
    with client(uri) as mlflow_client:
        parent = get_run(mlflow_client, parent_run_id, uri, what="parent run", fix=_PARENT_FIX)
        for old in _children(mlflow_client, parent, f" and tags.`{SHADOW_TAG}` = '{int(shadow)}'"):
            mlflow_client.delete_run(old.info.run_id)
        inherited = {k: v for k, v in parent.data.tags.items() if k in ("dataset", "model", "preset")}
        inherited["memaudit.fingerprint"] = parent.data.tags.get("memaudit.fingerprint", "")
        tags = {**inherited, "mlflow.parentRunId": parent_run_id, SHADOW_TAG: str(int(shadow))}
        run = mlflow_client.create_run(parent.info.experiment_id, run_name=f"shadow-{int(shadow)}", tags=tags)
        log_metrics(mlflow_client, run.info.run_id, points)
        mlflow_client.set_terminated(run.info.run_id, "FINISHED")
        done = len(_children(mlflow_client, parent, " and attributes.status = 'FINISHED'"))
        log_metrics(mlflow_client, parent_run_id, [(SHADOWS_COMPLETE, float(done), done)])
        return run.info.run_id


def log_summary(
    uri: str,
    parent_run_id: str,
    summary: Mapping[str, Any],
    artifacts: list[Path] | tuple[Path, ...] = (),
    *,
    metrics: Mapping[str, float] | None = None,
    series: Mapping[str, list[tuple[int, float]]] | None = None,
    description: str | None = None,
    tables: Mapping[str, Any] | None = None,
    role: str | None = None,
) -> None:
    """Log a result on the parent run and end it: ``metrics`` at step 0 (default: the summary flattened, see
    :func:`flatten_metrics`), ``series`` as step-indexed metrics, ``description`` as the run's description
    (Markdown), ``tables`` ({artifact file: DataFrame}) as MLflow tables, ``summary.json`` and the report files or
    folders as artifacts; a ``missing_shadows`` list becomes a tag; ``role`` replaces the run's role tag (a
    prediction is not an audit).
    """
    missing = [str(p) for p in artifacts if not Path(p).exists()]
    if missing:
        raise MemauditError(f"report file {missing[0]} does not exist", "run the plot task before logging the summary")
    values = flatten_metrics(summary) if metrics is None else metrics
    points = [(k, float(v), 0) for k, v in values.items()]
    points += [(key, float(v), step) for key, curve in (series or {}).items() for step, v in curve]
    with client(uri) as mlflow_client:
        get_run(mlflow_client, parent_run_id, uri, what="parent run", fix=_PARENT_FIX)
        log_metrics(mlflow_client, parent_run_id, points)
        if "missing_shadows" in summary:
            missing_shadows = ",".join(map(str, summary["missing_shadows"]))
            mlflow_client.set_tag(parent_run_id, "memaudit.missing_shadows", missing_shadows)
        if role is not None:
            mlflow_client.set_tag(parent_run_id, ROLE_TAG, role)
        if description:
            from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

            mlflow_client.set_tag(parent_run_id, MLFLOW_RUN_NOTE, description)
        for name, table in (tables or {}).items():
            mlflow_client.log_table(parent_run_id, table, name)
        mlflow_client.log_dict(parent_run_id, dict(summary), SUMMARY_ARTIFACT)
        for path in map(Path, artifacts):
            if path.is_dir():
                mlflow_client.log_artifacts(parent_run_id, str(path), artifact_path=path.name)
            else:
                mlflow_client.log_artifact(parent_run_id, str(path))
        mlflow_client.set_terminated(parent_run_id, "FINISHED")
