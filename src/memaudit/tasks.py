"""The pipeline's task bodies: each KFP component calls one of these (no kfp here).

Every task resolves the object store from the environment (S3 when ``MEMAUDIT_S3_ENDPOINT`` is set, else the
folder ``MEMAUDIT_STORE_DIR``), keys its outputs by the config fingerprint (DESIGN §5) and trusts only sealed
outputs: a finetune or score task whose outputs are complete is skipped, a killed finetune resumes from the last
stored checkpoint (each checkpoint is uploaded and sealed as soon as it is written, the trainer state beside it),
and nothing sealed is ever overwritten. Progress events go to :mod:`memaudit.progress`; MLflow gets a parent run
(prepare), one child per shadow (finetune) and the summary and report (plot).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memaudit import progress, tracking
from memaudit.config import ExperimentConfig, config_from_dict, config_from_parameters
from memaudit.errors import MemauditError
from memaudit.pool import read_pool, train_pool, write_pool
from memaudit.splits import membership_matrix, read_membership, write_membership
from memaudit.storage import RunStorage, download_uri, store_from_env

STORE_DIR_ENV = "MEMAUDIT_STORE_DIR"
WORK_DIR_ENV = "MEMAUDIT_WORK_DIR"
THREADS_ENV = "MEMAUDIT_TORCH_THREADS"
HUB_MODEL_FILE = "memaudit-model.json"
RESUME = "resume"


@dataclass
class TaskResult:
    uri: str
    metadata: dict[str, Any] = field(default_factory=dict)


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


# --------------------------------------------------------------------------------------------------- helpers


def _storage(cfg: ExperimentConfig) -> RunStorage:
    root = os.environ.get(STORE_DIR_ENV)
    if not root and not os.environ.get("MEMAUDIT_S3_ENDPOINT") and os.environ.get("KFP_POD_NAME"):
        # in a cluster pod a local folder is lost with the pod, and each task would see an empty store
        raise MemauditError(
            "this pipeline pod has no object store (MEMAUDIT_S3_ENDPOINT is unset)",
            "install the chart (ConfigMap run.env_config_map) or point run.env_config_map at one with the S3 endpoint",
        )
    return RunStorage(store_from_env(root or str(Path("memaudit-store").resolve())), cfg.fingerprint())


def _tracking_uri() -> str:
    return tracking.tracking_uri(os.environ.get(STORE_DIR_ENV) or ".")


def _config(config_json: str) -> ExperimentConfig:
    return config_from_dict(json.loads(config_json), source="task config")


@contextlib.contextmanager
def _stage(stage: str, shadow: int | None = None) -> Iterator[dict[str, Any]]:
    """Emit start/done (or the body's ``event``) progress events; a MemauditError is reported, then re-raised."""
    outcome: dict[str, Any] = {"event": "done"}
    progress.emit(stage, "start", shadow=shadow)
    try:
        yield outcome
    except MemauditError as exc:
        progress.emit(stage, "error", shadow=shadow, message=exc.problem, fix=exc.fix)
        raise
    progress.emit(stage, outcome.pop("event"), shadow=shadow, **outcome)


@contextlib.contextmanager
def _work_dir(name: str) -> Iterator[Path]:
    base = os.environ.get(WORK_DIR_ENV)
    if base:
        Path(base).mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base or None))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _set_threads() -> None:
    threads = os.environ.get(THREADS_ENV)
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def _base_model(base_model_path: str) -> Path | None:
    """The base model folder handed over by prepare, or None for a Hub model (loaded by name)."""
    path = Path(base_model_path)
    return path if (path / "config.json").is_file() else None


def _schedule(cfg: ExperimentConfig, n_members: int) -> list[tuple[int, float]]:
    from memaudit.schedule import checkpoint_schedule

    t, c = cfg.training, cfg.checkpoints
    return checkpoint_schedule(n_members, t.batch_size, t.grad_accum, t.epochs, c.per_epoch_in_first, c.every_epochs)


def _shadow_inputs(cfg: ExperimentConfig, shadow: int, pool_path: str, member_path: str):
    pool = read_pool(pool_path)
    member = read_membership(member_path, n_samples=len(train_pool(pool)))
    if not 0 <= shadow < member.shape[0]:
        raise MemauditError(f"shadow {shadow} is not in the membership matrix", "re-run the split stage")
    return pool, member[shadow]


