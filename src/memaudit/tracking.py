"""MLflow tracking (docs/design.md §6): one parent run per pipeline run, one child run per shadow, the summary.

Every function takes the tracking URI and a run id, so each pipeline task (its own process, maybe its own pod) logs
with a fresh :class:`mlflow.MlflowClient`; nothing relies on MLflow's process-global active run.

* Params come from the config only (never the environment) and pass a credential guard (:mod:`memaudit.redact`).
* An unreachable server fails fast: a probe with no retries and a 3 s timeout, then the real calls with a few retries
  (``MLFLOW_HTTP_REQUEST_*`` set for the duration of the call, unless the user set them).
* A rerun of a shadow's task replaces that shadow's child run (the old one is deleted), so every shadow has exactly
  one active child under its parent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import numbers
import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from memaudit import __version__
from memaudit.config import ExperimentConfig
from memaudit.environment import scoped_env
from memaudit.errors import MemauditError
from memaudit.redact import looks_secret, redact_url, secret_env_values

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
PROBE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}
CALL_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}
TRACKING_FIX = "start the MLflow server or set MLFLOW_TRACKING_URI (unset: sqlite in the output folder)"


def tracking_uri(output_dir: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<output_dir>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


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


def guard_secrets(values: Mapping[str, str], what: str = "param") -> dict[str, str]:
    """``values`` without entries that name or carry a credential (each drop is logged by key, never by value)."""
    env_secrets = secret_env_values()
    kept = {}
    for key, value in values.items():
        if looks_secret(key, value, env_secrets):
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


def config_params(cfg: ExperimentConfig) -> dict[str, str]:
    """The whole config as flat MLflow params (``training.learning_rate`` …) plus fingerprints and code version,
    with credential-looking entries dropped.
    """
    params = {key: _param_value(value) for key, value in _flatten(cfg.to_dict())}
    params |= {"fingerprint": cfg.fingerprint(), "evaluation_fingerprint": cfg.evaluation_fingerprint()}
    params |= code_version()
    return guard_secrets(params)


def _run_tags(cfg: ExperimentConfig) -> dict[str, str]:
    return {
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "preset": cfg.preset or "custom",
        "memaudit.fingerprint": cfg.fingerprint(),
        "memaudit.evaluation_fingerprint": cfg.evaluation_fingerprint(),
    }


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
    out = {}
    for key, value in _flatten(summary):
        if isinstance(value, numbers.Real):  # numpy scalars included
            out[metric_name(key)] = float(value)
    return out


def _curve_points(key: str, curve: Any) -> list[tuple[int, float]]:
    """A curve as [(step, value)], from a mapping {step: value} or a sequence of (step, value) pairs."""
    items = curve.items() if isinstance(curve, Mapping) else curve
    try:
        return [(int(step), _number(key, value)) for step, value in items]
    except (TypeError, ValueError):
        raise MemauditError(
            f"curve {key!r} is not a list of (step, value) pairs", "log curves as [[step, value], ...]"
        ) from None


# ----------------------------------------------------------------------------------------- client handling


def _short(exc: BaseException) -> str:
    text = redact_url(" ".join(str(exc).split()))
    for hint in ("Connection refused", "timed out", "Name or service not known", "No route to host", "Unauthorized"):
        if hint.lower() in text.lower():
            return hint
    return text[:200]


def _no_telemetry() -> None:
    """MLflow 3 sends usage telemetry unless told not to; an audit of sensitive data (often offline) does not."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.telemetry.client import get_telemetry_client, set_telemetry_client

    if get_telemetry_client() is not None:
        set_telemetry_client()  # re-reads the environment: drops the client unless the user enabled telemetry
    # its INFO lines (database set-up) are not for a memaudit terminal; MLFLOW_LOGGING_LEVEL still decides
    logging.getLogger("mlflow").setLevel(os.environ.get("MLFLOW_LOGGING_LEVEL", "WARNING").upper())


@contextlib.contextmanager
def _client(uri: str) -> Iterator[Any]:
    """An MlflowClient for ``uri``; errors become one-line MemauditErrors; an http server is probed first."""
    _no_telemetry()  # before the first import of mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    safe = redact_url(uri)
    if uri.startswith("sqlite:///"):
        folder = Path(unquote(uri.removeprefix("sqlite:///"))).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MemauditError(
                f"cannot create {folder} for the MLflow database ({exc.strerror})", TRACKING_FIX
            ) from None
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if uri.startswith(("http://", "https://")):
        with scoped_env(PROBE_ENV, force=True):
            try:
                client.search_experiments(max_results=1)
            except Exception as exc:
                raise MemauditError(f"cannot reach MLflow at {safe} ({_short(exc)})", TRACKING_FIX) from None
    with scoped_env(CALL_ENV, force=False):
        try:
            yield client
        except MemauditError:
            raise
        except (MlflowException, OSError) as exc:
            raise MemauditError(f"MLflow at {safe} failed: {_short(exc)}", TRACKING_FIX) from None


