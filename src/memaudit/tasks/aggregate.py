"""The aggregate task: LiRA, predictors and evaluation from every shadow's score file, sealed under
``aggregate/<evaluation fingerprint>``."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memaudit.config import ExperimentConfig
from memaudit.errors import MemauditError
from memaudit.store import download_uri
from memaudit.tasks.runtime import failure_of, task, work_dir
from memaudit.tasks.warm import forked


@dataclass
class AggregateResult:
    uri: str
    metrics: dict[str, float]
    roc_fpr: list[float]
    roc_tpr: list[float]
    roc_threshold: list[float]


def _target_roc(folder: Path, summary: dict[str, Any]) -> tuple[list[float], list[float], list[float]]:
    """The target's ROC of P-SMI at the best layer, from the aggregate ``folder``, with finite thresholds (KFP's
    ClassificationMetrics)."""
    import numpy as np
    import pandas as pd

    from memaudit.report.outputs import ROC

    roc = pd.read_parquet(folder / ROC)
    rows = roc[roc["predictor"] == summary["best_layer"]["predictor"]]
    thr = np.nan_to_num(rows["threshold"].to_numpy(dtype=float), posinf=1e300, neginf=-1e300)
    return rows["fpr"].astype(float).tolist(), rows["tpr"].astype(float).tolist(), thr.tolist()


def complete_population(cfg: ExperimentConfig, score_uris: list[str]) -> tuple[list[str], dict[int, str]]:
    """The score URIs of the complete shadows and {shadow: what failed} of the others; fewer complete shadows
    than ``shadows.min_complete`` (all by default), or a failed target, is a one-line error naming them."""
    failed = dict(f for uri in score_uris if (f := failure_of(uri)) is not None)
    complete = [uri for uri in score_uris if failure_of(uri) is None]
    if not failed:
        return complete, failed
    listed = "; ".join(f"shadow {s}: {what}" for s, what in sorted(failed.items()))
    rerun = "fix the cause and run the same config again (complete shadows are reused)"
    target = cfg.shadows.target
    if target in failed:
        raise MemauditError(f"the target shadow {target} failed ({failed[target]})", rerun)
    if len(complete) < cfg.shadows.required():
        raise MemauditError(
            f"{len(failed)} of {len(score_uris)} shadows failed ({listed})",
            f"{rerun}, or set shadows.min_complete={len(complete)} to aggregate the {len(complete)} complete ones",
        )
    return complete, failed


@forked
def aggregate_task(
    *, config_json: str, parent_run_id: str, score_uris: list[str], pool_path: str, samples_path: str, summary_path: str
) -> AggregateResult:
    """LiRA, predictors and evaluation from the complete shadows' score files, sealed under
    aggregate/<evaluation fp> (aggregate/<evaluation fp>-without-<…> when some shadows failed)."""
    from memaudit.data.poolfile import read_pool
    from memaudit.report.headline import headline_metrics
    from memaudit.report.outputs import SAMPLES, SUMMARY
    from memaudit.stages.aggregate import aggregate

    with task("aggregate", config_json=config_json) as t, work_dir("aggregate") as work:
        complete, failed = complete_population(t.cfg, score_uris)
        population = t.layout.population(t.cfg.evaluation_fingerprint(), sorted(failed))
        prefix, out = t.layout.aggregate(population), work / "out"

        def build(folder: Path) -> None:
            paths = [download_uri(uri, work / "scores" / f"{i}.npz") for i, uri in enumerate(complete)]
            aggregate(t.cfg, paths, read_pool(pool_path), folder, progress=False, missing=sorted(failed))

        if t.reuse_or_build_dir(prefix, out, build):
            t.skipped()
        shutil.copyfile(out / SAMPLES, samples_path)
        shutil.copyfile(out / SUMMARY, summary_path)
        summary = json.loads((out / SUMMARY).read_text())
        fpr, tpr, thr = _target_roc(out, summary)
        t.outcome.update(population=population, missing_shadows=sorted(failed))
    return AggregateResult(t.store.uri(prefix), headline_metrics(summary), fpr, tpr, thr)
