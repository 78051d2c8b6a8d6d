"""MLflow tracking against a sqlite store and a real `mlflow server` (artifacts in SeaweedFS)."""

import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

import memaudit
from memaudit import __version__
from memaudit.config import load_config
from memaudit.errors import MemauditError
from memaudit.redact import is_secret_name
from memaudit.store import S3Store
from memaudit.tracking import (
    COMPARED_SETTINGS,
    EXPERIMENT_KIND,
    PoolInput,
    code_version,
    config_params,
    find_runs,
    flatten_metrics,
    log_shadow,
    log_summary,
    runs_page,
    safe_config,
    start_parent_run,
    tracking_uri,
)
from memaudit.tracking.runs import run_tags

pytestmark = pytest.mark.integration

SUMMARY = {
    "predictors": {
        "psmi": {"fpr@tpr=0.75": np.float64(0.125), "auc": 0.8125},
        "loss": {"fpr@tpr=0.75": 0.5, "auc": 0.625},
    },
    "share_memorized": 0.1,
    "c_pred": np.int64(40),
    "best_layer": 3,
    "has_roc": True,
    "target": "shadow 0",
    "roc": [[0.0, 0.0], [1.0, 1.0]],
}
FLAT = {
    "predictors.psmi.fpr_at_tpr_0.75": 0.125,
    "predictors.psmi.auc": 0.8125,
    "predictors.loss.fpr_at_tpr_0.75": 0.5,
    "predictors.loss.auc": 0.625,
    "share_memorized": 0.1,
    "c_pred": 40.0,
    "best_layer": 3.0,
    "has_roc": 1.0,
}


def train_log(shadow: int, scale: float = 1.0) -> dict:
    return {
        "loss_curve": [[0, 2.0 * scale], [5, 1.5 * scale], [10, 1.0 * scale]],
        "tokens_per_s": 1000.0 + shadow,
        "peak_memory_mb": 512.0,
        "wall_time_s": 12.5,
        "n_members": 50 + shadow,
    }


def test_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path / "out") == f"sqlite:///{tmp_path.resolve()}/out/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert tracking_uri(tmp_path) == "http://mlflow:5000"


def test_params_are_the_compared_settings_and_the_config_is_whole(monkeypatch):
    monkeypatch.delenv("MEMAUDIT_GIT_COMMIT", raising=False)
    cfg = load_config(preset="demo", overrides=["model.layers=" + str(list(range(2000)))])
    params = config_params(cfg)
    assert len(COMPARED_SETTINGS) <= 30 and list(params) == list(COMPARED_SETTINGS)
    assert params["dataset.name"] == "synthetic" and params["training.learning_rate"] == "0.003"
    assert params["shadows.n_shadows"] == "16" and params["dataset.hub_id"] == "null"
    assert params["lora.target_modules"].startswith('["q_proj", "k_proj"')
    whole = safe_config(cfg)  # the config.json artifact: every field, flattened
    assert whole["dataset.synthetic.n_options"] == 4 and len(whole["model.layers"]) == 2000
    assert {k.split(".")[0] for k in whole if "." in k} == set(type(cfg).model_fields) - {"preset"}
    checkout = Path(memaudit.__file__).parent
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True, check=True)
    tags = run_tags(cfg)
    assert tags["memaudit.version"] == __version__ and tags["memaudit.git_commit"] == head.stdout.strip()
    assert tags["memaudit.fingerprint"] == cfg.fingerprint() and tags["preset"] == "demo"
    monkeypatch.setenv("MEMAUDIT_GIT_COMMIT", "abc123")
    assert code_version() == {"code_version": __version__, "git_commit": "abc123"}


def test_flatten_metrics_keeps_numbers_with_valid_keys():
    assert flatten_metrics(SUMMARY) == FLAT


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("aws_secret_access_key", True),
        ("s3.access_key", True),
        ("hub.hf_token", True),
        ("db.password", True),
        ("run.s3_secret", False),  # the *name* of a Kubernetes Secret
        ("training.max_tokens", False),
        ("model.tokenizer", False),
    ],
)
def test_secret_names(key, secret):
    assert is_secret_name(key) is secret


def test_secret_guard_drops_planted_secrets(monkeypatch, caplog):
    planted = "planted-s3-secret-4242"
    monkeypatch.setenv("MEMAUDIT_S3_SECRET_KEY", planted)
    cfg = load_config(
        preset="demo",
        overrides=[
            f"model.revision=rev-{planted}",  # an env secret copied into a config value
            "dataset.data_dir=s3://user:pw-hidden@host/data",  # a URL with a password
            "model.local_path=/models/hf_" + "a" * 34,  # a token's shape
        ],
    )
    with caplog.at_level(logging.WARNING, logger="memaudit.tracking"):
        params, whole = config_params(cfg), safe_config(cfg)
    assert {"model.revision", "dataset.data_dir", "model.local_path"}.isdisjoint(whole)
    assert "model.revision" not in params and params["model.name"] == "tiny-llama"
    assert whole["run.s3_secret"] == "memaudit-s3"
    assert "'model.revision'" in caplog.text and planted not in caplog.text and "pw-hidden" not in caplog.text


