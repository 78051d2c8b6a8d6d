"""The Helm chart (charts/memaudit).

Without helm: the templates parse as Go templates (tests/gotemplate.py), every ``.Values`` path they use exists
and every value is used, values.yaml satisfies values.schema.json and the schema rejects typical mistakes, and
the run config the chart carries is a valid memaudit config whose names match the pipeline's contract.

With Helm's engine (the ``helm`` CLI when it is on PATH, else the helm-python-sdk dev dependency, which binds
Helm's Go SDK): ``helm lint --strict``, rendering with several value sets, kubernetes-validate --strict on every
manifest, the security and label conventions on the rendered pods, and the submit Job's exact command line run
against the local KFP REST server. Without either, those tests skip and say so.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from memaudit.config import RunConfig, load_config
from memaudit.pipelines.audit import ENV_CONFIG_KEYS, MLFLOW_CLIENT_LABEL, S3_SECRET_KEYS
from tests.support import gotemplate
from tests.support.chart import CHART, ENGINE, SCHEMA, VALUES, by_kind, deep_merge, needs_helm, render

TEMPLATES = sorted((CHART / "templates").iterdir())
STANDARD_LABELS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
}


# ------------------------------------------------------------------------------------- template structure


@pytest.fixture(scope="module")
def reports():
    return {path.name: gotemplate.check(path.name, path.read_text()) for path in TEMPLATES}


def test_templates_parse_as_go_templates(reports):
    errors = [error for report in reports.values() for error in report.errors]
    assert not errors, "\n".join(errors)
    assert {"_helpers.tpl", "NOTES.txt"} <= set(reports)


def test_every_include_names_a_defined_template(reports):
    defined = [name for report in reports.values() for name in report.defines]
    assert len(defined) == len(set(defined)), "a template name is defined twice"
    used = {name for report in reports.values() for name in report.includes}
    assert used <= set(defined), f"include of undefined templates: {used - set(defined)}"
    assert set(defined) <= used, f"templates defined but never included: {set(defined) - used}"


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("{{ if .Values.a }}x", "never closed by 'end'"),
        ("x{{ end }}", "'end' without an open block"),
        ("{{ else }}", "'else' outside"),
        ("{{ .Values.a", "never closed"),
        ("a: {{ .Values.a }}}}", "outside an action"),
        ('{{ include "x" (dict "a" 1 }}', "unbalanced parentheses"),
        ("{{- /* note */ -}}{{ range .Values.l }}{{ with . }}{{ end }}", "'range' opened here"),
        ('{{ define "a" }}{{ if .X }}{{ else if .Y }}{{ end }}', "'define' opened here"),
    ],
)
def test_checker_rejects_broken_templates(source, problem):
    report = gotemplate.check("t.yaml", source)
    assert any(problem in error for error in report.errors), report.errors


def test_checker_accepts_strings_and_comments_with_braces():
    source = '{{/* a }} b */}}{{ printf "}}{{%s" .Values.a.b }}{{- if eq `}}` "x" }}y{{ else }}z{{ end -}}'
    report = gotemplate.check("t.yaml", source)
    assert report.errors == []
    assert report.values_paths == {("a", "b")}


def _value_leaves(node, prefix=()):
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _value_leaves(value, (*prefix, key))
    else:
        yield prefix


def _exists(path: tuple[str, ...]) -> bool:
    node = VALUES
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_every_values_path_in_the_templates_exists_in_values_yaml(reports):
    missing = {
        f"{name}: .Values.{'.'.join(path)}"
        for name, report in reports.items()
        for path in report.values_paths
        if not _exists(path)
    }
    assert not missing, sorted(missing)


def test_every_value_is_used_by_a_template(reports):
    used = {path for report in reports.values() for path in report.values_paths}
    unused = [".".join(leaf) for leaf in _value_leaves(VALUES) if not any(leaf[: len(path)] == path for path in used)]
    assert not unused, f"values no template reads: {unused}"


# --------------------------------------------------------------------------------------- values and schema


def _validate(values: dict) -> None:
    jsonschema.validate(values, SCHEMA, cls=jsonschema.Draft7Validator)


def test_values_yaml_satisfies_the_schema():
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    _validate(VALUES)
    _validate(deep_merge(VALUES, {"submit": {"enabled": True, "set": ["shadows.n_shadows=8"]}}))


@pytest.mark.parametrize(
    "change",
    [
        {"mlfow": {"enabled": False}},  # typo at the top level
        {"s3": {"acessKey": "x"}},  # typo in a section
        {"config": {"run": {"paralelism": 4}}},  # typo in the run config
        {"config": {"runn": {}}},
        {"config": {"run": {"parallelism": 0}}},
        {"config": {"run": {"parallelism": "8"}}},
        {"config": {"run": {"gpu_resources": {"cpu": 8, "memory": "64Gi"}}}},  # memaudit wants a string
        {"config": {"run": {"gpu_tolerations": [{"key": "nvidia.com/gpu", "operator": "exists"}]}}},
        {"config": {"run": {"gpu_node_selector": {"pool": True}}}},
        {"config": {"run": {"s3_secret": "Memaudit_S3"}}},  # not a Kubernetes name
        {"s3": {"endpoint": "minio-service.kubeflow:9000"}},  # no scheme
        {"s3": {"bucket": "My_Bucket"}},
        {"mlflow": {"port": 70000}},
        {"mlflow": {"persistence": {"size": "5GB"}}},
        {"image": {"pullPolicy": "IfNotPreset"}},
        {"submit": {"set": ["shadows.n_shadows"]}},  # no '='
        {"buckets": {"resources": {"requests": {"cpu": "lots"}}}},
    ],
)
def test_schema_rejects_wrong_values(change):
    with pytest.raises(jsonschema.ValidationError):
        _validate(deep_merge(VALUES, change))


def test_schema_run_fields_are_memaudits_run_fields():
    run_schema = SCHEMA["properties"]["config"]["properties"]["run"]
    assert set(run_schema["properties"]) == set(RunConfig.model_fields)
    toleration = run_schema["properties"]["gpu_tolerations"]["items"]["properties"]
    assert set(toleration) == {"key", "operator", "value", "effect"}


def test_chart_run_defaults_equal_memaudits_defaults():
    defaults = RunConfig()
    run = VALUES["config"]["run"]
    for field in ("image_gpu", "image_cpu", "s3_secret", "env_config_map", "hf_token_secret", "service_account"):
        assert run[field] == getattr(defaults, field), field


@pytest.mark.parametrize("preset", ["demo", "arc-mistral", "mmlu-gemma"])
def test_chart_config_is_a_valid_memaudit_config_on_top_of_each_preset(tmp_path, preset):
    config = deep_merge(VALUES["config"], {"preset": preset})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cfg = load_config(path=path)
    assert cfg.preset == preset
    # the chart sets only names and images: the preset's GPU scheduling survives
    assert cfg.run.parallelism == load_config(preset=preset).run.parallelism
    assert cfg.run.gpu_node_selector == load_config(preset=preset).run.gpu_node_selector


# ------------------------------------------------------------------------------------ with Helm's engine


def _pod_specs(docs):
    for doc in docs:
        if doc["kind"] in {"Deployment", "Job"}:
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


@needs_helm
@pytest.mark.parametrize("engine", [ENGINE])
def test_helm_lint_strict_passes(engine):
    if engine == "helm-cli":
        proc = subprocess.run(
            ["helm", "lint", "--strict", str(CHART)],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    else:
        import helm_python

        report = helm_python.lint(CHART, {}, strict=True)
        problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 = warning, 3 = error
        assert not problems and not report["errors"], report


VARIANTS = {
    "defaults": {},
    "submit": {
        "submit": {
            "enabled": True,
            "experiment": "audits",
            "runName": "smoke",
            "set": ["shadows.n_shadows=4", "run.parallelism=2"],
            "tokenSecret": "kfp-token",
        },
    },
    "submit-multi-user": {
        "submit": {"enabled": True, "multiUser": True, "namespace": "team-a"},
    },
    "named-secrets-external-db": {
        "config": {"run": {"s3_secret": "my-s3"}},
        "s3": {"endpoint": "https://s3.eu-west-1.amazonaws.com"},
        "mlflow": {"backendStore": {"existingSecret": "mlflow-db"}, "artifactsSecret": "my-mlflow-s3"},
        "image": {"pullSecrets": ["regcred"]},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/memaudit"}},
    },
    "no-mlflow-no-rbac": {
        "mlflow": {"enabled": False, "trackingUri": "http://mlflow.tools:5000"},
        "rbac": {"create": False},
        "buckets": {"create": False},
        "nodeSelector": {"pool": "cpu"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
    },
}


@needs_helm
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_rendered_manifests_are_valid_kubernetes(variant):
    docs = render(VARIANTS[variant])
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


@needs_helm
def test_helm_template_output_passes_the_kubernetes_validate_cli():
    text = "---\n".join(yaml.safe_dump(doc) for doc in render(VARIANTS["submit"]))
    cli = Path(sys.executable).parent / "kubernetes-validate"
    proc = subprocess.run([str(cli), "--strict", "-"], input=text, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("passed") == len(render(VARIANTS["submit"]))


@needs_helm
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pods_are_locked_down_and_resources_labelled(variant):
    docs = render(VARIANTS[variant])
    for doc in docs:
        assert set(doc["metadata"]["labels"]) >= STANDARD_LABELS, doc["metadata"]["name"]
    for name, pod in _pod_specs(docs):
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in pod.get("initContainers", []) + pod["containers"]:
            ctx = container["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["capabilities"]["drop"] == ["ALL"], name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name


@needs_helm
def test_default_render_has_what_a_run_needs_with_the_pipelines_names():
    docs = by_kind(render({}))
    run = RunConfig()
    env = docs[("ConfigMap", run.env_config_map)]["data"]
    assert set(env) == set(ENV_CONFIG_KEYS)
    assert env["MEMAUDIT_S3_SECURE"] == "false"
    assert env["MLFLOW_TRACKING_URI"] == "http://memaudit-mlflow.kubeflow.svc.cluster.local:5000"
    assert ("Service", "memaudit-mlflow") in docs and ("PersistentVolumeClaim", "memaudit-mlflow") in docs
    assert ("Job", "memaudit-buckets") in docs and not any(kind == "Job" and "submit" in n for kind, n in docs)
    binding = docs[("RoleBinding", "memaudit-pipeline")]
    assert binding["subjects"][0]["name"] == VALUES["serviceAccount"]["name"]
    run_config = yaml.safe_load(docs[("ConfigMap", "memaudit-run")]["data"]["config.yaml"])
    assert run_config["run"]["service_account"] == VALUES["serviceAccount"]["name"]  # the Role's account, not KFP's


@needs_helm
@pytest.mark.parametrize(
    ("values", "account"),
    [({"rbac": {"create": False}}, ""), ({"config": {"run": {"service_account": "team-a-runner"}}}, "team-a-runner")],
)
def test_pipeline_pods_run_as_kfps_account_only_without_the_charts_role(values, account):
    docs = by_kind(render(deep_merge({}, values)))
    run_config = yaml.safe_load(docs[("ConfigMap", "memaudit-run")]["data"]["config.yaml"])
    assert run_config["run"]["service_account"] == account


@needs_helm
def test_only_the_pipelines_pods_and_named_peers_reach_mlflow():
    ingress_ns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    docs = by_kind(render(deep_merge({}, {"networkPolicy": {"extraFrom": [ingress_ns]}})))
    policy = docs[("NetworkPolicy", "memaudit-mlflow")]["spec"]
    server = docs[("Deployment", "memaudit-mlflow")]["spec"]["template"]["metadata"]["labels"]
    assert policy["policyTypes"] == ["Ingress"] and policy["podSelector"]["matchLabels"].items() <= server.items()
    (rule,) = policy["ingress"]
    label, value = MLFLOW_CLIENT_LABEL  # the label the compiled pipeline gives every task pod
    assert rule["from"] == [{"podSelector": {"matchLabels": {label: value}}}, ingress_ns]
    assert rule["ports"] == [{"protocol": "TCP", "port": VALUES["mlflow"]["port"]}]
    assert ("NetworkPolicy", "memaudit-mlflow") not in by_kind(render({"networkPolicy": {"enabled": False}}))


@needs_helm
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_chart_holds_no_credential_and_reads_the_named_secrets(variant):
    docs = render(VARIANTS[variant])
    assert not [d for d in docs if d["kind"] == "Secret"]  # credentials never pass through Helm's release data
    run = yaml.safe_load(by_kind(docs)[("ConfigMap", "memaudit-run")]["data"]["config.yaml"])["run"]
    allowed = {run["s3_secret"], VARIANTS[variant].get("mlflow", {}).get("artifactsSecret")}
    for name, pod in _pod_specs(docs):
        for container in pod.get("initContainers", []) + pod["containers"]:
            env = [
                e["valueFrom"]["secretKeyRef"]
                for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            ]
            s3 = {ref["name"] for ref in env if ref["key"] in S3_SECRET_KEYS}
            s3 |= {source["secretRef"]["name"] for source in container.get("envFrom", []) if "secretRef" in source}
            assert s3 <= allowed, name


def test_the_schema_has_no_place_for_a_credential():
    with pytest.raises(jsonschema.ValidationError):
        _validate(deep_merge(VALUES, {"s3": {"accessKey": "minio", "secretKey": "minio123"}}))
    with pytest.raises(jsonschema.ValidationError):
        _validate(deep_merge(VALUES, {"hf": {"token": "hf_x"}}))


@needs_helm
def test_named_secrets_and_an_external_database_are_used_everywhere():
    docs = render(VARIANTS["named-secrets-external-db"])
    kinds = by_kind(docs)
    assert ("PersistentVolumeClaim", "memaudit-mlflow") in kinds  # the logins' database
    run_config = yaml.safe_load(kinds[("ConfigMap", "memaudit-run")]["data"]["config.yaml"])
    assert run_config["run"]["s3_secret"] == "my-s3"
    assert kinds[("ConfigMap", "memaudit-env")]["data"]["MEMAUDIT_S3_SECURE"] == "true"
    mlflow = kinds[("Deployment", "memaudit-mlflow")]["spec"]["template"]["spec"]
    refs = [e["valueFrom"]["secretKeyRef"]["name"] for e in mlflow["containers"][0]["env"] if "valueFrom" in e]
    assert refs == ["mlflow-db", "my-mlflow-s3", "my-mlflow-s3", *[RunConfig().tracking_secret] * 3]
    without_auth = deep_merge(VARIANTS["named-secrets-external-db"], {"mlflow": {"auth": {"enabled": False}}})
    assert ("PersistentVolumeClaim", "memaudit-mlflow") not in by_kind(render(without_auth))  # nothing in SQLite
    assert mlflow["imagePullSecrets"] == [{"name": "regcred"}]
    for _, pod in _pod_specs(docs):
        for container in pod.get("initContainers", []) + pod["containers"]:
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    assert source["secretRef"]["name"] == "my-s3"


@needs_helm
def test_mlflow_server_command_proxies_artifacts_to_the_bucket():
    kinds = by_kind(render({}))
    container = kinds[("Deployment", "memaudit-mlflow")]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["mlflow", "server"]
    args = dict(arg.removeprefix("--").split("=", 1) for arg in container["args"] if "=" in arg)
    assert args["artifacts-destination"] == f"s3://{VALUES['mlflow']['artifactsBucket']}"
    assert "--serve-artifacts" in container["args"]
    hosts = args["allowed-hosts"].split(",")
    assert {"memaudit-mlflow.kubeflow.svc.cluster.local:*", "localhost:*"} <= set(hosts)
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == VALUES["s3"]["endpoint"]
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("sqlite:////data/")
    assert not any("backend-store-uri" in arg or "$(" in arg for arg in container["args"])  # env only, never argv
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/data", "/tmp", "/etc/mlflow-auth"} <= mounts
    assert "--app-name=basic-auth" in container["args"]  # a login for every request but /health
    login = {
        name: e["valueFrom"]["secretKeyRef"]
        for name, e in env.items()
        if name.startswith(("MLFLOW_AUTH_A", "MLFLOW_F"))
    }
    tracking = RunConfig().tracking_secret  # the tasks' login is the server's admin
    assert login == {
        "MLFLOW_AUTH_ADMIN_USERNAME": {"name": tracking, "key": "MLFLOW_TRACKING_USERNAME"},
        "MLFLOW_AUTH_ADMIN_PASSWORD": {"name": tracking, "key": "MLFLOW_TRACKING_PASSWORD"},
        "MLFLOW_FLASK_SERVER_SECRET_KEY": {"name": tracking, "key": "MLFLOW_FLASK_SERVER_SECRET_KEY"},
    }
    ini = kinds[("ConfigMap", "memaudit-mlflow-auth")]["data"]["basic_auth.ini"]
    assert "default_permission = NO_PERMISSIONS" in ini and "password" not in ini  # no credential in a ConfigMap


def _submit_job(docs):
    (job,) = [d for d in docs if d["kind"] == "Job" and "submit" in d["metadata"]["name"]]
    return job


def _submit_help_options() -> set[str]:
    from typer.main import get_command

    from memaudit.cli import app

    command = get_command(app).commands["submit"]
    return {opt for param in command.params for opt in param.opts}


@needs_helm
def test_submit_job_options_are_memaudit_submit_options():
    job = _submit_job(render(VARIANTS["submit"]))
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["memaudit", "submit"]
    options = {arg.split("=", 1)[0] for arg in container["args"]}
    assert options <= _submit_help_options(), options - _submit_help_options()
    assert options == {"--host", "--config", "--experiment", "--run-name", "--set"}
    token = [e for e in container["env"] if e["name"] == "KF_PIPELINES_TOKEN"]
    assert token[0]["valueFrom"]["secretKeyRef"] == {"name": "kfp-token", "key": "token"}


@needs_helm
def test_multi_user_submit_uses_a_projected_token_and_the_profiles_edit_role():
    docs = render(VARIANTS["submit-multi-user"])
    job = _submit_job(docs)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "--namespace=team-a" in container["args"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "kfp-token")
    assert mount["mountPath"] == "/var/run/secrets/kubeflow/pipelines"  # kfp.client.KF_PIPELINES_SA_TOKEN_PATH's folder
    (source,) = next(v for v in pod["volumes"] if v["name"] == "kfp-token")["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"
    assert source["serviceAccountToken"]["path"] == "token"
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding" and d["roleRef"]["kind"] == "ClusterRole"]
    assert binding["metadata"]["namespace"] == "team-a"
    assert binding["roleRef"]["name"] == "kubeflow-pipelines-edit"
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
    single = render(VARIANTS["submit"])
    assert not [d for d in single if d["kind"] == "RoleBinding" and d["roleRef"]["kind"] == "ClusterRole"]
    assert "kfp-token" not in {v["name"] for v in _submit_job(single)["spec"]["template"]["spec"]["volumes"]}


@needs_helm
def test_submit_job_command_line_starts_a_run_on_the_local_kfp_api(tmp_path, capsys):
    """The Job's exact arguments, with only the host and the mounted config path pointed at local stand-ins."""
    from memaudit.cli import main
    from memaudit.config import config_from_dict
    from tests.support.kfp_api import FakeKfpApi

    docs = render(VARIANTS["submit"])
    job = _submit_job(docs)
    pod = job["spec"]["template"]["spec"]
    (config_volume,) = [v for v in pod["volumes"] if "configMap" in v]
    config_map = by_kind(docs)[("ConfigMap", config_volume["configMap"]["name"])]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == config_volume["name"]]
    (tmp_path / "config.yaml").write_text(config_map["data"]["config.yaml"])
    args = pod["containers"][0]["args"]
    with FakeKfpApi() as api:
        local = [
            f"--host={api.url}" if a.startswith("--host=") else a.replace(mount["mountPath"], str(tmp_path))
            for a in args
        ]
        main(["submit", *local])
    (run,) = api.runs.values()
    assert run["display_name"] == "smoke"
    assert [e["display_name"] for e in api.experiments.values()] == ["audits"]
    sent = config_from_dict(yaml.safe_load(run["runtime_config"]["parameters"]["config_yaml"]))
    expected = load_config(path=tmp_path / "config.yaml", overrides=["shadows.n_shadows=4", "run.parallelism=2"])
    assert sent == expected
    assert sent.shadows.n_shadows == 4 and sent.run.s3_secret == "memaudit-s3" and sent.preset == "demo"
    assert "follow it at" in capsys.readouterr().out