def _shadow_metrics(train_log: dict[str, Any]) -> dict[str, Any]:
    """What MLflow gets of a train log: loss, learning-rate and grad-norm curves by step, and the scalars."""
    history = train_log.get("loss") or []
    curves = {
        f"{name}_curve": [[h["step"], h[name]] for h in history if h.get(name) is not None]
        for name in ("loss", "learning_rate", "grad_norm")
    }
    scalars = ("n_members", "total_steps", "tokens", "tokens_per_s", "wall_time_s")
    out = {key: train_log[key] for key in scalars if isinstance(train_log.get(key), int | float)}
    if isinstance(train_log.get("peak_memory_bytes"), int | float):
        out["peak_memory_mb"] = train_log["peak_memory_bytes"] / 2**20
    return {**out, **{k: v for k, v in curves.items() if v}}


# ----------------------------------------------------------------------------------------------------- tasks


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
    with _stage("prepare") as outcome:
        cfg = config_from_parameters(preset, config_yaml, overrides, n_shadows, dataset, model)
        storage = _storage(cfg)
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
        parent = tracking.start_parent_run(cfg, uri=_tracking_uri(), run_name=run_name or None)
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

        _set_threads()  # one thread per process is several times faster for a model this small
        with _work_dir("base-model") as cache:
            built = ensure_base_model(cfg.model, tiny_model_corpus(cfg, pool), cache)
            store.put_dir(key, built)
            store.write_complete(key)
        store.get_dir(key, out)
    return {"name": "tiny-llama", "uri": store.uri(key)}


def split_task(*, config_json: str, pool_path: str, member_path: str) -> dict[str, Any]:
    """Write the membership matrix (from the store when already drawn)."""
    with _stage("split") as outcome:
        cfg = _config(config_json)
        storage = _storage(cfg)
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


def finetune_task(
    *,
    config_json: str,
    shadow: int,
    parent_run_id: str,
    pool_path: str,
    member_path: str,
    base_model_path: str,
    manifest_path: str,
) -> TaskResult:
    """Train one shadow, resuming from its stored checkpoints; skipped when they are all stored."""
    with _stage("finetune", shadow) as outcome:
        cfg = _config(config_json)
        storage = _storage(cfg)
        store, layout = storage.store, storage.layout
        pool, member = _shadow_inputs(cfg, shadow, pool_path, member_path)
        schedule = _schedule(cfg, int(member.sum()))
        log_key = f"{layout.shadow(shadow)}/train_log.json"
        stored = set(storage.stored_checkpoints(shadow))
        if storage.shadow_complete(shadow) or ({s for s, _ in schedule} <= stored and store.exists(log_key)):
            train_log = json.loads(store.get_bytes(log_key, verify=False))
            outcome["event"] = "skipped"
            extra = {"reused": 1.0}
        else:
            _set_threads()
            with _work_dir(f"finetune-{shadow}") as work:
                train_log = _train(cfg, storage, shadow, pool, member, schedule, stored, base_model_path, work)
            store.put_bytes(log_key, json.dumps(train_log, indent=1).encode())
            outcome["tokens_per_s"] = train_log.get("tokens_per_s")
            extra = {"reused": 0.0}
        tracking.log_shadow(_tracking_uri(), parent_run_id, shadow, _shadow_metrics(train_log), extra_metrics=extra)
        uri = store.uri(layout.shadow(shadow))
        manifest = {"uri": uri, "shadow": shadow, "checkpoints": [s for s, _ in schedule]}
        Path(manifest_path).write_text(json.dumps(manifest))
    return TaskResult(uri=uri, metadata=manifest)


