"""What every pipeline task shares: its object store, MLflow URI, config, progress stage, work folder, threads.

The store is S3 when ``MEMAUDIT_S3_ENDPOINT`` is set, else the folder ``MEMAUDIT_STORE_DIR`` (the embedded
runner sets it); a cluster pod (``KFP_POD_NAME`` set) without S3 is refused, since its folder dies with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from memaudit import progress, tracking
from memaudit.config import ExperimentConfig, config_from_dict
from memaudit.errors import MemauditError
from memaudit.storage import RunStorage, store_from_env

STORE_DIR_ENV = "MEMAUDIT_STORE_DIR"
WORK_DIR_ENV = "MEMAUDIT_WORK_DIR"
THREADS_ENV = "MEMAUDIT_TORCH_THREADS"


def run_storage(cfg: ExperimentConfig) -> RunStorage:
    """The object store of this task, bound to the config's fingerprint."""
    root = os.environ.get(STORE_DIR_ENV)
    if not root and not os.environ.get("MEMAUDIT_S3_ENDPOINT") and os.environ.get("KFP_POD_NAME"):
        # in a cluster pod a local folder is lost with the pod, and each task would see an empty store
        raise MemauditError(
            "this pipeline pod has no object store (MEMAUDIT_S3_ENDPOINT is unset)",
            "install the chart (ConfigMap run.env_config_map) or point run.env_config_map at one with the S3 endpoint",
        )
    return RunStorage(store_from_env(root or str(Path("memaudit-store").resolve())), cfg.fingerprint())


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else sqlite beside the local store."""
    return tracking.tracking_uri(os.environ.get(STORE_DIR_ENV) or ".")


def task_config(config_json: str) -> ExperimentConfig:
    """The resolved config a task receives (JSON from the prepare task)."""
    return config_from_dict(json.loads(config_json), source="task config")


@contextlib.contextmanager
def stage(name: str, shadow: int | None = None) -> Iterator[dict[str, Any]]:
    """Emit start/done (or the body's ``event``) progress events; a MemauditError is reported, then re-raised."""
    outcome: dict[str, Any] = {"event": "done"}
    progress.emit(name, "start", shadow=shadow)
    try:
        yield outcome
    except MemauditError as exc:
        progress.emit(name, "error", shadow=shadow, message=exc.problem, fix=exc.fix)
        raise
    progress.emit(name, outcome.pop("event"), shadow=shadow, **outcome)


@contextlib.contextmanager
def work_dir(name: str) -> Iterator[Path]:
    """A scratch folder (under ``MEMAUDIT_WORK_DIR`` when set), deleted afterwards."""
    base = os.environ.get(WORK_DIR_ENV)
    if base:
        Path(base).mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base or None))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def set_threads() -> None:
    """Use ``MEMAUDIT_TORCH_THREADS`` torch threads (the embedded runner sets cores / parallelism)."""
    threads = os.environ.get(THREADS_ENV)
    if threads:
        import torch

        torch.set_num_threads(int(threads))
