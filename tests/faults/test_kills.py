"""SIGKILL of a fine-tune at random points and of a scoring task: the next run resumes from the last sealed
checkpoint (at most one checkpoint interval lost) and ends bit-identical to an uninterrupted run."""

import itertools
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from memaudit.stages.schedule import schedule_for
from memaudit.store import LocalStore, RunStorage
from tests.support.faults import record
from tests.support.pipeline_config import small_config
from tests.support.task_runs import (
    final_adapter,
    finetune,
    finetune_kwargs,
    point_tasks_at,
    prepare,
    progress_events,
    score,
    task_env,
    task_in_subprocess,
)

N_KILLS = 5
CONFIG = ("training.epochs=6",)


def _checkpoints_seen(root: Path, shadow: int) -> list[int]:
    events = progress_events(root / "progress.jsonl") if (root / "progress.jsonl").is_file() else []
    mine = [e for e in events if e["stage"] == "finetune" and e["shadow"] == shadow]
    return [int(e["detail"].split()[1].split("/")[0]) for e in mine if e.get("detail", "").startswith("checkpoint")]


def _kill_after(proc: subprocess.Popen, root: Path, shadow: int, step: int, delay: float) -> int | None:
    """SIGKILL ``proc`` ``delay`` seconds after its checkpoint ``step`` (or later) is sealed; the last step seen."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        seen = _checkpoints_seen(root, shadow)
        if seen and max(seen) >= step:
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return max(_checkpoints_seen(root, shadow))
        time.sleep(0.05)
    return None


def _reference(monkeypatch, root: Path, cfg, shadow: int, scored: bool = False) -> None:
    """An uninterrupted fine-tune (and scoring) of ``shadow`` in a run of its own under ``root``."""
    point_tasks_at(monkeypatch, root)
    result, art = prepare(root, cfg)
    finetune(result, art, shadow)
    if scored:
        score(result, art, shadow)


def test_finetune_killed_at_random_points_resumes_and_ends_identical(env, tmp_path_factory, monkeypatch):
    cfg = small_config(*CONFIG)
    reference_root = tmp_path_factory.mktemp("reference")
    _reference(monkeypatch, reference_root, cfg, 0)
    point_tasks_at(monkeypatch, env)
    result, art = prepare(env, cfg)
    n_members = int(np.load(art / "m")[0].sum())
    steps = [s for s, _ in schedule_for(cfg, n_members)]
    rng = random.Random(0)
    targets = sorted(rng.sample(steps[1:-1], N_KILLS))
    storage = RunStorage(LocalStore(env / "store"), cfg.fingerprint())
    lost, survived = [], 0
    for target in targets:
        before = storage.stored_checkpoints(0)
        proc = task_in_subprocess(task_env(env), "finetune.finetune_task", finetune_kwargs(result, art, 0))
        killed_at = _kill_after(proc, env, 0, target, rng.uniform(0.0, 0.3))
        stored = storage.stored_checkpoints(0)
        if killed_at is not None and killed_at in stored and set(before) <= set(stored):
            survived += 1  # nothing sealed before the kill was lost
        gap = min((s for s in steps if s > max(stored)), default=max(stored)) - max(stored)
        lost.append(gap)
    finetune(result, art, 0)  # the last run resumes and finishes
    assert survived == N_KILLS
    assert all(gap <= max(b - a for a, b in itertools.pairwise(steps)) for gap in lost)
    for step in steps:
        theirs, ours = final_adapter(reference_root, cfg, 0, step), final_adapter(env, cfg, 0, step)
        assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in theirs)
    record("SIGKILL of a fine-tune at random points", N_KILLS, survived, f"≤ 1 checkpoint interval ({max(lost)} steps)")


def test_a_killed_scoring_task_is_recomputed_identically(env, tmp_path_factory, monkeypatch):
    cfg = small_config(*CONFIG)
    reference_root = tmp_path_factory.mktemp("reference")
    _reference(monkeypatch, reference_root, cfg, 1, scored=True)
    point_tasks_at(monkeypatch, env)
    result, art = prepare(env, cfg)
    finetune(result, art, 1)
    kwargs = {
        "config_json": result.config_json, "shadow": 1, "pool_path": str(art / "pool.parquet"),
        "member_path": str(art / "m"), "base_model_path": str(art / "base_model"),
        "checkpoints_manifest": str(art / "ckpts-1.json"), "manifest_path": str(art / "scores-1.json"),
    }  # fmt: skip
    proc = task_in_subprocess(task_env(env), "score.score_task", kwargs)
    deadline = time.monotonic() + 120
    while not any(e["stage"] == "score" for e in progress_events(env / "progress.jsonl")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    storage = RunStorage(LocalStore(env / "store"), cfg.fingerprint())
    assert not storage.shadow_complete(1)
    score(result, art, 1)
    reference = RunStorage(LocalStore(reference_root / "store"), cfg.fingerprint())
    ours = storage.store.get_bytes(storage.layout.scores(1))
    assert storage.shadow_complete(1) and ours == reference.store.get_bytes(reference.layout.scores(1))
    record("SIGKILL of a scoring task", 1, int(storage.shadow_complete(1)), "that shadow's scoring")