@pytest.fixture(scope="session")
def sqlite_uri(tmp_path_factory):
    """One sqlite store for the session: MLflow takes seconds to create and migrate a new one."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow-sqlite') / 'mlflow.db'}"


@pytest.fixture(params=["sqlite", "server"])
def uri(request):
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_uri")
    return request.getfixturevalue("mlflow_server").uri


def test_parent_children_summary(uri, tmp_path, monkeypatch, request):
    planted = "planted-secret-in-env-77"
    monkeypatch.setenv("HF_TOKEN", planted)
    cfg = load_config(preset="demo", overrides=[f"model.revision={planted}", f"run.experiment=exp-{tmp_path.name}"])
    pool = PoolInput("synthetic", "0123abcd", "local", {"uri": "/data/pool.parquet"}, {"num_rows": 10}, "train")
    parent = start_parent_run(cfg, uri=uri, pool=pool)
    child = subprocess.run(  # a task process, not the one that created the parent
        [sys.executable, "-c", "import sys, json; from memaudit.tracking import log_shadow; "
         "print(log_shadow(sys.argv[1], sys.argv[2], 1, json.loads(sys.argv[3])))",
         uri, parent, __import__("json").dumps(train_log(1))],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr[-2000:]
    for shadow in (0, 2):
        log_shadow(uri, parent, shadow, train_log(shadow), extra_metrics={"final_accuracy": 0.5 + shadow / 10})
    rerun_id = log_shadow(uri, parent, 1, train_log(1, scale=0.5))  # the shadow's task ran again

    client = MlflowClient(uri)
    run = client.get_run(parent)
    assert run.info.status == "RUNNING" and run.info.run_name == f"demo-{cfg.fingerprint()[:8]}"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == cfg.run.experiment and EXPERIMENT_KIND.items() <= experiment.tags.items()
    assert run.data.params["training.epochs"] == str(cfg.training.epochs) and len(run.data.params) <= 30
    (logged,) = run.inputs.dataset_inputs
    assert (logged.dataset.name, logged.dataset.digest, logged.dataset.source_type) == (
        "synthetic",
        "0123abcd",
        "local",
    )
    assert [(t.key, t.value) for t in logged.tags] == [("mlflow.data.context", "train")]
    complete = sorted((m.step, m.value) for m in client.get_metric_history(parent, "shadows_complete"))
    assert complete[-1] == (3, 3.0) and run.data.metrics["shadows_complete"] == 3.0  # the rerun did not count twice
    assert {k: run.data.tags[k] for k in ("dataset", "model", "preset", "memaudit.fingerprint")} == {
        "dataset": "synthetic",
        "model": "tiny-llama",
        "preset": "demo",
        "memaudit.fingerprint": cfg.fingerprint(),
    }
    assert "model.revision" not in run.data.params
    assert all(planted not in v for v in [*run.data.params.values(), *run.data.tags.values()])

    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    by_shadow = {int(c.data.tags["memaudit.shadow"]): c for c in children}
    assert sorted(by_shadow) == [0, 1, 2] and len(children) == 3  # the rerun replaced shadow 1's child
    assert by_shadow[1].info.run_id == rerun_id
    for shadow, c in by_shadow.items():
        assert c.info.status == "FINISHED" and c.data.tags["dataset"] == "synthetic"
        assert c.data.metrics["tokens_per_s"] == 1000.0 + shadow and c.data.metrics["n_members"] == 50 + shadow
        assert c.data.metrics["peak_memory_mb"] == 512.0 and c.data.metrics["wall_time_s"] == 12.5
        scale = 0.5 if shadow == 1 else 1.0
        history = sorted((m.step, m.value) for m in client.get_metric_history(c.info.run_id, "loss"))
        assert history == [(0, 2.0 * scale), (5, 1.5 * scale), (10, 1.0 * scale)]
    assert by_shadow[2].data.metrics["final_accuracy"] == pytest.approx(0.7)

    report = tmp_path / "report.html"
    report.write_text("<html>report</html>")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "roc.png").write_bytes(b"\x89PNG")
    log_summary(uri, parent, {**SUMMARY, "missing_shadows": [3, 7]}, [report, tmp_path / "figures"])
    run = client.get_run(parent)
    assert run.info.status == "FINISHED" and run.data.tags["memaudit.missing_shadows"] == "3,7"
    assert {k: run.data.metrics[k] for k in FLAT} == FLAT
    listed = {a.path for a in client.list_artifacts(parent)} | {
        a.path for a in client.list_artifacts(parent, "figures")
    }
    assert listed >= {"report.html", "summary.json", "figures/roc.png", "config.json"}
    config_json = client.download_artifacts(parent, "config.json", str(tmp_path / "config"))
    assert __import__("json").loads(Path(config_json).read_text()) == safe_config(cfg)
    local = client.download_artifacts(parent, "report.html", str(tmp_path / "back"))
    assert Path(local).read_text() == "<html>report</html>"

    if "server" in request.node.callspec.id:  # proxied artifacts land in the SeaweedFS bucket
        s3 = request.getfixturevalue("s3_server")
        store = S3Store(s3.endpoint, s3.bucket, s3.access_key, s3.secret_key)
        keys = store.list_keys(f"mlflow/{run.info.experiment_id}/{parent}/artifacts")
        assert {k.rsplit("/artifacts/", 1)[1] for k in keys} >= {"report.html", "summary.json", "figures/roc.png"}
        key = next(k for k in keys if k.endswith("report.html"))
        assert store.get_bytes(key, verify=False) == b"<html>report</html>"


def test_an_audit_reads_well_in_mlflow_and_compares(sqlite_uri, tmp_path):
    """The plot task's call: headline metrics, step-indexed series, a description and a table; then find_runs."""
    cfg = load_config(preset="demo", overrides=[f"run.experiment=exp-{tmp_path.name}"])
    client = MlflowClient(sqlite_uri)
    runs = []
    other = load_config(preset="demo", overrides=[f"run.experiment=exp-{tmp_path.name}", "shadows.seed=1"])
    for seed, config in ((0, cfg), (1, cfg), (2, other)):
        parent = start_parent_run(config, uri=sqlite_uri, run_name=f"seed-{seed}")
        log_summary(
            sqlite_uri, parent, {"missing_shadows": []}, metrics={"psmi_fpr": 0.1 + seed, "best_layer": 2.0},
            series={"psmi_fpr_by_layer": [(1, 0.3), (2, 0.1 + seed)]}, description="| a | b |\n|---|---|",
            tables={"predictors.json": __import__("pandas").DataFrame({"predictor": ["psmi_L1"], "auc": [0.9]})},
        )  # fmt: skip
        runs.append(parent)
    run = client.get_run(runs[0])
    assert run.data.tags["mlflow.note.content"] == "| a | b |\n|---|---|"
    assert sorted((m.step, m.value) for m in client.get_metric_history(runs[0], "psmi_fpr_by_layer")) == [
        (1, 0.3),
        (2, 0.1),
    ]
    assert "predictors.json" in {a.path for a in client.list_artifacts(runs[0])}
    found = find_runs(sqlite_uri, [], [cfg.run.experiment])
    assert [r.name for r in found] == ["seed-1", "seed-2"]  # the same config twice: one audit, by its latest run
    assert found[0].metrics["psmi_fpr"] == 1.1 and found[1].params["shadows.seed"] == "1"
    page = runs_page(sqlite_uri, cfg.run.experiment)
    assert page == (f"mlflow ui --backend-store-uri {sqlite_uri}, then http://127.0.0.1:5000/#/experiments/"
                    f"{run.info.experiment_id}/runs?workflowType=machine_learning")  # fmt: skip
    by_name = find_runs(sqlite_uri, ["seed-1", runs[0]], [])
    assert [r.run_id for r in by_name] == [runs[1], runs[0]]
    with pytest.raises(MemauditError, match=r"no finished audit run 'seed-9'"):
        find_runs(sqlite_uri, ["seed-9"], [])
    with pytest.raises(MemauditError, match=r"no MLflow experiment 'nope'"):
        find_runs(sqlite_uri, [], ["nope"])