def _train(cfg, storage: RunStorage, shadow, pool, member, schedule, stored, base_model_path, work) -> dict:
    """Restore what the store holds into ``work``, train on, upload each checkpoint as it is written."""
    from memaudit.train import claim_output_dir, finetune, restore_checkpoint

    store, layout = storage.store, storage.layout
    epochs = dict(schedule)
    state_key, state_info_key = (
        f"{layout.shadow(shadow)}/{RESUME}/trainer_state.pt",
        f"{layout.shadow(shadow)}/{RESUME}/state.json",
    )
    claim_output_dir(work, cfg, shadow, member)
    state_step = (
        json.loads(store.get_bytes(state_info_key, verify=False))["step"] if store.exists(state_info_key) else None
    )
    incoming = work / ".incoming"
    for step, adapter in storage.download_checkpoints(shadow, incoming, sorted(stored)).items():
        state = None
        if step == state_step:
            state = store.get_file(state_key, incoming / f"state-{step}.pt", verify=False)
        restore_checkpoint(work, step, epochs[step], adapter, state)
    shutil.rmtree(incoming, ignore_errors=True)
    if stored:
        progress.emit("finetune", "step", shadow=shadow, detail=f"resuming after step {max(stored)}")

    def on_checkpoint(step: int, path: Path) -> None:
        if step not in stored:
            storage.upload_checkpoint(shadow, step, path / "adapter")
            stored.add(step)
        state = path / "trainer_state.pt"
        if state.is_file():
            store.put_file(state_key, state)
            store.put_bytes(state_info_key, json.dumps({"step": step}).encode())
        progress.emit("finetune", "step", shadow=shadow, detail=f"checkpoint {step}/{schedule[-1][0]}")

    return finetune(
        cfg,
        pool,
        member,
        shadow,
        _base_model(base_model_path),
        work,
        device=cfg.scoring.device,
        progress=False,
        on_checkpoint=on_checkpoint,
    )


def score_task(
    *,
    config_json: str,
    shadow: int,
    pool_path: str,
    member_path: str,
    base_model_path: str,
    checkpoints_manifest: str,
    manifest_path: str,
) -> TaskResult:
    """Score one shadow at all its stored checkpoints, then seal the shadow; skipped when sealed."""
    with _stage("score", shadow) as outcome:
        cfg = _config(config_json)
        storage = _storage(cfg)
        store, layout = storage.store, storage.layout
        if storage.shadow_complete(shadow):
            outcome["event"] = "skipped"
        else:
            from memaudit.score import score_shadow
            from memaudit.train import restore_checkpoint

            _set_threads()
            pool, member = _shadow_inputs(cfg, shadow, pool_path, member_path)
            epochs = dict(_schedule(cfg, int(member.sum())))
            with _work_dir(f"score-{shadow}") as work:
                ckpts = work / "checkpoints"
                for step, adapter in storage.download_checkpoints(shadow, work / "incoming", sorted(epochs)).items():
                    restore_checkpoint(ckpts, step, epochs[step], adapter)
                scores = score_shadow(
                    cfg, pool, member, shadow, _base_model(base_model_path), ckpts, work / "scores.npz",
                    device=cfg.scoring.device, progress=False,
                )  # fmt: skip
                store.put_file(layout.scores(shadow), scores)
            resume = f"{layout.shadow(shadow)}/{RESUME}"
            if store.list_keys(resume):
                store.delete_prefix(resume)
            storage.seal_shadow(shadow)
        uri = store.uri(layout.scores(shadow))
        Path(manifest_path).write_text(json.dumps({"uri": uri, "shadow": shadow}))
    return TaskResult(uri=uri, metadata={"uri": uri, "shadow": shadow})


def aggregate_task(
    *, config_json: str, parent_run_id: str, score_uris: list[str], pool_path: str, samples_path: str, summary_path: str
) -> AggregateResult:
    """LiRA, predictors and evaluation from every shadow's score file; outputs sealed under aggregate/<eval fp>."""
    from memaudit.aggregate import aggregate

    with _stage("aggregate") as outcome:
        cfg = _config(config_json)
        storage = _storage(cfg)
        store, prefix = storage.store, storage.layout.aggregate(cfg.evaluation_fingerprint())
        with _work_dir("aggregate") as work:
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

    with _stage("plot") as outcome:
        cfg = _config(config_json)
        storage = _storage(cfg)
        store, prefix = storage.store, storage.layout.report(cfg.evaluation_fingerprint())
        with _work_dir("plot") as work:
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
            tracking.log_summary(_tracking_uri(), parent_run_id, summary, artifacts)
        outcome["report"] = store.uri(f"{prefix}/report.html")
    return store.uri(f"{prefix}/report.html")
