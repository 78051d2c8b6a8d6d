"""SIGINT and SIGTERM during ``memaudit run``: every task stops within seconds, sealed checkpoints stay, one line
says what was kept, the exit code is 128 + signal, nothing is written outside the output folder, a rerun resumes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memaudit.progress import read_events
from memaudit.store import LocalStore, RunStorage
from tests.support.faults import record
from tests.support.pipeline_config import small_config

pytestmark = pytest.mark.slow


def _start(root: Path) -> tuple[subprocess.Popen, Path]:
    config, output, cwd = root / "config.yaml", root / "out", root / "cwd"
    config.write_text(small_config("training.epochs=6").to_yaml())
    cwd.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEMAUDIT_", "MLFLOW_"))}
    command = [sys.executable, "-m", "memaudit.cli", "run", "-c", str(config), "-o", str(output), "--no-progress"]
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, output


def _wait_for_a_checkpoint(output: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = read_events(output / "progress.jsonl")[0] if (output / "progress.jsonl").is_file() else []
        if any(e["stage"] == "finetune" and e.get("detail", "").startswith("checkpoint") for e in events):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    pytest.fail("no fine-tune checkpoint within the timeout")


def _processes_of(output: Path) -> list[int]:
    """Processes whose command line names the run's output folder (the pipeline process and its tasks)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(output).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A run stopped with SIGINT, then the same run stopped with SIGTERM; the outputs of both."""
    root = tmp_path_factory.mktemp("interrupt")
    results = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        (root / "out" / "progress.jsonl").unlink(missing_ok=True)  # wait for this run's own events
        proc, output = _start(root)
        _wait_for_a_checkpoint(output, proc)
        start = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        results[sig] = (proc.returncode, err, time.monotonic() - start, _processes_of(output))
    return root, results


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_within_seconds_with_one_line(interrupted, sig, code):
    root, results = interrupted
    returncode, err, took, left = results[sig]
    stopped = returncode == code and took < 15 and left == [] and "Traceback" not in err
    record(f"{sig.name} during memaudit run", 1, int(stopped), "the training since each shadow's last checkpoint")
    assert returncode == code and took < 15 and left == []
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"interrupted ({sig.name}): ") and line.endswith("run the same command again to resume")
    assert f"kept in {root / 'out'}" in line and "shadows complete" in line


def test_nothing_is_written_outside_the_output_folder_and_checkpoints_stay_sealed(interrupted):
    root, _ = interrupted
    assert list((root / "cwd").iterdir()) == []  # no memaudit-store/, no mlflow.db where the command ran
    storage = RunStorage(LocalStore(root / "out" / "store"), small_config("training.epochs=6").fingerprint())
    stored = {s: storage.stored_checkpoints(s) for s in range(3)}
    assert any(stored.values())
    for shadow, steps in stored.items():
        for step in steps:
            assert storage.store.verify_complete(storage.layout.checkpoint(shadow, step))


def test_the_rerun_resumes_and_completes(interrupted):
    root, _ = interrupted
    (root / "out" / "work" / "finetune-9-abandoned").mkdir(parents=True)
    proc, output = _start(root)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    events = read_events(output / "progress.jsonl")[0]
    assert any(e.get("detail", "").startswith("resuming after step") for e in events)
    assert not (output / "work" / "finetune-9-abandoned").exists()  # abandoned scratch folders are removed
    assert "report:" in out
