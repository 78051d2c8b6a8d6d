"""The finetune task (GPU on a cluster): train one shadow, resuming from what the store holds.

A finetune whose checkpoints are all stored, or a shadow already sealed, is skipped. Otherwise the stored
checkpoints (and the trainer state of the latest) are restored and training continues: every checkpoint is
uploaded and sealed as soon as it is written, so a killed pod loses at most one checkpoint interval, and the
resumed run ends identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from memaudit import progress, tracking
from memaudit.stages.schedule import schedule_for
from memaudit.store.base import CorruptedObject
from memaudit.store.layout import ADAPTER_DIR, TRAINER_STATE, checkpoint_step
from memaudit.tasks.runtime import (
    Task,
    TaskResult,
    base_model_folder,
    set_threads,
    shadow_failed,
    task,
    track_quietly,
    tracking_uri,
    work_dir,
)
from memaudit.tasks.warm import forked


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


def _shadow_intact(t: Task, shadow: int) -> bool:
    """Whether the sealed shadow still matches its marker (verified once per run, here). A damaged shadow is set
    aside: only the damaged files when its checkpoints are intact (then only scoring reruns), else all of it."""
    prefix = t.layout.shadow(shadow)
    damaged = t.store.damaged(prefix)
    if not damaged:
        return True
    in_checkpoints = any(checkpoint_step(key[len(prefix) + 1 :].split("/")[0]) is not None for key in damaged)
    t.set_aside(prefix, damaged, keys=None if in_checkpoints else damaged)
    return False


def _restore(t: Task, shadow: int, stored: set[int], work: Path) -> None:
    """Lay the stored checkpoints (and the latest trainer state) into the work folder, as finetune left them."""
    from memaudit.stages.checkpoints import restore_checkpoint

    incoming = work / ".incoming"
    state = t.storage.load_resume_state(shadow, incoming / TRAINER_STATE)
    for step, adapter in t.storage.download_checkpoints(shadow, incoming, sorted(stored)).items():
        state_file = state[1] if state is not None and state[0] == step else None
        restore_checkpoint(work, step, adapter, state_file)
    shutil.rmtree(incoming, ignore_errors=True)
    if stored:
        progress.emit("finetune", "step", shadow=shadow, detail=f"resuming after step {max(stored)}")


def _train(t: Task, shadow: int, pool, member, stored: set[int], base_model_path: str, work: Path) -> dict:
    """Restore what the store holds into ``work``, train on, upload each checkpoint as it is written."""
    from memaudit.stages.checkpoints import claim_output_dir, run_identity
    from memaudit.stages.finetune import finetune

    last = schedule_for(t.cfg, int(member.sum()))[-1][0]
    claim_output_dir(work, run_identity(t.cfg, shadow, member))
    try:
        _restore(t, shadow, stored, work)
    except CorruptedObject as exc:  # a damaged stored checkpoint: set the shadow aside and train it afresh
        t.set_aside(t.layout.shadow(shadow), [exc.key])
        stored.clear()
        shutil.rmtree(work, ignore_errors=True)
        claim_output_dir(work, run_identity(t.cfg, shadow, member))

    def on_checkpoint(step: int, path: Path) -> None:
        if step not in stored:
            t.storage.upload_checkpoint(shadow, step, path / ADAPTER_DIR)
            stored.add(step)
        if (path / TRAINER_STATE).is_file():
            t.storage.save_resume_state(shadow, step, path / TRAINER_STATE)
        progress.emit("finetune", "step", shadow=shadow, detail=f"checkpoint {step}/{last}")

    base = base_model_folder(base_model_path)
    device = t.cfg.scoring.device
    return finetune(t.cfg, pool, member, shadow, base, work, device=device, progress=False, on_checkpoint=on_checkpoint)


@forked
def finetune_task(**kwargs: Any) -> TaskResult:
    """Train one shadow (see :func:`_finetune_task`); a failure is recorded in its output, not raised, so that the
    other shadows go on and the aggregate can use the complete ones (``shadows.min_complete``)."""
    try:
        return _finetune_task(**kwargs)
    except Exception as exc:
        return shadow_failed("finetune", kwargs["shadow"], exc, kwargs["manifest_path"])


def _finetune_task(
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
    from memaudit.data.splits import shadow_members

    with task("finetune", config_json=config_json, shadow=shadow) as t:
        pool, member = shadow_members(pool_path, member_path, shadow)
        steps = [s for s, _ in schedule_for(t.cfg, int(member.sum()))]
        log_key = t.layout.train_log(shadow)
        complete = t.storage.shadow_complete(shadow) and _shadow_intact(t, shadow)
        stored = set(t.storage.stored_checkpoints(shadow))
        if complete or (set(steps) <= stored and t.store.exists(log_key)):
            train_log = json.loads(t.store.get_bytes(log_key, verify=False))
            t.skipped()
        else:
            set_threads()
            with work_dir(f"finetune-{shadow}") as work:
                train_log = _train(t, shadow, pool, member, stored, base_model_path, work)
            t.store.put_bytes(log_key, json.dumps(train_log, indent=1).encode())
            t.outcome["tokens_per_s"] = train_log.get("tokens_per_s")
        reused = {"reused": 1.0 if t.outcome["event"] == "skipped" else 0.0}
        metrics = _shadow_metrics(train_log)
        track_quietly(
            f"shadow {shadow}'s training",
            lambda: tracking.log_shadow(tracking_uri(), parent_run_id, shadow, metrics, extra_metrics=reused),
        )
        uri = t.store.uri(t.layout.shadow(shadow))
        manifest = {"uri": uri, "shadow": shadow, "checkpoints": steps}
        Path(manifest_path).write_text(json.dumps(manifest))
    return TaskResult(uri=uri, metadata=manifest)
