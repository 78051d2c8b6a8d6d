"""The skeleton every pipeline task shares: resolve the config and the store, reuse what is sealed or build and seal
it, report progress, clean its scratch folder.

The store is S3 when ``MEMAUDIT_S3_ENDPOINT`` is set, else the folder ``MEMAUDIT_STORE_DIR`` (the embedded
runner sets it); a cluster pod (``KFP_POD_NAME`` set) without S3 is refused, since its folder dies with it.
MLflow is ``MLFLOW_TRACKING_URI``, else sqlite beside the local store.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memaudit import progress, tracking
from memaudit.config import ExperimentConfig, config_from_dict
from memaudit.errors import MemauditError
from memaudit.store import ENDPOINT_ENV, RunStorage, store_from_env
from memaudit.store.base import CorruptedObject
from memaudit.store.s3 import CA_BUNDLE_ENV as CA_BUNDLE_ENV  # for the pipelines: env they set
from memaudit.store.seal import SEAL_KEY_ENV as SEAL_KEY_ENV  # for the pipelines: the Secret's key

STORE_DIR_ENV = "MEMAUDIT_STORE_DIR"
WORK_DIR_ENV = "MEMAUDIT_WORK_DIR"
THREADS_ENV = "MEMAUDIT_TORCH_THREADS"
FAULT_ENV = "MEMAUDIT_INJECT_FAILURE"  # the fault-injection suite: "finetune:3,score:7" tasks fail when they start


def run_storage(cfg: ExperimentConfig) -> RunStorage:
    """The object store of this task, bound to the config's fingerprint."""
    root = os.environ.get(STORE_DIR_ENV)
    if not root and not os.environ.get(ENDPOINT_ENV):
        if os.environ.get("KFP_POD_NAME"):  # a local folder would be lost with the pod
            raise MemauditError(
                f"this pipeline pod has no object store ({ENDPOINT_ENV} is unset)",
                "install the chart (ConfigMap run.env_config_map) or point run.env_config_map at one with the S3 "
                "endpoint",
            )
        # never a folder of the current directory: a task outside its run must not write anywhere else
        raise MemauditError(
            "this task has no object store", f"set {STORE_DIR_ENV} (memaudit run does) or {ENDPOINT_ENV}"
        )
    return RunStorage(store_from_env(root), cfg.fingerprint())


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else sqlite beside the local store (``memaudit run`` sets both)."""
    if not os.environ.get("MLFLOW_TRACKING_URI") and not os.environ.get(STORE_DIR_ENV):
        raise MemauditError("this task has no MLflow tracking URI", "set MLFLOW_TRACKING_URI (memaudit run does)")
    return tracking.tracking_uri(os.environ.get(STORE_DIR_ENV) or ".")


TRACK_ATTEMPTS, TRACK_WAIT_S = 3, 2.0


def track_quietly(what: str, call: Callable[[], Any]) -> bool:
    """Log to MLflow without ever failing the task: ``call()`` is retried (2 s, 4 s), then dropped with one
    warning line; returns whether it was logged. Only opening a run's tracking (prepare) is fatal."""
    for attempt in range(TRACK_ATTEMPTS):
        try:
            call()
            return True
        except MemauditError as exc:
            problem = exc.problem
            if attempt + 1 < TRACK_ATTEMPTS:
                time.sleep(TRACK_WAIT_S * 2**attempt)
    print(f"memaudit: warning: {what} was not logged to MLflow ({problem}); its outputs are stored", file=sys.stderr)
    progress.emit("tracking", "warning", message=f"{what} was not logged to MLflow ({problem})")
    return False


def set_threads() -> None:
    """Use ``MEMAUDIT_TORCH_THREADS`` torch threads (the embedded runner sets cores / parallelism)."""
    threads = os.environ.get(THREADS_ENV)
    if threads:
        import torch

        torch.set_num_threads(int(threads))


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


