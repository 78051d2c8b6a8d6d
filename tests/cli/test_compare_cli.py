"""``memaudit compare`` against a real sqlite MLflow store: audits logged as the plot task logs them."""

import copy

import pandas as pd
import pytest
from PIL import Image

from memaudit.cli import main
from memaudit.config import load_config
from memaudit.report.headline import headline_metrics
from memaudit.tracking import PREDICTION_ROLE, log_summary, start_parent_run
from tests.report.test_headline import SUMMARY


def _summary(psmi_fpr: float) -> dict:
    summary = copy.deepcopy(SUMMARY)
    summary["predictors"]["psmi_L2"]["target"]["fpr_at_tpr"] = psmi_fpr
    return summary


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two audits (seeds 0 and 1) and a prediction run in one experiment of a sqlite store."""
    root = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    for seed, fpr in ((0, 0.05), (1, 0.15)):
        cfg = load_config(preset="demo", overrides=["run.experiment=audits", f"shadows.seed={seed}"])
        run = start_parent_run(cfg, uri=uri, run_name=f"demo-seed{seed}")
        summary = _summary(fpr)
        log_summary(uri, run, summary, metrics=headline_metrics(summary))
    prediction = start_parent_run(cfg, uri=uri, run_name="predict-demo")  # the same config as seed 1's audit
    log_summary(uri, prediction, {"n_at_risk": 3}, role=PREDICTION_ROLE)
    return root, uri


def _compare(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(["compare", *argv])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_an_experiments_audits_as_markdown_csv_and_html(store, tmp_path, capsys):
    root, _ = store
    main(["compare", "--runs", str(root), "-e", "audits", "-o", str(tmp_path)])
    captured = capsys.readouterr()
    rows = [line for line in captured.out.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows] == ["| audit", "| demo-seed0", "| demo-seed1", "| mean"]
    assert "| 0.0500 | 0.2000 |" in rows[1] and "| 0.1500 | 0.2000 |" in rows[2] and "| 0.1000 | 0.2000 |" in rows[3]
    table = pd.read_csv(tmp_path / "compare.csv")
    assert list(table["audit"]) == ["demo-seed0", "demo-seed1", "mean"]
    assert table["noisy-label enrichment"].iloc[0] == pytest.approx(8.0)
    assert Image.open(tmp_path / "compare.png").size[0] > 300
    assert "demo-seed1" in (tmp_path / "compare.html").read_text()


def test_runs_by_name_or_id_and_an_unknown_run(store, tmp_path, capsys):
    _, uri = store
    main(["compare", "--tracking-uri", uri, "demo-seed1", "-o", str(tmp_path)])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| demo")]
    assert len(rows) == 1 and rows[0].startswith("| demo-seed1 |")  # one audit: no mean row
    code, out, err = _compare(capsys, "--tracking-uri", uri, "no-such-run", "-o", str(tmp_path))
    assert code == 2 and out == "" and err.startswith("error: no finished audit run 'no-such-run'")
    assert len(err.strip().splitlines()) == 1


def test_no_database_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, _, err = _compare(capsys, "--runs", str(tmp_path / "nothing"))
    assert code == 2 and err.strip() == (
        f"error: no MLflow database at {tmp_path / 'nothing' / 'mlflow.db'}; fix: pass --runs with the output folder "
        "of a memaudit run, or --tracking-uri / MLFLOW_TRACKING_URI"
    )
    assert not (tmp_path / "nothing").exists()
