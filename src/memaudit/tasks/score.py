"""The score task (GPU on a cluster): score one shadow at all its stored checkpoints, then seal the shadow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from memaudit.stages.schedule import schedule_for
from memaudit.tasks.runtime import (
    Task,
    TaskResult,
    base_model_folder,
    failed_result,
    set_threads,
    shadow_failed,
    task,
    work_dir,
)
from memaudit.tasks.warm import forked


def _score(t: Task, shadow: int, pool_path: str, member_path: str, base_model_path: str) -> None:
    """Download the checkpoints, score them, store the score file."""
    from memaudit.data.splits import shadow_members
    from memaudit.stages.checkpoints import restore_checkpoint
    from memaudit.stages.score import score_shadow

    set_threads()
    pool, member = shadow_members(pool_path, member_path, shadow)
    steps = [s for s, _ in schedule_for(t.cfg, int(member.sum()))]
    with work_dir(f"score-{shadow}") as work:
        ckpts = work / "checkpoints"
        for step, adapter in t.storage.download_checkpoints(shadow, work / "incoming", steps).items():
            restore_checkpoint(ckpts, step, adapter)
        base, device = base_model_folder(base_model_path), t.cfg.scoring.device
        scores = score_shadow(
            t.cfg, pool, member, shadow, base, ckpts, work / "scores.npz", device=device, progress=False
        )
        t.store.put_file(t.layout.scores(shadow), scores)


@forked
def score_task(**kwargs: Any) -> TaskResult:
    """Score one shadow (see :func:`_score_task`); a failure, or its fine-tune's, is recorded in its output."""
    upstream = json.loads(Path(kwargs["checkpoints_manifest"]).read_text()).get("failed")
    if upstream:
        return failed_result(upstream, kwargs["shadow"], kwargs["manifest_path"])
    try:
        return _score_task(**kwargs)
    except Exception as exc:
        return shadow_failed("score", kwargs["shadow"], exc, kwargs["manifest_path"])


def _score_task(
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
    with task("score", config_json=config_json, shadow=shadow) as t:
        if t.storage.shadow_complete(shadow):
            t.skipped()
        else:
            _score(t, shadow, pool_path, member_path, base_model_path)
            t.storage.drop_resume_state(shadow)
            t.storage.seal_shadow(shadow)
        uri = t.store.uri(t.layout.scores(shadow))
        Path(manifest_path).write_text(json.dumps({"uri": uri, "shadow": shadow}))
    return TaskResult(uri=uri, metadata={"uri": uri, "shadow": shadow})
