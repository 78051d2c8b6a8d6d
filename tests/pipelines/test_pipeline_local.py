"""The whole pipeline through kfp.local (``memaudit run``) with a real S3 server (SeaweedFS) and MLflow server.

One module-scoped run does the work; the tests then inspect the bucket, MLflow and the outputs, run the same
config again (everything must be skipped), and kill a fine-tune mid-way with SIGKILL to see the next run resume.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from minio import Minio

from memaudit.progress import read_events
from memaudit.store import RunStorage, s3_store_from_env
from memaudit.store.layout import OUTPUTS_FORMAT
from tests.support.pipeline_config import small_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EXPERIMENT = "memaudit-it"


def _env(s3_server, mlflow_server) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEMAUDIT_", "MLFLOW_"))}
    return {**env, **s3_server.env(), "MLFLOW_TRACKING_URI": mlflow_server.uri, "PYTHONUNBUFFERED": "1"}


def _command(config: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "memaudit.cli", "run", "-c", str(config), "-o", str(output), "--no-progress"]


def _write_config(path: Path, *overrides: str):
    cfg = small_config(f"run.experiment={EXPERIMENT}", *overrides)
    path.write_text(cfg.to_yaml())
    return cfg


def _events(output: Path) -> list[dict]:
    return read_events(output / "progress.jsonl")[0]


@pytest.fixture(scope="module")
def first_run(s3_server, mlflow_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    cfg = _write_config(root / "config.yaml")
    done = subprocess.run(_command(root / "config.yaml", root / "run1"), env=_env(s3_server, mlflow_server),
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return cfg, root, done.stdout


def test_outputs_are_sealed_in_the_bucket(first_run, s3_server):
    cfg, _, _ = first_run
    storage = RunStorage(s3_store_from_env(env=s3_server.env()), cfg.fingerprint())
    fp, efp = cfg.fingerprint(), cfg.evaluation_fingerprint()
    client = Minio(s3_server.endpoint.removeprefix("http://"), s3_server.access_key, s3_server.secret_key, secure=False)
    keys = {o.object_name for o in client.list_objects(s3_server.bucket, prefix=f"{fp}/", recursive=True)}
    aggregate, report = f"aggregate-v{OUTPUTS_FORMAT}/{efp}", f"report-v{OUTPUTS_FORMAT}/{efp}"
    for key in ("pool.parquet", "member.npy", "COMPLETE", "base-model/COMPLETE", f"{aggregate}/summary.json",
                f"{aggregate}/COMPLETE", f"{report}/report.html", f"{report}/COMPLETE"):  # fmt: skip
        assert f"{fp}/{key}" in keys, key
    for shadow in range(cfg.shadows.n_shadows):
        assert f"{fp}/shadows/{shadow}/scores.npz" in keys and f"{fp}/shadows/{shadow}/COMPLETE" in keys
        assert storage.store.verify_complete(storage.layout.shadow(shadow))  # every checksum matches
        steps = storage.stored_checkpoints(shadow)
        assert len(steps) >= 5 and steps[0] == 0
        assert all(f"{fp}/shadows/{shadow}/ckpt-{s}/COMPLETE" in keys for s in steps)


def test_mlflow_holds_one_parent_and_a_child_per_shadow(first_run, mlflow_server):
    cfg, _, _ = first_run
    client = mlflow.MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`memaudit.fingerprint` = '{cfg.fingerprint()}'"
    )
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(r.data.tags["memaudit.shadow"]) for r in children) == list(range(cfg.shadows.n_shadows))
    for child in children:
        assert child.data.metrics["tokens_per_s"] > 0 and child.data.metrics["reused"] == 0
        assert len(client.get_metric_history(child.info.run_id, "loss")) > 1
    assert parent.info.status == "FINISHED"
    assert 0 < parent.data.metrics["share_memorized"] < 0.5
    assert parent.data.params["training.epochs"] == str(cfg.training.epochs)
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.html", "summary.json"} <= names


def test_summary_samples_and_report_are_sane(first_run):
    cfg, root, stdout = first_run
    out = root / "run1"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_shadows_used"] == cfg.shadows.n_shadows - 1
    assert summary["n_memorized"] >= 1 and 0 < summary["share_memorized"] <= 0.2
    for entry in summary["predictors"].values():
        assert 0 <= entry["target"]["auc"] <= 1 and 0 <= entry["target"]["fpr_at_tpr"] <= 1
    html = (out / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5 and cfg.fingerprint() in html
    kfp_samples = next((out / "kfp").rglob("aggregate/samples"))
    samples = pd.read_parquet(kfp_samples)
    assert len(samples) == summary["n_samples"] and samples["global_index"].is_unique
    assert samples.loc[samples["member"], ["psmi_std_L1", "psmi_slope_L2"]].notna().all().all()
    assert "psmi_L1" in stdout and f"report: {out / 'report' / 'report.html'}" in stdout
    headline = next((out / "kfp").rglob("plot/headline")).read_text()  # the KFP run page's Markdown
    assert headline.startswith("**memaudit audit:") and "| P-SMI (layer" in headline
    assert "MLflow: " in stdout and "runs?workflowType=machine_learning" in stdout
    assert "estimate: " in stdout and "device-hours on 2 CPU cores" in stdout  # printed before the run


def test_second_run_skips_every_completed_task(first_run, s3_server, mlflow_server):
    cfg, root, _ = first_run
    done = subprocess.run(_command(root / "config.yaml", root / "run2"), env=_env(s3_server, mlflow_server),
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    outcome = {(e["stage"], e["shadow"]): e["event"] for e in _events(root / "run2") if e["event"] != "start"}
    shadows = range(cfg.shadows.n_shadows)
    expected = {("prepare", None), ("split", None), ("aggregate", None), ("plot", None)}
    expected |= {(stage, s) for stage in ("finetune", "score") for s in shadows}
    assert outcome == dict.fromkeys(expected, "skipped")
    client = mlflow.MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`memaudit.shadow` = '0'")
    assert sorted(r.data.metrics["reused"] for r in runs) == [0.0, 1.0]
    assert json.loads((root / "run2" / "summary.json").read_text()) == json.loads(
        (root / "run1" / "summary.json").read_text()
    )


def test_sigkilled_finetune_resumes_from_the_stored_checkpoint(s3_server, mlflow_server, tmp_path):
    cfg = _write_config(tmp_path / "config.yaml", "training.seed=7", "training.epochs=3")
    env = _env(s3_server, mlflow_server)
    run = subprocess.Popen(_command(tmp_path / "config.yaml", tmp_path / "run"), env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    killed = None
    deadline = time.monotonic() + 600
    while killed is None and time.monotonic() < deadline and run.poll() is None:
        for event in _events(tmp_path / "run"):
            detail = event.get("detail", "")
            if event["stage"] == "finetune" and event["shadow"] == 0 and detail.startswith("checkpoint "):
                step = int(detail.split()[1].split("/")[0])
                if step > 0:
                    os.kill(event["pid"], signal.SIGKILL)
                    killed = step
                    break
        time.sleep(0.05)
    assert killed is not None, "the fine-tune of shadow 0 never reached a checkpoint"
    _, err = run.communicate(timeout=600)
    assert run.returncode == 2 and "Traceback" not in err
    message = err.strip().splitlines()[-1]  # names the stage and the shadow, and says that a rerun resumes
    assert message.startswith("error: finetune of shadow 0 stopped without reporting an error (killed?)")
    assert "a rerun of the same command resumes" in message
    storage = RunStorage(s3_store_from_env(env=s3_server.env()), cfg.fingerprint())
    stored = storage.stored_checkpoints(0)
    assert killed in stored and not storage.shadow_complete(0)

    done = subprocess.run(_command(tmp_path / "config.yaml", tmp_path / "rerun"), env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    resumed = [e for e in _events(tmp_path / "rerun") if e["shadow"] == 0 and "resuming" in e.get("detail", "")]
    assert resumed and int(resumed[0]["detail"].rsplit(" ", 1)[1]) >= killed
    # KFP ignores retries inside ParallelFor (kubeflow/pipelines#12389): a resubmission trains only what failed
    outcome = {(e["stage"], e["shadow"]): e["event"] for e in _events(tmp_path / "rerun") if e["event"] != "start"}
    others = range(1, cfg.shadows.n_shadows)
    assert {outcome[("finetune", s)] for s in others} == {"skipped"}
    assert outcome[("finetune", 0)] != "skipped"
    assert storage.shadow_complete(0) and storage.store.verify_complete(storage.layout.shadow(0))
