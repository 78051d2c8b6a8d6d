"""Task bodies of the shadow stages (finetune, score; GPU on a cluster); the KFP components call these.

A finetune whose checkpoints are all stored, or a shadow already sealed, is skipped. Otherwise the stored
checkpoints (and the trainer state of the latest) are restored and training continues: every checkpoint is
uploaded and sealed as soon as it is written, so a killed pod loses at most one checkpoint interval, and the
resumed run ends identical to an uninterrupted one. The score task seals the whole shadow last.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memaudit import progress, tracking
from memaudit.config import ExperimentConfig
from memaudit.errors import MemauditError
from memaudit.pool import read_pool, train_pool
from memaudit.splits import read_membership
from memaudit.storage import RunStorage
from memaudit.task_env import run_storage, set_threads, stage, task_config, tracking_uri, work_dir

RESUME = "resume"


@dataclass
class TaskResult:
    uri: str
    metadata: dict[str, Any] = field(default_factory=dict)


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
    with stage("finetune", shadow) as outcome:
        cfg = task_config(config_json)
        storage = run_storage(cfg)
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
            set_threads()
            with work_dir(f"finetune-{shadow}") as work:
                train_log = _train(cfg, storage, shadow, pool, member, schedule, stored, base_model_path, work)
            store.put_bytes(log_key, json.dumps(train_log, indent=1).encode())
            outcome["tokens_per_s"] = train_log.get("tokens_per_s")
            extra = {"reused": 0.0}
        tracking.log_shadow(tracking_uri(), parent_run_id, shadow, _shadow_metrics(train_log), extra_metrics=extra)
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
    with stage("score", shadow) as outcome:
        cfg = task_config(config_json)
        storage = run_storage(cfg)
        store, layout = storage.store, storage.layout
        if storage.shadow_complete(shadow):
            outcome["event"] = "skipped"
        else:
            from memaudit.score import score_shadow
            from memaudit.train import restore_checkpoint

            set_threads()
            pool, member = _shadow_inputs(cfg, shadow, pool_path, member_path)
            epochs = dict(_schedule(cfg, int(member.sum())))
            with work_dir(f"score-{shadow}") as work:
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
