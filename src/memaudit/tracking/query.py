"""Reading audits back from MLflow: the parent runs named by id or name, or every audit of an experiment."""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memaudit.errors import MemauditError
from memaudit.redact import redact_url
from memaudit.tracking.client import client
from memaudit.tracking.runs import EVALUATION_TAG, PIPELINE_ROLE, ROLE_TAG, SUMMARY_ARTIFACT

_RUN_ID = re.compile(r"[0-9a-f]{32}")
_AUDITS = f"tags.`{ROLE_TAG}` = '{PIPELINE_ROLE}' and attributes.status = 'FINISHED'"


@dataclass(frozen=True)
class TrackedRun:
    """A finished audit's parent run: ids, name, tags, params, latest metrics and its ``summary.json`` (None when
    it has none)."""

    run_id: str
    name: str
    experiment: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    summary: dict[str, Any] | None


def _summary(mlflow_client: Any, run_id: str) -> dict[str, Any] | None:
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            return json.loads(Path(mlflow_client.download_artifacts(run_id, SUMMARY_ARTIFACT, tmp)).read_text())
        except (MlflowException, OSError, ValueError):
            return None


def _tracked(mlflow_client: Any, run: Any, experiments: dict[str, str]) -> TrackedRun:
    info, data = run.info, run.data
    return TrackedRun(info.run_id, info.run_name, experiments.get(info.experiment_id, ""), dict(data.tags),
                      dict(data.params), dict(data.metrics), _summary(mlflow_client, info.run_id))  # fmt: skip


def _by_name(mlflow_client: Any, name: str, experiments: dict[str, str], uri: str) -> Any:
    """The latest finished audit run named ``name`` in any experiment."""
    query = f"attributes.run_name = '{name}' and {_AUDITS}"
    runs = mlflow_client.search_runs(list(experiments), filter_string=query, order_by=["attributes.start_time DESC"])
    if not runs:
        raise MemauditError(
            f"no finished audit run {name!r} at {redact_url(uri)}",
            "pass a run id or name from the MLflow UI (or --experiment NAME), and the tracking URI it was logged to",
        )
    return runs[0]


def _experiment_runs(mlflow_client: Any, name: str, uri: str) -> list[Any]:
    """The experiment's finished audits, oldest first; a repeated audit (same evaluation fingerprint, e.g. a
    resumed run) counts once, by its latest run."""
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        raise MemauditError(f"no MLflow experiment {name!r} at {redact_url(uri)}", "pass an experiment that exists")
    runs = mlflow_client.search_runs([experiment.experiment_id], filter_string=_AUDITS,
                                     order_by=["attributes.start_time DESC"], max_results=50000)  # fmt: skip
    latest = {}
    for run in runs:
        latest.setdefault(run.data.tags.get(EVALUATION_TAG) or run.info.run_id, run)
    return list(latest.values())[::-1]


def find_runs(uri: str, refs: list[str], experiments: list[str]) -> list[TrackedRun]:
    """The finished audit runs named by ``refs`` (run ids or run names; a name means its latest run), then those of
    each experiment in ``experiments``, each once, in that order; an unknown one is a one-line error."""
    from mlflow.exceptions import MlflowException

    with client(uri) as mlflow_client:
        known = {e.experiment_id: e.name for e in mlflow_client.search_experiments()}
        runs = []
        for ref in refs:
            try:
                run = mlflow_client.get_run(ref) if _RUN_ID.fullmatch(ref) else None
            except MlflowException:
                run = None
            runs.append(run or _by_name(mlflow_client, ref, known, uri))
        for name in experiments:
            runs += _experiment_runs(mlflow_client, name, uri)
        unique = {run.info.run_id: run for run in runs}
        return [_tracked(mlflow_client, run, known) for run in unique.values()]
