"""Submit a run to a Kubeflow Pipelines API: upload the compiled pipeline (as a new version when it changed),
find or create the experiment, start the run with the resolved config as its ``config_yaml`` parameter."""

import hashlib
import json
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml

from memaudit.config import ExperimentConfig
from memaudit.errors import MemauditError
from memaudit.pipelines.compile import PipelineKind, compile_pipeline, pipeline_kind


@dataclass
class Submission:
    run_id: str
    run_url: str
    pipeline_id: str
    version_id: str
    experiment_id: str


BACKEND_FLOOR = (2, 16)  # named-ParallelFor Collected fixed in 2.16 (#13239); 2.17 recommended (#11979)
RECOMMENDED_BACKEND = "2.17.0"


def _backend_version(tag: str) -> tuple[int, int] | None:
    """(major, minor) of a healthz ``tag_name`` such as ``2.17.0`` or ``v2.16.1-rc.1``; None for dev builds."""
    match = re.match(r"v?(\d+)\.(\d+)", tag or "")
    return (int(match[1]), int(match[2])) if match else None


def _refused(host: str, code: int, body: str) -> MemauditError:
    """One line carrying the server's own message (KFP answers ``{"error": ..., "message": ...}``)."""
    try:
        payload = json.loads(body)
        message = payload.get("message") or payload.get("error") or body
    except (ValueError, AttributeError):
        message = body
    detail = " ".join(str(message).split())[:300]
    return MemauditError(
        f"the Kubeflow Pipelines API at {host} refused the request (HTTP {code}: {detail or 'no message'})",
        "check --host, --namespace and your credentials (--token, KF_PIPELINES_TOKEN or a service-account token)",
    )


def _unreachable(host: str, reason: object) -> MemauditError:
    return MemauditError(
        f"cannot reach the Kubeflow Pipelines API at {host} ({reason})",
        "check --host (e.g. kubectl port-forward svc/ml-pipeline-ui 8080:80 -n kubeflow, then "
        "--host http://localhost:8080)",
    )


def _check_api(host: str, token: str | None, timeout_s: float = 10.0) -> None:
    """Fail fast, in one line, when the API is unreachable, refuses us or is older than :data:`BACKEND_FLOOR`."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{host.rstrip('/')}/apis/v2beta1/healthz")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            health = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise _refused(host, exc.code, exc.read().decode("utf-8", "replace")) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _unreachable(host, reason) from None
    tag = str(health.get("tag_name") or "")
    version = _backend_version(tag)
    if version is not None and version < BACKEND_FLOOR:
        floor = ".".join(map(str, BACKEND_FLOOR))
        raise MemauditError(
            f"the Kubeflow Pipelines backend at {host} is {tag}; memaudit needs {floor} or newer",
            f"upgrade Kubeflow Pipelines to {RECOMMENDED_BACKEND} (docs/cluster.md, section 2)",
        )


NAMESPACE_ENV = "KF_PIPELINES_NAMESPACE"
TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"  # projected token, audience pipelines.kubeflow.org


def resolve_namespace(namespace: str | None) -> str | None:
    """``--namespace``, else $KF_PIPELINES_NAMESPACE, else the current kube context's namespace, else None."""
    if namespace or os.environ.get(NAMESPACE_ENV):
        return namespace or os.environ[NAMESPACE_ENV]
    kubeconfig = Path(os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0]).expanduser()
    try:
        doc = yaml.safe_load(kubeconfig.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    current = doc.get("current-context")
    for entry in doc.get("contexts") or []:
        if entry.get("name") == current:
            return (entry.get("context") or {}).get("namespace")
    return None


def resolve_token(token: str | None) -> str | None:
    """``--token``/$KF_PIPELINES_TOKEN, else the projected service-account token file when it exists."""
    if token:
        return token
    path = Path(os.environ.get(TOKEN_PATH_ENV, TOKEN_PATH))
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _pipeline_id(client, name: str, namespace: str | None) -> str | None:
    """The id of the pipeline ``name`` visible in ``namespace`` (kfp's get_pipeline_id ignores namespaces)."""
    name_filter = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})
    found = client.list_pipelines(filter=name_filter, namespace=namespace).pipelines or []
    return found[0].pipeline_id if found else None


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


def _upload(client, kind: PipelineKind, package: Path, version_name: str, namespace: str | None) -> tuple[str, str]:
    """(pipeline id, version id): the pipeline is created once, a version only when the compiled spec changed."""
    pipeline_id = _pipeline_id(client, kind.name, namespace)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(
            str(package), pipeline_name=kind.name, description=kind.description, namespace=namespace
        )
        pipeline_id = pipeline.pipeline_id
    version_id = _version_id(client, pipeline_id, version_name)
    if version_id is None:
        version = client.upload_pipeline_version(
            str(package), pipeline_version_name=version_name, pipeline_id=pipeline_id
        )
        version_id = version.pipeline_version_id
    return pipeline_id, version_id


def submit_run(
    cfg: ExperimentConfig,
    *,
    host: str,
    experiment: str | None = None,
    run_name: str | None = None,
    namespace: str | None = None,
    token: str | None = None,
    pipeline: str = "audit",
) -> Submission:
    """Compile ``cfg``, upload it and start a run; an unreachable or refusing API raises :class:`MemauditError`."""
    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    kind = pipeline_kind(pipeline)
    namespace, token = resolve_namespace(namespace), resolve_token(token)
    _check_api(host, token)
    prefix = cfg.preset or "audit" if pipeline == "audit" else f"{pipeline}-{cfg.preset or 'custom'}"
    run_name = run_name or f"{prefix}-{cfg.fingerprint()}"
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / kind.compiled.name
        compile_pipeline(cfg, package, pipeline=pipeline)
        version_name = f"{cfg.fingerprint()}-{hashlib.sha256(package.read_bytes()).hexdigest()[:12]}"
        try:
            client = _client(host, namespace, token)
            pipeline_id, version_id = _upload(client, kind, package, version_name, namespace)
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
            raise _unreachable(host, type(exc).__name__) from None
        except ApiException as exc:
            raise _refused(host, exc.status, exc.body or exc.reason or "") from None
    url = f"{host.rstrip('/')}/#/runs/details/{run.run_id}"
    return Submission(run.run_id, url, pipeline_id, version_id, exp.experiment_id)
