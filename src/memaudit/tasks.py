"""Task bodies of the pipeline's CPU stages (prepare, split, aggregate, plot); the KFP components call these.

Outputs are keyed by the config fingerprint in the object store (DESIGN §5) and sealed; a stage whose outputs are
already sealed reuses them. The shadow stages (finetune, score) are in :mod:`memaudit.shadow_tasks`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memaudit import tracking
from memaudit.config import ExperimentConfig, config_from_parameters
from memaudit.pool import read_pool, train_pool, write_pool
from memaudit.splits import membership_matrix, read_membership, write_membership
from memaudit.storage import RunStorage, download_uri
from memaudit.task_env import run_storage, set_threads, stage, task_config, tracking_uri, work_dir

HUB_MODEL_FILE = "memaudit-model.json"


@dataclass
class PrepareResult:
    config_json: str
    fingerprint: str
    parent_run_id: str
    shadow_ids: list[int]
    pool_metadata: dict[str, Any]
    model_metadata: dict[str, Any]


@dataclass
class AggregateResult:
    uri: str
    metrics: dict[str, float]
    roc_fpr: list[float]
    roc_tpr: list[float]
    roc_threshold: list[float]


def prepare_task(
    *,
    preset: str,
    config_yaml: str,
    overrides: str,
    n_shadows: int,
    dataset: str,
    model: str,
    run_name: str,
    pool_path: str,
    base_model_path: str,
) -> PrepareResult:
    """Resolve the config, write the pool and the base model (from the store when already built), open MLflow."""
    with stage("prepare") as outcome:
        cfg = config_from_parameters(preset, config_yaml, overrides, n_shadows, dataset, model)
        storage = run_storage(cfg)
        store, layout = storage.store, storage.layout
        if store.is_sealed(layout.pool):
            store.get_file(layout.pool, pool_path)
            pool = read_pool(pool_path)
            outcome["event"] = "skipped"
        else:
            from memaudit.data import build_pool

            pool = build_pool(cfg, data_dir=cfg.dataset.data_dir, progress=False)
            write_pool(pool, pool_path)
            storage.put_sealed_file(layout.pool, pool_path)
        model_metadata = _prepare_base_model(cfg, storage, pool, Path(base_model_path))
        parent = tracking.start_parent_run(cfg, uri=tracking_uri(), run_name=run_name or None)
        n_train = len(train_pool(pool))
        outcome.update(n_train=n_train, n_test=len(pool) - n_train)
    return PrepareResult(
        config_json=json.dumps(cfg.to_dict()),
        fingerprint=cfg.fingerprint(),
        parent_run_id=parent,
        shadow_ids=list(range(cfg.shadows.n_shadows)),
        pool_metadata={"uri": store.uri(layout.pool), "n_train": n_train, "n_test": len(pool) - n_train},
        model_metadata=model_metadata,
    )


def _prepare_base_model(cfg: ExperimentConfig, storage: RunStorage, pool, out: Path) -> dict[str, Any]:
    """Copy (or build, then store) the tiny model into ``out``; for a Hub model write a pointer file."""
    store, key = storage.store, storage.layout.base_model
    if cfg.model.name != "tiny-llama":
        out.mkdir(parents=True, exist_ok=True)
        pointer = {"name": cfg.model.name, "revision": cfg.model.revision}
        (out / HUB_MODEL_FILE).write_text(json.dumps(pointer))
        return pointer
    if store.is_complete(key):
        store.get_dir(key, out)
    else:
        from memaudit.models import ensure_base_model, tiny_model_corpus

        set_threads()  # one thread per process is several times faster for a model this small
        with work_dir("base-model") as cache:
            built = ensure_base_model(cfg.model, tiny_model_corpus(cfg, pool), cache)
            store.put_dir(key, built)
            store.write_complete(key)
        store.get_dir(key, out)
    return {"name": "tiny-llama", "uri": store.uri(key)}


def split_task(*, config_json: str, pool_path: str, member_path: str) -> dict[str, Any]:
    """Write the membership matrix (from the store when already drawn)."""
    with stage("split") as outcome:
        cfg = task_config(config_json)
        storage = run_storage(cfg)
        store, layout = storage.store, storage.layout
        n_train = len(train_pool(read_pool(pool_path)))
        if store.is_sealed(layout.member):
            store.get_file(layout.member, member_path)
            member = read_membership(member_path, n_samples=n_train)
            outcome["event"] = "skipped"
        else:
            s = cfg.shadows
            member = membership_matrix(s.n_shadows, n_train, scheme=s.scheme, seed=s.seed)
            write_membership(member, member_path)
            storage.put_sealed_file(layout.member, member_path)
    return {"uri": store.uri(layout.member), "n_models": int(member.shape[0]), "n_samples": int(member.shape[1])}


def aggregate_task(
    *, config_json: str, parent_run_id: str, score_uris: list[str], pool_path: str, samples_path: str, summary_path: str
) -> AggregateResult:
    """LiRA, predictors and evaluation from every shadow's score file; outputs sealed under aggregate/<eval fp>."""
    from memaudit.aggregate import aggregate

    with stage("aggregate") as outcome:
        cfg = task_config(config_json)
        storage = run_storage(cfg)
        store, prefix = storage.store, storage.layout.aggregate(cfg.evaluation_fingerprint())
        with work_dir("aggregate") as work:
            if store.is_complete(prefix):
                store.get_dir(prefix, work / "out")
                outcome["event"] = "skipped"
            else:
                paths = [download_uri(uri, work / "scores" / f"{i}.npz") for i, uri in enumerate(score_uris)]
                aggregate(cfg, paths, read_pool(pool_path), work / "out", progress=False)
                store.put_dir(prefix, work / "out")
                store.write_complete(prefix)
            shutil.copyfile(work / "out" / "samples.parquet", samples_path)
            shutil.copyfile(work / "out" / "summary.json", summary_path)
            summary = json.loads((work / "out" / "summary.json").read_text())
            fpr, tpr, thr = _target_roc(work / "out" / "roc.parquet", summary)
    return AggregateResult(store.uri(prefix), _headline_metrics(summary), fpr, tpr, thr)


