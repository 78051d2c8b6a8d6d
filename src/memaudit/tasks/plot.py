"""The plot task: render the report (HTML + PNGs), store it, log it and the summary to MLflow."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from memaudit import tracking
from memaudit.config import ExperimentConfig
from memaudit.errors import MemauditError
from memaudit.store import download_uri
from memaudit.tasks.runtime import task, track_quietly, tracking_uri, work_dir
from memaudit.tasks.warm import forked

PREDICTOR_TABLE = "predictors.json"  # every predictor's numbers, as an MLflow table


def _log_audit(cfg, parent_run_id: str, aggregate_dir: Path, artifacts: list[Path], markdown: str) -> None:
    """The headline, its series, every predictor's numbers, the description and the report on the parent run."""
    from memaudit.report.headline import headline_metrics, headline_series, predictor_table
    from memaudit.report.outputs import load_aggregate

    data = load_aggregate(cfg, aggregate_dir)
    tracking.log_summary(
        tracking_uri(), parent_run_id, data.summary, artifacts,
        metrics=headline_metrics(data.summary), series=headline_series(data), description=markdown,
        tables={PREDICTOR_TABLE: predictor_table(data.summary)},
    )  # fmt: skip


def shadow_cost(cfg: ExperimentConfig) -> tuple[str, float] | None:
    """(device, device-hours of one shadow) for the shadow curve: a GPU (h100) in a cluster pod, else this machine's
    CPU; None when the cost model does not know the model or the dataset."""
    from memaudit.cost.estimate import estimate

    try:
        cost = estimate(cfg, "h100" if os.environ.get("KFP_POD_NAME") else "cpu")
    except MemauditError:
        return None
    return f"{cost.device.name} ({cost.source.split(':')[0]})", cost.device_hours / cfg.shadows.n_shadows


@forked
def plot_task(
    *,
    config_json: str,
    parent_run_id: str,
    aggregate_uri: str,
    samples_path: str,
    summary_path: str,
    html_path: str,
    markdown_path: str,
) -> str:
    """Render the report, store and log it, write its headline as Markdown (the KFP run page shows both); returns
    the report's URI."""
    from memaudit.report.headline import headline_markdown
    from memaudit.report.html import REPORT, render_report

    with task("plot", config_json=config_json) as t, work_dir("plot") as work:
        summary = json.loads(Path(summary_path).read_text())
        population = t.layout.population(t.cfg.evaluation_fingerprint(), summary.get("missing_shadows", []))
        prefix = t.layout.report(population)
        download_uri(aggregate_uri, work / "aggregate")
        build = lambda out: render_report(t.cfg, work / "aggregate", out, shadow_cost(t.cfg))  # noqa: E731
        if t.reuse_or_build_dir(prefix, work / "report", build):
            t.skipped()
        shutil.copyfile(work / "report" / REPORT, html_path)
        markdown = headline_markdown(summary, f"memaudit audit: {t.cfg.dataset.name} / {t.cfg.model.name}")
        Path(markdown_path).write_text(markdown)
        artifacts = sorted(p for p in (work / "report").iterdir() if p.suffix in (".html", ".png"))
        track_quietly(
            "the summary and report",
            lambda: _log_audit(t.cfg, parent_run_id, work / "aggregate", artifacts, markdown),
        )
        uri = t.store.uri(t.layout.report(population, REPORT))
        t.outcome["report"] = uri
    return uri