def _experiment_id(client: Any, name: str, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if uri.startswith("sqlite:///"):  # keep artifacts next to the database, not in the working directory
            location = (Path(unquote(uri.removeprefix("sqlite:///"))).parent / "mlartifacts").resolve().as_uri()
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException as exc:  # created concurrently by another task
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise exc from None
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def _log_params(client: Any, run_id: str, params: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[i : i + PARAMS_PER_BATCH])


def _log_metrics(client: Any, run_id: str, points: list[tuple[str, float, int]]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, step) for key, value, step in points]
    for i in range(0, len(metrics), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + METRICS_PER_BATCH])


def _parent(client: Any, run_id: str, uri: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        raise MemauditError(
            f"parent run {run_id!r} not found at {redact_url(uri)}",
            "pass the run id returned by start_parent_run (the prepare task) and the same tracking URI",
        ) from None


# ------------------------------------------------------------------------------------------------- public


def start_parent_run(cfg: ExperimentConfig, *, uri: str, run_name: str | None = None) -> str:
    """Open the pipeline run's parent run in experiment ``cfg.run.experiment``; returns its run id.

    Params: the flattened config, fingerprints, code version. Tags: dataset, model, preset, memaudit.fingerprint.
    """
    params = config_params(cfg)
    tags = guard_secrets(_run_tags(cfg), what="tag")
    with _client(uri) as client:
        experiment_id = _experiment_id(client, cfg.run.experiment, uri)
        name = run_name or f"{cfg.preset or 'custom'}-{cfg.fingerprint()[:8]}"
        run = client.create_run(experiment_id, run_name=name, tags={**tags, "memaudit.role": "pipeline"})
        _log_params(client, run.info.run_id, params)
        return run.info.run_id


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
    replaces the earlier child run.
    """
    points: list[tuple[str, float, int]] = []
    for key, value in {**train_log, **(extra_metrics or {})}.items():
        if value is None:
            continue
        if key.endswith("_curve"):
            points += [(metric_name(key.removesuffix("_curve")), v, step) for step, v in _curve_points(key, value)]
        else:
            points.append((metric_name(key), _number(key, value), 0))
    with _client(uri) as client:
        parent = _parent(client, parent_run_id, uri)
        experiment_id = parent.info.experiment_id
        query = f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`memaudit.shadow` = '{int(shadow)}'"
        for old in client.search_runs([experiment_id], filter_string=query):
            client.delete_run(old.info.run_id)
        inherited = {k: v for k, v in parent.data.tags.items() if k in ("dataset", "model", "preset")}
        inherited["memaudit.fingerprint"] = parent.data.tags.get("memaudit.fingerprint", "")
        tags = {**inherited, "mlflow.parentRunId": parent_run_id, "memaudit.shadow": str(int(shadow))}
        run = client.create_run(experiment_id, run_name=f"shadow-{int(shadow)}", tags=tags)
        _log_metrics(client, run.info.run_id, points)
        client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id


def log_summary(
    uri: str, parent_run_id: str, summary: Mapping[str, Any], artifacts: list[Path] | tuple[Path, ...] = ()
) -> None:
    """Log the aggregate's summary metrics (flattened, see :func:`flatten_metrics`), ``summary.json`` and the report
    files or folders as artifacts of the parent run, then end it.
    """
    missing = [str(p) for p in artifacts if not Path(p).exists()]
    if missing:
        raise MemauditError(f"report file {missing[0]} does not exist", "run the plot task before logging the summary")
    metrics = flatten_metrics(summary)
    with _client(uri) as client:
        _parent(client, parent_run_id, uri)
        _log_metrics(client, parent_run_id, [(k, v, 0) for k, v in metrics.items()])
        client.set_tag(
            parent_run_id, "memaudit.missing_shadows", ",".join(map(str, summary.get("missing_shadows", [])))
        )
        client.log_dict(parent_run_id, dict(summary), "summary.json")
        for path in map(Path, artifacts):
            if path.is_dir():
                client.log_artifacts(parent_run_id, str(path), artifact_path=path.name)
            else:
                client.log_artifact(parent_run_id, str(path))
        client.set_terminated(parent_run_id, "FINISHED")
