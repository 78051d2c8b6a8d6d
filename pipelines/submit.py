"""Submit a run to a Kubeflow Pipelines API: upload the compiled pipeline (as a new version when it changed),
find or create the experiment, start the run with the resolved config as its ``config_yaml`` parameter."""

import hashlib
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from memaudit.config import ExperimentConfig
from memaudit.errors import MemauditError
from memaudit.pipelines.audit import PIPELINE_NAME
from memaudit.pipelines.compile import compile_pipeline


@dataclass
class Submission:
    run_id: str
    run_url: str
    pipeline_id: str
    version_id: str
    experiment_id: str


def _check_api(host: str, token: str | None, timeout_s: float = 10.0) -> None:
    """Fail fast, in one line, when the API is unreachable or refuses us (kfp.Client would retry for minutes)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{host.rstrip('/')}/apis/v2beta1/healthz")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return
    except urllib.error.HTTPError as exc:
        raise MemauditError(
            f"the Kubeflow Pipelines API at {host} refused the request (HTTP {exc.code} {exc.reason})",
            "check --host, --namespace and your credentials (--token or KF_PIPELINES_TOKEN)",
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MemauditError(
            f"cannot reach the Kubeflow Pipelines API at {host} ({reason})",
            "check --host (e.g. kubectl port-forward svc/ml-pipeline-ui 8080:80 -n kubeflow, then "
            "--host http://localhost:8080)",
        ) from None


def _client(host: str, namespace: str | None, token: str | None):
    import kfp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(host=host, namespace=namespace or "kubeflow", existing_token=token)


def _version_id(client, pipeline_id: str, name: str) -> str | None:
    token = ""
    while True:
        page = client.list_pipeline_versions(pipeline_id=pipeline_id, page_token=token, page_size=100)
        for version in page.pipeline_versions or []:
            if version.display_name == name:
                return version.pipeline_version_id
        token = page.next_page_token
        if not token:
            return None


def submit_run(
    cfg: ExperimentConfig,
    *,
    host: str,
    experiment: str | None = None,
    run_name: str | None = None,
    namespace: str | None = None,
    token: str | None = None,
) -> Submission:
    """Compile ``cfg``, upload it and start a run; an unreachable or refusing API raises :class:`MemauditError`."""
    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    _check_api(host, token)
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "audit.yaml"
        compile_pipeline(cfg, package)
        digest = hashlib.sha256(package.read_bytes()).hexdigest()[:12]
        version_name = f"{cfg.fingerprint()}-{digest}"
        run_name = run_name or f"{cfg.preset or 'audit'}-{cfg.fingerprint()}"
        try:
            client = _client(host, namespace, token)
            pipeline_id = client.get_pipeline_id(PIPELINE_NAME)
            if pipeline_id is None:
                pipeline = client.upload_pipeline(
                    str(package), pipeline_name=PIPELINE_NAME, description="memaudit audit pipeline"
                )
                pipeline_id = pipeline.pipeline_id
            version_id = _version_id(client, pipeline_id, version_name)
            if version_id is None:
                version = client.upload_pipeline_version(
                    str(package), pipeline_version_name=version_name, pipeline_id=pipeline_id
                )
                version_id = version.pipeline_version_id
            exp = client.create_experiment(name=experiment or cfg.run.experiment, namespace=namespace)
            run = client.run_pipeline(
                experiment_id=exp.experiment_id,
                job_name=run_name,
                params={"preset": cfg.preset or "", "config_yaml": cfg.to_yaml(), "run_name": run_name},
                pipeline_id=pipeline_id,
                version_id=version_id,
                enable_caching=False,
                service_account=cfg.run.service_account or None,
            )
        except (HTTPError, OSError) as exc:
            raise MemauditError(
                f"cannot reach the Kubeflow Pipelines API at {host} ({type(exc).__name__})",
                "check --host (e.g. kubectl port-forward svc/ml-pipeline-ui 8080:80 -n kubeflow, then "
                "--host http://localhost:8080)",
            ) from None
        except ApiException as exc:
            raise MemauditError(
                f"the Kubeflow Pipelines API at {host} refused the request (HTTP {exc.status} {exc.reason})",
                "check --host, --namespace and your credentials (--token or KF_PIPELINES_TOKEN)",
            ) from None
    url = f"{host.rstrip('/')}/#/runs/details/{run.run_id}"
    return Submission(run.run_id, url, pipeline_id, version_id, exp.experiment_id)
