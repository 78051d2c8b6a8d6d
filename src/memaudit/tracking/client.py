"""The MLflow client as memaudit uses it: one-line errors, a fast probe of a server, batched logging.

* An unreachable server fails fast: a probe with no retries and a 3 s timeout, then the real calls with a few retries
  (``MLFLOW_HTTP_REQUEST_*`` set for the duration of the call, unless the user set them).
* Experiments are created as model-development experiments (:data:`EXPERIMENT_KIND`), with their artifacts next to
  a sqlite database.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from memaudit.environment import scoped_env
from memaudit.errors import MemauditError
from memaudit.redact import redact_url

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
AUTH_FIX = (
    "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN); on a cluster the Secret "
    "named by run.tracking_secret holds them"
)
REFUSED = ("Unauthorized", "Forbidden", "PERMISSION_DENIED", "UNAUTHENTICATED", "401", "403")
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # early MLflow 3 UIs open it on its runs
RUNS_PAGE = "#/experiments/{id}/runs?workflowType=machine_learning"  # 3.17's UI follows a global switch instead
LOCAL_UI = "http://127.0.0.1:5000/"  # where `mlflow ui` serves


def tracking_uri(output_dir: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<output_dir>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


def _short(exc: BaseException) -> str:
    text = redact_url(" ".join(str(exc).split()))
    for hint in ("Connection refused", "timed out", "Name or service not known", "No route to host", "Unauthorized"):
        if hint.lower() in text.lower():
            return hint
    return text[:200]


def _no_telemetry() -> None:
    """MLflow 3 sends usage telemetry unless told not to; an audit of sensitive data (often offline) does not. Its
    progress bars and INFO lines are not for a memaudit terminal either."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per summary.json read back
    from mlflow.telemetry.client import get_telemetry_client, set_telemetry_client

    if get_telemetry_client() is not None:
        set_telemetry_client()  # re-reads the environment: drops the client unless the user enabled telemetry
    # its INFO lines (database set-up) are not for a memaudit terminal; MLFLOW_LOGGING_LEVEL still decides
    logging.getLogger("mlflow").setLevel(os.environ.get("MLFLOW_LOGGING_LEVEL", "WARNING").upper())


def _sqlite_folder(uri: str) -> Path | None:
    return Path(unquote(uri.removeprefix("sqlite:///"))).parent if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def client(uri: str) -> Iterator[Any]:
    """An MlflowClient for ``uri``; errors become one-line MemauditErrors; an http server is probed first."""
    _no_telemetry()  # before the first import of mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    safe, folder = redact_url(uri), _sqlite_folder(uri)
    if folder is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MemauditError(
                f"cannot create {folder} for the MLflow database ({exc.strerror})", TRACKING_FIX
            ) from None
    mlflow_client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if uri.startswith(("http://", "https://")):
        with scoped_env(PROBE_ENV, force=True):
            try:
                mlflow_client.search_experiments(max_results=1)
            except Exception as exc:
                if any(word in str(exc) for word in REFUSED):
                    raise MemauditError(f"MLflow at {safe} refused the request (not logged in)", AUTH_FIX) from None
                raise MemauditError(f"cannot reach MLflow at {safe} ({_short(exc)})", TRACKING_FIX) from None
    with scoped_env(CALL_ENV, force=False):
        try:
            yield mlflow_client
        except MemauditError:
            raise
        except (MlflowException, OSError) as exc:
            raise MemauditError(f"MLflow at {safe} failed: {_short(exc)}", TRACKING_FIX) from None


def experiment_id(mlflow_client: Any, name: str, uri: str) -> str:
    """The id of experiment ``name``, created (or restored) as a model-development experiment when needed."""
    from mlflow.exceptions import MlflowException

    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        folder = _sqlite_folder(uri)  # keep artifacts next to the database, not in the working directory
        location = None if folder is None else (folder / "mlartifacts").resolve().as_uri()
        try:
            return mlflow_client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
        except MlflowException as exc:  # created concurrently by another task
            experiment = mlflow_client.get_experiment_by_name(name)
            if experiment is None:
                raise exc from None
    if experiment.lifecycle_stage == "deleted":
        mlflow_client.restore_experiment(experiment.experiment_id)
    for key, value in EXPERIMENT_KIND.items():  # an experiment from an older memaudit; a user's own kind is kept
        if key not in experiment.tags:
            mlflow_client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def log_params(mlflow_client: Any, run_id: str, params: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), PARAMS_PER_BATCH):
        mlflow_client.log_batch(run_id, params=items[i : i + PARAMS_PER_BATCH])


def log_metrics(mlflow_client: Any, run_id: str, points: list[tuple[str, float, int]]) -> None:
    """Log ``(key, value, step)`` points in batches, all stamped now."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, step) for key, value, step in points]
    for i in range(0, len(metrics), METRICS_PER_BATCH):
        mlflow_client.log_batch(run_id, metrics=metrics[i : i + METRICS_PER_BATCH])


def get_run(mlflow_client: Any, run_id: str, uri: str, *, what: str, fix: str) -> Any:
    """The run ``run_id``, or a one-line error naming it as ``what`` and ending in ``fix``."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_run(run_id)
    except MlflowException:
        raise MemauditError(f"{what} {run_id!r} not found at {redact_url(uri)}", fix) from None


def runs_page(uri: str, experiment: str) -> str:
    """Where to see experiment ``experiment``'s runs table: its URL on a server, or the command that serves a
    sqlite store and the URL then."""
    with client(uri) as mlflow_client:
        found = mlflow_client.get_experiment_by_name(experiment)
    page = RUNS_PAGE.format(id=found.experiment_id if found else 0)
    if uri.startswith(("http://", "https://")):
        return redact_url(uri.rstrip("/")) + "/" + page
    return f"mlflow ui --backend-store-uri {uri}, then {LOCAL_UI}{page}"