@needs_helm
def test_bucket_job_creates_the_pipeline_and_mlflow_buckets():
    kinds = by_kind(render({}))
    job = kinds[("Job", "memaudit-buckets")]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["python", "-c"]
    compile(container["command"][2], "bucket-script", "exec")  # the inline script is valid Python
    assert container["args"] == ["--versioning", VALUES["s3"]["bucket"], VALUES["mlflow"]["artifactsBucket"]]
    sources = {next(iter(s.values()))["name"] for s in container["envFrom"]}
    assert sources == {RunConfig().env_config_map, RunConfig().s3_secret}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, host: str, login: tuple[str, str] | None = None) -> int:
    import base64
    import urllib.error
    import urllib.request

    headers = {"Host": host}
    if login:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(login).encode()).decode()
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@needs_helm
@pytest.mark.integration
def test_mlflow_server_with_the_charts_arguments_answers_the_cluster_names_only_after_a_login(tmp_path):
    """The rendered `mlflow server` command and login settings, run here: storage and bind address swapped for local
    ones, the Secret's values given as the pod's environment would give them."""
    import time
    import urllib.error

    kinds = by_kind(render({}))
    ini = kinds[("ConfigMap", "memaudit-mlflow-auth")]["data"]["basic_auth.ini"]
    (tmp_path / "basic_auth.ini").write_text(ini.replace("sqlite:////data/", f"sqlite:///{tmp_path}/"))
    login = ("memaudit", "s3cret-" + os.urandom(8).hex())
    container = kinds[("Deployment", "memaudit-mlflow")]["spec"]["template"]["spec"]["containers"][0]
    port = _free_port()
    local = {
        "--host": "127.0.0.1",
        "--port": str(port),
        "--workers": "1",
        "--artifacts-destination": str(tmp_path / "artifacts"),
    }
    args = [f"{a.split('=')[0]}={local[a.split('=')[0]]}" if a.split("=")[0] in local else a for a in container["args"]]
    mlflow = Path(sys.executable).parent / container["command"][0]
    log = (tmp_path / "server.log").open("w")
    env = {  # as the pod's environment gives them
        **os.environ,
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_USERNAME": login[0],
        "MLFLOW_AUTH_ADMIN_PASSWORD": login[1],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": os.urandom(16).hex(),
    }
    server = subprocess.Popen(  # own session: the server's workers and job consumers are stopped with it
        [str(mlflow), *container["command"][1:], *args],
        cwd=tmp_path,
        stdout=log,
        stderr=log,
        start_new_session=True,
        env=env,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if _get(f"{base}/health", "localhost") == 200:
                    break
            except (urllib.error.URLError, OSError):
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not start in 120 s"
            time.sleep(1)
        search = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
        for host in (
            "memaudit-mlflow",
            "memaudit-mlflow.kubeflow:5000",
            "memaudit-mlflow.kubeflow.svc.cluster.local:5000",
        ):
            assert _get(search, host, login) == 200, host
            assert _get(search, host) == 401, host  # no login, no audit
        assert _get(search, f"localhost:{port}", (login[0], "wrong")) == 401
        assert _get(search, f"localhost:{port}", login) == 200  # kubectl port-forward
        assert _get(search, "attacker.example.com", login) == 403
        assert (tmp_path / "mlflow.db").is_file()  # the database came from the environment, not from argv
        assert (tmp_path / "basic_auth.db").is_file()  # the logins, on the PVC in the pod
    finally:
        import signal

        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        time.sleep(2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)  # consumers that outlived the server
        log.close()


@needs_helm
@pytest.mark.integration
def test_bucket_script_creates_versioned_buckets_on_a_real_s3(s3_server):
    """The rendered bucket script, run against SeaweedFS with the env the pod gets: new buckets are versioned."""
    from minio import Minio

    container = by_kind(render({}))[("Job", "memaudit-buckets")]["spec"]["template"]["spec"]["containers"][0]
    bucket = "memaudit-versioned-" + os.urandom(3).hex()
    env = {**os.environ, "MEMAUDIT_S3_ENDPOINT": s3_server.endpoint, "MEMAUDIT_S3_ACCESS_KEY": s3_server.access_key,
           "MEMAUDIT_S3_SECRET_KEY": s3_server.secret_key}  # fmt: skip
    command = [sys.executable, "-c", container["command"][2], "--versioning", bucket, s3_server.bucket]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    assert f"bucket {bucket} created with versioning" in out and f"bucket {s3_server.bucket} exists" in out
    client = Minio(s3_server.endpoint.removeprefix("http://"), s3_server.access_key, s3_server.secret_key, secure=False)
    assert client.get_bucket_versioning(bucket).status == "Enabled"


@needs_helm
def test_a_private_ca_reaches_the_servers_and_jobs_that_talk_to_the_store():
    docs = render({"config": {"run": {"ca_bundle_config_map": "corp-ca"}}, "submit": {"enabled": True}})
    for name, pod in _pod_specs(docs):
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        assert volumes["ca"]["configMap"]["name"] == "corp-ca", name
        for container in pod.get("initContainers", []) + pod["containers"]:
            if container["name"] == "submit":  # it talks to KFP's API only
                continue
            env = {e["name"]: e.get("value") for e in container["env"]}
            mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            variable = "AWS_CA_BUNDLE" if container["name"] == "mlflow" else "SSL_CERT_FILE"  # boto3; minio-py
            assert env[variable] == mounts["ca"] + "/ca.crt", name
    assert all("ca" not in {v["name"] for v in pod.get("volumes", [])} for _, pod in _pod_specs(render({})))
