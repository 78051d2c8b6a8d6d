import json

import mlflow
import pandas as pd
import pytest

from memaudit.cli import main
from tests.support.pipeline_config import SMALL

SETS = [arg for setting in SMALL for arg in ("--set", setting)]


def _predict(capsys, *args: str) -> tuple[int, str, str]:
    try:
        main(["predict", "--no-progress", *SETS, *args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def shared_output(tmp_path_factory):
    """One output folder for the whole module (the error cases first): its store keeps the pool and the tiny model
    between the calls."""
    return tmp_path_factory.mktemp("predict") / "out"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layer", "1", "--layer-from", "runs/x"], "--layer and --layer-from both choose the layer"),
        (["--at-step", "-3"], "--at-step must be 0 or more"),
        (["--members-of", "7"], "--members-of 7 is not a shadow of this config"),
        (["--at-step", "5"], "--at-step 5 is not a scheduled checkpoint"),
        (["--layer", "9"], "layer 9 (--layer) is not among the computed layers [1, 2]"),
        (["--layer-from", "nowhere"], "--layer-from nowhere: no summary.json found"),
    ],
)
@pytest.mark.slow  # most cases build the pool and the tiny model first
def test_bad_options_exit_2_with_one_line_and_write_no_prediction(capsys, shared_output, args, message):
    code, _, err = _predict(capsys, "-o", str(shared_output), *args)
    assert code == 2 and err.count("\n") == 1 and message in err
    assert not (shared_output / "predictions.parquet").exists() and not (shared_output / "work").exists()


@pytest.mark.slow
def test_layer_from_refuses_an_audit_of_another_model(capsys, tmp_path, shared_output):
    (tmp_path / "audit").mkdir()
    summary = {"model": {"name": "mistralai/Mistral-7B-v0.1", "revision": None}, "best_layer": {"layer": 1}}
    (tmp_path / "audit" / "summary.json").write_text(json.dumps(summary))
    code, _, err = _predict(capsys, "-o", str(shared_output), "--layer-from", str(tmp_path / "audit"))
    assert code == 2 and "audited mistralai/Mistral-7B-v0.1, not tiny-llama" in err


@pytest.mark.slow
def test_predict_writes_ranked_predictions_logs_mlflow_and_reuses_the_stored_result(capsys, tmp_path, shared_output):
    out = shared_output
    (tmp_path / "audit").mkdir()
    summary = {"model": {"name": "tiny-llama", "revision": None}, "best_layer": {"layer": 1}}
    (tmp_path / "audit" / "summary.json").write_text(json.dumps(summary))
    code, stdout, _ = _predict(capsys, "-o", str(out), "--layer-from", str(tmp_path / "audit"))
    assert code == 0
    result = json.loads((out / "predict.json").read_text())
    frame = pd.read_parquet(out / "predictions.parquet")
    assert result["layer"] == 1 and result["layer_source"].startswith("best layer of")
    assert len(frame) == result["n_samples"] and sorted(frame["rank"]) == list(range(1, len(frame) + 1))
    assert (frame["psmi"] == frame["psmi_L1"]).all() and (frame["at_risk"] == (frame["psmi"] < 0)).all()
    assert result["n_at_risk"] == int(frame["at_risk"].sum())
    assert f"{result['cost_ratio']:.2%} of the {result['audit_train_steps']}" in stdout
    runs = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}").search_runs(["1"], "metrics.n_at_risk >= 0")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["memaudit.role"] == "prediction"  # memaudit compare leaves it out
    assert runs[0].data.metrics["n_at_risk"] == result["n_at_risk"]
    assert runs[0].data.metrics["c_pred.step"] == result["c_pred"]["step"]
    assert {
        a.path for a in mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}").list_artifacts(runs[0].info.run_id)
    } >= {
        "predictions.parquet",
        "predict.json",
    }
    before = (out / "predictions.parquet").read_bytes()
    code, stdout, _ = _predict(capsys, "-o", str(out), "--layer-from", str(tmp_path / "audit"))
    assert code == 0 and (out / "predictions.parquet").read_bytes() == before
    assert json.loads((out / "predict.json").read_text())["wall_time_s"] == result["wall_time_s"]  # from the store
