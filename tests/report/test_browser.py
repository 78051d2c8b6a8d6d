"""The report, the compare page and the MLflow runs table in a real headless Chromium (tests/support/browser.py).

Skipped when no browser is installed (``apt-get install chromium``, or MEMAUDIT_CHROMIUM=/path/to/chrome).
"""

import struct
import time

import pytest

from memaudit.config import load_config
from memaudit.report.compare import Audit, compare_table, write_compare
from memaudit.report.figures import FIGURES
from memaudit.report.html import render_report
from memaudit.stages.aggregate import aggregate
from memaudit.testing import write_synthetic_scores
from memaudit.tracking import PoolInput, runs_page, start_parent_run
from tests.support.browser import check_page, find_browser, open_page

BROWSER = find_browser()
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        BROWSER is None, reason="no Chromium or Chrome (apt-get install chromium, or MEMAUDIT_CHROMIUM)"
    ),
]
VIEWPORT = (1280, 900)
ROWS = "[...document.querySelectorAll('#at-risk tbody tr')]"


def _png_height(path) -> int:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])[1]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    synthetic = write_synthetic_scores(root / "scores", n_models=8, n_samples=240, n_checkpoints=6, layers=(1, 2),
                                       label_noise=0.08, seed=4)  # fmt: skip
    cfg = load_config(preset="demo")
    aggregate(cfg, synthetic.paths, synthetic.pool, root / "aggregate", progress=False)
    return render_report(cfg, root / "aggregate", root / "report")["html"]


@pytest.fixture
def page():
    with open_page(BROWSER, *VIEWPORT) as opened:
        yield opened


def test_the_report_renders_sorts_filters_and_is_screenshotted(report, page):
    result = check_page(page, report, report.parent / "screenshot.png")
    assert result.console_errors == []
    assert len(result.images) == len(FIGURES) and all(w > 0 and h > 0 for w, h in result.images)
    assert result.requests and all(url.startswith(("file:", "data:")) for url in result.requests)
    assert result.screenshot.parent == report.parent and _png_height(result.screenshot) > VIEWPORT[1]

    lira = f"{ROWS}.map((r) => Number(r.cells[7].dataset.value))"
    page.click('#at-risk th[data-key="lira"]')
    ascending = page.evaluate(lira)
    assert len(ascending) > 2 and ascending == sorted(ascending)
    assert page.evaluate("document.querySelector('#at-risk th[data-key=lira]').getAttribute('aria-sort')") == (
        "ascending"
    )
    page.click('#at-risk th[data-key="lira"]')
    assert page.evaluate(lira) == sorted(ascending, reverse=True)
    page.click('#at-risk th[data-key="prompt"]')  # text, not numbers
    in_order = (
        f"{ROWS}.map((r) => r.cells[2].dataset.value).every((t, i, all) => !i || all[i - 1].localeCompare(t) <= 0)"
    )
    assert page.evaluate(in_order)

    wanted = page.evaluate(f"{ROWS}[0].cells[1].textContent")
    page.type_into("#at-risk-filter", f"Question {wanted}?")
    visible = page.evaluate(f"{ROWS}.filter((r) => !r.hidden).map((r) => r.cells[1].textContent)")
    assert visible == [wanted]
    page.pump()
    assert page.console_errors == []


def test_the_compare_page_renders(tmp_path, page):
    audits = [
        Audit(f"audit-{i}", f"{i:032d}", "arc", "mistral", "arc-mistral", {"psmi_fpr": 0.1 * i, "loss_fpr": 0.3})
        for i in (1, 2)
    ]
    paths = write_compare(compare_table(audits), 0.75, tmp_path, "sqlite:///x")
    result = check_page(page, paths["html"], tmp_path / "screenshot.png")
    assert result.console_errors == [] and len(result.images) == 1 and min(result.images[0]) > 100
    rows = page.evaluate("[...document.querySelectorAll('#compare tbody tr')].map((r) => r.cells[0].textContent)")
    assert rows == ["audit-1", "audit-2", "mean"]


@pytest.mark.integration
def test_an_audit_opens_on_the_mlflow_runs_table_with_its_dataset(mlflow_server, page):
    cfg = load_config(preset="demo", overrides=["run.experiment=browser-check"])
    pool = PoolInput("synthetic", "c0ffee00c0ffee00", "local", {"uri": "/data/pool.parquet"}, {"num_rows": 9})
    start_parent_run(cfg, uri=mlflow_server.uri, run_name="demo-in-the-ui", pool=pool)
    page.navigate(runs_page(mlflow_server.uri, cfg.run.experiment))
    text = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not ("demo-in-the-ui" in text and "c0ffee00" in text):
        time.sleep(0.5)
        text = page.evaluate("document.body.innerText")
    assert "demo-in-the-ui" in text and "synthetic (c0ffee00c0ffee00)" in text.replace("\n", " ")
    assert "Runs" in text
