"""The warm worker: a task forked from it gives what a direct call gives, with the caller's environment, output
and errors."""

import json
import os
import time

import numpy as np
import pytest

from memaudit.errors import MemauditError
from memaudit.tasks.split import split_task
from memaudit.tasks.warm import WARM_ENV, worker
from tests.support.pipeline_config import small_config
from tests.support.task_runs import env, prepare, progress_events  # noqa: F401

LIGHT = ("memaudit.tasks.split",)  # what these tests' worker imports before it listens


def test_a_forked_task_returns_what_a_direct_call_returns(env, tmp_path):  # noqa: F811
    result, art = prepare(env, small_config())  # prepare and a direct split
    direct = np.load(art / "m")
    (art / "m").unlink()
    os.chdir(tmp_path)
    with worker(tmp_path / "warm.log", preload=LIGHT):
        assert os.environ[WARM_ENV]
        forked = split_task(config_json=result.config_json, pool_path=str(art / "pool.parquet"), member_path="m2")
    assert WARM_ENV not in os.environ
    assert np.array_equal(np.load(tmp_path / "m2"), direct)  # written in the caller's working folder
    assert forked == {"uri": forked["uri"], "n_models": direct.shape[0], "n_samples": direct.shape[1]}
    events = [e for e in progress_events(env / "progress.jsonl") if e["stage"] == "split"]
    assert events[-1]["event"] == "skipped" and events[-1]["pid"] != os.getpid()  # the caller's progress file


def test_a_task_error_is_raised_in_the_caller_with_its_traceback_in_the_callers_output(env, monkeypatch, capfd):  # noqa: F811
    monkeypatch.delenv("MEMAUDIT_STORE_DIR")  # the child sees the caller's environment, not the worker's
    config_json = json.dumps(small_config().to_dict())
    with worker(env / "warm.log", preload=LIGHT), pytest.raises(MemauditError, match="this task has no object store"):
        split_task(config_json=config_json, pool_path="p", member_path="m")
    assert "Traceback" in capfd.readouterr().err


def test_a_worker_that_cannot_start_is_reported_at_once(tmp_path):
    started = time.monotonic()
    with worker(tmp_path / "warm.log", preload=("no_such_module_here",)), pytest.raises(RuntimeError) as caught:
        split_task(config_json="{}", pool_path="p", member_path="m")
    assert "failed to start: ModuleNotFoundError" in str(caught.value) and time.monotonic() - started < 30
