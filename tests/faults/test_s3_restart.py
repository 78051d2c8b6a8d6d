"""The S3 server (SeaweedFS) stopped and started again while a shadow trains: its uploads wait and retry, and the
task completes with every checkpoint sealed."""

import json
import time

import pytest

from memaudit.store import RunStorage, s3_store_from_env
from tests.support.faults import record
from tests.support.pipeline_config import small_config
from tests.support.services import SeaweedFS
from tests.support.task_runs import finetune_kwargs, prepare, progress_events, task_env, task_in_subprocess

pytestmark = pytest.mark.integration
DOWN_S = 4.0


def test_an_s3_restart_mid_training_is_ridden_out(tmp_path, monkeypatch):
    (tmp_path / "weed").mkdir()
    weed = SeaweedFS(tmp_path / "weed")
    weed.start()
    try:
        s3 = weed.service(0.0).env()
        env = {**task_env(tmp_path), **s3}
        del env["MEMAUDIT_STORE_DIR"]  # the S3 store
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("MEMAUDIT_STORE_DIR", raising=False)
        cfg = small_config("training.epochs=6")
        result, art = prepare(tmp_path, cfg)
        proc = task_in_subprocess(env, "finetune.finetune_task", finetune_kwargs(result, art, 0))
        deadline = time.monotonic() + 300
        while not any(
            e.get("detail", "").startswith("checkpoint") for e in progress_events(tmp_path / "progress.jsonl")
        ):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        weed.stop()
        time.sleep(DOWN_S)
        weed.start()
        assert proc.wait(timeout=600) == 0
        manifest = json.loads((art / "ckpts-0.json").read_text())
        storage = RunStorage(s3_store_from_env(env=s3), cfg.fingerprint())
        survived = "failed" not in manifest and storage.stored_checkpoints(0) == manifest["checkpoints"]
        record(f"S3 server down {DOWN_S:g} s during a fine-tune", 1, int(survived), "none (the uploads waited)")
        assert survived, manifest
    finally:
        weed.stop()