def test_bad_inputs(sqlite_uri, tmp_path):
    uri = sqlite_uri
    parent = start_parent_run(load_config(preset="demo"), uri=uri)
    with pytest.raises(MemauditError, match=r"parent run 'nope' not found"):
        log_shadow(uri, "nope", 0, train_log(0))
    with pytest.raises(MemauditError, match=r"metric 'tokens_per_s' is not a number"):
        log_shadow(uri, parent, 0, {"tokens_per_s": "fast"})
    with pytest.raises(MemauditError, match=r"curve 'loss_curve' is not a list of \(step, value\) pairs"):
        log_shadow(uri, parent, 0, {"loss_curve": [1.0, 2.0]})
    with pytest.raises(MemauditError, match=r"report file .*missing.html does not exist"):
        log_summary(uri, parent, SUMMARY, [tmp_path / "missing.html"])


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_fails_fast_in_one_line():
    uri = f"http://user:pw-hidden@127.0.0.1:{_closed_port()}"
    for call in (
        lambda: start_parent_run(load_config(preset="demo"), uri=uri),
        lambda: log_shadow(uri, "run", 0, train_log(0)),
        lambda: log_summary(uri, "run", SUMMARY),
    ):
        start = time.monotonic()
        with pytest.raises(MemauditError) as err:
            call()
        assert time.monotonic() - start < 3
        message = str(err.value)
        assert message.startswith("cannot reach MLflow at http://***@127.0.0.1:") and "Connection refused" in message
        assert "\n" not in message and "pw-hidden" not in message and "MLFLOW_TRACKING_URI" in message


def test_silent_server_times_out_within_seconds():
    server = socket.socket()  # accepts connections, never answers
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        start = time.monotonic()
        with pytest.raises(MemauditError, match="cannot reach MLflow"):
            start_parent_run(load_config(preset="demo"), uri=f"http://127.0.0.1:{server.getsockname()[1]}")
        assert time.monotonic() - start < 6
    finally:
        server.close()
