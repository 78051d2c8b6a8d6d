"""An MLflow server with basic auth (as the chart runs it): an audit logs with the login from the environment (the
tasks get it from the Secret run.tracking_secret) and is refused, in one line, without it."""

import pytest

from memaudit.errors import MemauditError
from tests.support.pipeline_config import small_config
from tests.support.task_runs import env, prepare  # noqa: F401

pytestmark = pytest.mark.integration


def test_an_audit_logs_with_the_login_and_is_refused_without(env, mlflow_auth_server, monkeypatch):  # noqa: F811
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_auth_server.uri)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(MemauditError) as refused:
        prepare(env, small_config())
    assert "refused the request (not logged in)" in str(refused.value)
    assert "MLFLOW_TRACKING_USERNAME" in refused.value.fix and mlflow_auth_server.password not in str(refused.value)

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", mlflow_auth_server.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", mlflow_auth_server.password)
    result, _ = prepare(env, small_config())
    run = MlflowClient(mlflow_auth_server.uri).get_run(result.parent_run_id)  # read back with the same login
    assert run.info.status == "RUNNING" and run.data.params["dataset.name"] == "synthetic"
