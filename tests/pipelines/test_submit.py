"""`memaudit submit` against a local server implementing the KFP v2beta1 REST calls it uses."""

import re
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from memaudit.cli import main
from memaudit.config import config_from_dict, load_config
from tests.support.kfp_api import FakeKfpApi


@pytest.fixture
def api(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.delenv("KF_PIPELINES_NAMESPACE", raising=False)
    monkeypatch.delenv("KF_PIPELINES_TOKEN", raising=False)
    with FakeKfpApi() as server:
        yield server


def _posts(api, path):
    return [p for m, p in api.requests if m == "POST" and p.split("?")[0] == path]


def test_submit_uploads_pipeline_creates_experiment_and_starts_run(api, capsys):
    main(["submit", "--host", api.url, "--preset", "demo", "--set", "shadows.n_shadows=6", "--experiment", "audits"])
    out = capsys.readouterr().out
    (run,) = api.runs.values()
    assert run["run_id"] in out and "follow it at" in out
    (experiment,) = api.experiments.values()
    assert experiment["display_name"] == "audits" and run["experiment_id"] == experiment["experiment_id"]
    params = run["runtime_config"]["parameters"]
    sent = config_from_dict(yaml.safe_load(params["config_yaml"]))
    expected = load_config(preset="demo", overrides=["shadows.n_shadows=6"])
    assert sent == expected and sent.fingerprint() == expected.fingerprint()
    assert params["preset"] == "demo"
    version_id = run["pipeline_version_reference"]["pipeline_version_id"]
    images = {e["container"]["image"] for e in api.packages[version_id]["deploymentSpec"]["executors"].values()}
    assert images == {expected.run.image_cpu, expected.run.image_gpu}


def test_same_config_reuses_the_version_and_a_changed_one_adds_one(api, capsys):
    main(["submit", "--host", api.url, "--preset", "demo"])
    main(["submit", "--host", api.url, "--preset", "demo"])
    assert len(_posts(api, "/apis/v2beta1/pipelines/upload")) == 1
    assert len(_posts(api, "/apis/v2beta1/pipelines/upload_version")) == 1
    assert len(api.runs) == 2 and len(api.experiments) == 1
    main(["submit", "--host", api.url, "--preset", "demo", "--set", "run.parallelism=7"])
    assert len(_posts(api, "/apis/v2beta1/pipelines/upload_version")) == 2
    (pipeline_id,) = api.pipelines
    newest = api.versions[pipeline_id][-1]["pipeline_version_id"]
    loops = [
        t
        for c in api.packages[newest]["components"].values()
        for t in c.get("dag", {}).get("tasks", {}).values()
        if "iteratorPolicy" in t
    ]
    assert loops[0]["iteratorPolicy"]["parallelismLimit"] == 7


def test_unreachable_api_exits_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        main(["submit", "--host", "http://127.0.0.1:9", "--preset", "demo"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: cannot reach the Kubeflow Pipelines API at http://127.0.0.1:9") and err.count("\n") == 1
    )


def test_refusing_api_exits_2_naming_the_status(api, capsys):
    api.refuse_with = 403
    with pytest.raises(SystemExit) as info:
        main(["submit", "--host", api.url, "--preset", "demo"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "refused the request (HTTP 403" in err and err.count("\n") == 1
    assert not api.runs


def test_refusal_prints_the_servers_message(api, capsys):
    api.refuse_with = 403
    api.refusal_message = 'User "alice" is not allowed to access namespace "team-a"'
    with pytest.raises(SystemExit) as info:
        main(["submit", "--host", api.url, "--preset", "demo"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert 'HTTP 403: User "alice" is not allowed to access namespace "team-a"' in err and err.count("\n") == 1


@pytest.mark.parametrize("tag", ["2.15.0", "v2.14.3", "1.8.5"])
def test_backend_older_than_the_floor_is_refused(api, capsys, tag):
    api.tag_name = tag
    with pytest.raises(SystemExit) as info:
        main(["submit", "--host", api.url, "--preset", "demo"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"is {tag}; memaudit needs 2.16 or newer" in err and "2.17.0" in err and err.count("\n") == 1
    assert not api.runs and not api.pipelines


@pytest.mark.parametrize("tag", ["2.16.0", "2.17.3", "v3.0.0", "dev"])
def test_backend_at_or_above_the_floor_is_accepted(api, capsys, tag):
    api.tag_name = tag
    main(["submit", "--host", api.url, "--preset", "demo"])
    assert len(api.runs) == 1


def _namespaces_sent(api):
    uploads = [p for m, p in api.requests if m == "POST" and p.startswith("/apis/v2beta1/pipelines/upload?")]
    return {parse_qs(urlparse(p).query).get("namespace", [None])[0] for p in uploads}, {
        e.get("namespace") for e in api.experiments.values()
    }


def test_namespace_is_sent_on_upload_and_run(api):
    main(["submit", "--host", api.url, "--preset", "demo", "--namespace", "team-a"])
    assert _namespaces_sent(api) == ({"team-a"}, {"team-a"})
    assert len(api.runs) == 1


def test_namespace_defaults_to_the_env_then_the_kube_context(api, monkeypatch, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "current-context: b\ncontexts:\n- name: a\n  context: {namespace: wrong}\n"
        "- name: b\n  context: {namespace: from-context}\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    main(["submit", "--host", api.url, "--preset", "demo"])
    assert _namespaces_sent(api) == ({"from-context"}, {"from-context"})
    monkeypatch.setenv("KF_PIPELINES_NAMESPACE", "from-env")
    api.pipelines.clear()
    main(["submit", "--host", api.url, "--preset", "demo"])
    assert "from-env" in _namespaces_sent(api)[0]


def test_token_comes_from_the_projected_service_account_file(api, monkeypatch, tmp_path):
    token = tmp_path / "token"
    token.write_text("sa-token-123\n")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    main(["submit", "--host", api.url, "--preset", "demo"])
    assert api.authorizations == {"Bearer sa-token-123"}
    api.authorizations.clear()
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "explicit")
    main(["submit", "--host", api.url, "--preset", "demo"])
    assert api.authorizations == {"Bearer explicit"}


def test_version_names_are_valid_kubernetes_names(api):
    main(["submit", "--host", api.url, "--preset", "demo"])
    names = [v["display_name"] for versions in api.versions.values() for v in versions]
    assert names and all(re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", n) for n in names)


def test_submit_predict_uploads_the_predict_pipeline_beside_the_audit(api, capsys):
    main(["submit", "--host", api.url, "--preset", "demo"])
    main(["submit", "--host", api.url, "--preset", "demo", "--pipeline", "predict"])
    capsys.readouterr()
    assert sorted(p["display_name"] for p in api.pipelines.values()) == ["memaudit-audit", "memaudit-predict"]
    audit_run, predict_run = api.runs.values()
    assert audit_run["display_name"].startswith("demo-")
    assert predict_run["display_name"].startswith("predict-demo-")
    version_id = predict_run["pipeline_version_reference"]["pipeline_version_id"]
    assert set(api.packages[version_id]["root"]["dag"]["tasks"]) == {"prepare", "predict"}


def test_unknown_pipeline_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compile", "--pipeline", "nope", "--output", "/tmp/never-written.yaml"])
    assert exit_info.value.code == 2 and "unknown pipeline 'nope'" in capsys.readouterr().err
