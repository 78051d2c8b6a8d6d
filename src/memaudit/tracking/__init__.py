"""MLflow tracking (docs/design.md §6): an audit's parent run, a child run per shadow, the headline on the parent,
and reading audits back for ``memaudit compare``.

:mod:`~memaudit.tracking.client` wraps the MLflow client (fast probe, one-line errors, batches),
:mod:`~memaudit.tracking.runs` writes runs, :mod:`~memaudit.tracking.query` reads them.
"""

from memaudit.tracking.client import EXPERIMENT_KIND, runs_page, tracking_uri
from memaudit.tracking.query import TrackedRun, find_runs
from memaudit.tracking.runs import (
    COMPARED_SETTINGS,
    CONFIG_ARTIFACT,
    PREDICTION_ROLE,
    SHADOWS_COMPLETE,
    PoolInput,
    code_version,
    config_params,
    flatten_metrics,
    guard_secrets,
    log_shadow,
    log_summary,
    metric_name,
    safe_config,
    start_parent_run,
)

__all__ = [
    "COMPARED_SETTINGS",
    "CONFIG_ARTIFACT",
    "EXPERIMENT_KIND",
    "PREDICTION_ROLE",
    "SHADOWS_COMPLETE",
    "PoolInput",
    "TrackedRun",
    "code_version",
    "config_params",
    "find_runs",
    "flatten_metrics",
    "guard_secrets",
    "log_shadow",
    "log_summary",
    "metric_name",
    "runs_page",
    "safe_config",
    "start_parent_run",
    "tracking_uri",
]
