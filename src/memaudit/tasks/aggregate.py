"""The aggregate task: LiRA, predictors and evaluation from every shadow's score file, sealed under
``aggregate/<evaluation fingerprint>``."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memaudit import tracking
from memaudit.data.poolfile import read_pool
from memaudit.report.outputs import ROC, SAMPLES, SUMMARY
from memaudit.store import download_uri
from memaudit.tasks.runtime import task, work_dir


@dataclass
class AggregateResult:
    uri: str
    metrics: dict[str, float]
    roc_fpr: list[float]
    roc_tpr: list[float]
    roc_threshold: list[float]


def headline_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """Scalar metrics for the KFP UI (a flat subset of summary.json)."""
    sections = ("enrichment.", "c_pred.", "best_layer.", "off_the_shelf.")
    ends = (".target.fpr_at_tpr", ".target.auc", ".all_models.fpr_at_tpr.mean", ".all_models.auc.mean")
    return {
        k: float(v)
        for k, v in tracking.flatten_metrics(summary).items()
        if "." not in k or k.startswith(sections) or k.endswith(ends)
    }


def _target_roc(path: Path, summary: dict[str, Any]) -> tuple[list[float], list[float], list[float]]:
    """The target's ROC of P-SMI at the best layer, finite thresholds (KFP's ClassificationMetrics)."""
    import numpy as np
    import pandas as pd

    roc = pd.read_parquet(path)
    rows = roc[roc["predictor"] == summary["best_layer"]["predictor"]]
    thr = np.nan_to_num(rows["threshold"].to_numpy(dtype=float), posinf=1e300, neginf=-1e300)
    return rows["fpr"].astype(float).tolist(), rows["tpr"].astype(float).tolist(), thr.tolist()


def aggregate_task(
    *, config_json: str, parent_run_id: str, score_uris: list[str], pool_path: str, samples_path: str, summary_path: str
) -> AggregateResult:
    """LiRA, predictors and evaluation from every shadow's score file; outputs sealed under aggregate/<eval fp>."""
    from memaudit.stages.aggregate import aggregate

    with task("aggregate", config_json=config_json) as t, work_dir("aggregate") as work:
        prefix, out = t.layout.aggregate(t.cfg.evaluation_fingerprint()), work / "out"

        def build(folder: Path) -> None:
            paths = [download_uri(uri, work / "scores" / f"{i}.npz") for i, uri in enumerate(score_uris)]
            aggregate(t.cfg, paths, read_pool(pool_path), folder, progress=False)

        if t.reuse_or_build_dir(prefix, out, build):
            t.skipped()
        shutil.copyfile(out / SAMPLES, samples_path)
        shutil.copyfile(out / SUMMARY, summary_path)
        summary = json.loads((out / SUMMARY).read_text())
        fpr, tpr, thr = _target_roc(out / ROC, summary)
    return AggregateResult(t.store.uri(prefix), headline_metrics(summary), fpr, tpr, thr)