def _headline_metrics(summary: dict[str, Any]) -> dict[str, float]:
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
    rows = roc[roc["predictor"] == f"psmi_L{summary['best_layer']['layer']}"]
    thr = np.nan_to_num(rows["threshold"].to_numpy(dtype=float), posinf=1e300, neginf=-1e300)
    return rows["fpr"].astype(float).tolist(), rows["tpr"].astype(float).tolist(), thr.tolist()


def plot_task(
    *, config_json: str, parent_run_id: str, aggregate_uri: str, samples_path: str, summary_path: str, html_path: str
) -> str:
    """Render the report (HTML + PNGs), store it, log it and the summary to MLflow; returns the report's URI."""
    from memaudit.report import render_report

    with stage("plot") as outcome:
        cfg = task_config(config_json)
        storage = run_storage(cfg)
        store, prefix = storage.store, storage.layout.report(cfg.evaluation_fingerprint())
        with work_dir("plot") as work:
            download_uri(aggregate_uri, work / "aggregate")
            if store.is_complete(prefix):
                store.get_dir(prefix, work / "report")
                outcome["event"] = "skipped"
            else:
                render_report(cfg, work / "aggregate", work / "report")
                store.put_dir(prefix, work / "report")
                store.write_complete(prefix)
            shutil.copyfile(work / "report" / "report.html", html_path)
            summary = json.loads(Path(summary_path).read_text())
            artifacts = sorted(p for p in (work / "report").iterdir() if p.suffix in (".html", ".png"))
            tracking.log_summary(tracking_uri(), parent_run_id, summary, artifacts)
        outcome["report"] = store.uri(f"{prefix}/report.html")
    return store.uri(f"{prefix}/report.html")