@dataclass
class Task:
    """One running task: its config, its run's storage, and what its progress event will report."""

    name: str
    shadow: int | None
    cfg: ExperimentConfig
    storage: RunStorage
    outcome: dict[str, Any] = field(default_factory=lambda: {"event": "done"})

    @property
    def store(self):
        return self.storage.store

    @property
    def layout(self):
        return self.storage.layout

    def skipped(self) -> None:
        """Report the task as 'skipped': everything it outputs was reused from the store."""
        self.outcome["event"] = "skipped"

    def set_aside(self, prefix: str, damaged: list[str], keys: list[str] | None = None) -> None:
        """Move a damaged prefix (or only ``keys`` of it) to the quarantine and say so in one line."""
        why = "does not match its COMPLETE marker"
        if self.store.unsigned(prefix):
            why = "is listed by a COMPLETE marker without this install's seal"
        where = self.storage.set_aside(prefix, keys)
        who = f"{self.name}" + (f" of shadow {self.shadow}" if self.shadow is not None else "")
        message = f"{self.store.uri(damaged[0])} {why}: moved aside to {where}"
        print(f"memaudit: {who}: {message}; recomputing", file=sys.stderr, flush=True)
        progress.emit(self.name, "damaged", shadow=self.shadow, message=message)

    def reuse_or_build_dir(self, prefix: str, out: Path, build: Callable[[Path], Any]) -> bool:
        """Download the sealed ``prefix`` into ``out`` (verified as it is read), or ``build(out)``, upload it and
        seal the prefix; a damaged prefix is set aside and rebuilt. Returns whether it was reused."""
        if self.store.is_complete(prefix):
            try:
                self.store.get_dir(prefix, out)
                return True
            except CorruptedObject as exc:
                self.set_aside(prefix, [exc.key])
                shutil.rmtree(out, ignore_errors=True)
        build(out)
        self.store.put_dir(prefix, out)
        self.store.write_complete(prefix)
        return False

    def reuse_or_build_file(self, key: str, path: Path, build: Callable[[Path], Any]) -> bool:
        """Download the sealed file ``key`` to ``path`` (verified), or ``build(path)`` and seal it by itself; a
        damaged file is set aside and rebuilt. Returns whether it was reused."""
        if self.store.is_sealed(key):
            try:
                self.store.get_file(key, path)
                return True
            except CorruptedObject as exc:
                self.set_aside(exc.prefix, [key], keys=[key])
        build(path)
        self.storage.put_sealed_file(key, path)
        return False


@contextlib.contextmanager
def task(
    name: str,
    *,
    config_json: str | None = None,
    resolve: Callable[[], ExperimentConfig] | None = None,
    shadow: int | None = None,
) -> Iterator[Task]:
    """Run a task body: progress start/done (or 'skipped', or 'error' with the one-line problem), the config from
    the prepare task's JSON (or ``resolve()``, for prepare itself) and the run's storage."""
    progress.emit(name, "start", shadow=shadow)
    try:
        if f"{name}:{shadow}" in os.environ.get(FAULT_ENV, "").split(","):
            raise RuntimeError(f"injected failure ({FAULT_ENV})")
        cfg = resolve() if resolve is not None else config_from_dict(json.loads(config_json), source="task config")
        current = Task(name, shadow, cfg, run_storage(cfg))
        yield current
    except MemauditError as exc:
        progress.emit(name, "error", shadow=shadow, message=exc.problem, fix=exc.fix)
        raise
    except Exception as exc:  # reported like a MemauditError; a shadow task then records it (shadow_failed)
        progress.emit(name, "error", shadow=shadow, message=f"{type(exc).__name__}: {exc}", fix=None)
        raise
    outcome = current.outcome
    progress.emit(name, outcome.pop("event"), shadow=shadow, **outcome)


@dataclass
class TaskResult:
    uri: str
    metadata: dict[str, Any] = field(default_factory=dict)


def base_model_folder(base_model_path: str) -> Path | None:
    """The base model folder handed over by prepare, or None for a Hub model (loaded by name)."""
    path = Path(base_model_path)
    return path if (path / "config.json").is_file() else None


FAILED_PREFIX = "failed:"  # the output URI of a shadow task that failed: failed:<shadow>:<stage>: <problem>


def shadow_failed(stage: str, shadow: int, exc: Exception, manifest_path: str) -> TaskResult:
    """What a shadow task returns when it fails: the loop goes on (the aggregate decides with
    ``shadows.min_complete``), and its output names the shadow, the stage and the problem."""
    problem = exc.problem if isinstance(exc, MemauditError) else f"{type(exc).__name__}: {exc}"
    return failed_result(f"{FAILED_PREFIX}{shadow}:{stage}: {' '.join(problem.split())[:300]}", shadow, manifest_path)


def failed_result(uri: str, shadow: int, manifest_path: str) -> TaskResult:
    """The output of a shadow task that failed (or whose upstream task did): the failure URI, in its manifest too."""
    Path(manifest_path).write_text(json.dumps({"shadow": shadow, "failed": uri}))
    return TaskResult(uri=uri, metadata={"shadow": shadow, "failed": uri})


def failure_of(uri: str) -> tuple[int, str] | None:
    """(shadow, "stage: problem") of a failed shadow task's output URI, else None."""
    if not uri.startswith(FAILED_PREFIX):
        return None
    shadow, _, what = uri[len(FAILED_PREFIX) :].partition(":")
    return int(shadow), what.strip()
