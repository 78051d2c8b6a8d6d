"""Progress events: appended by tasks, read incrementally, summed per stage."""

from memaudit import progress
from memaudit.pipelines.local import stage_table


def test_events_round_trip_and_partial_lines_wait(tmp_path, monkeypatch):
    path = tmp_path / "p.jsonl"
    progress.emit("prepare", "start")  # no file configured: nothing happens
    assert not path.exists()
    monkeypatch.setenv(progress.PROGRESS_ENV, str(path))
    progress.emit("finetune", "start", shadow=3)
    progress.emit("finetune", "step", shadow=3, detail="checkpoint 5/10")
    with path.open("a") as fh:
        fh.write('{"t": 1, "stage": "sc')  # a writer mid-line
    events, offset = progress.read_events(path)
    assert [(e["stage"], e["event"], e["shadow"]) for e in events] == [
        ("finetune", "start", 3),
        ("finetune", "step", 3),
    ]
    assert events[1]["detail"] == "checkpoint 5/10" and events[0]["pid"] > 0
    with path.open("a") as fh:
        fh.write('ore", "event": "done", "shadow": 1}\n')
    more, _ = progress.read_events(path, offset)
    assert more == [{"t": 1, "stage": "score", "event": "done", "shadow": 1}]


def test_stage_table_sums_task_time_and_counts_skips():
    events = [
        {"t": 0.0, "stage": "finetune", "event": "start", "shadow": 0},
        {"t": 1.0, "stage": "finetune", "event": "start", "shadow": 1},
        {"t": 4.0, "stage": "finetune", "event": "done", "shadow": 0},
        {"t": 6.0, "stage": "finetune", "event": "skipped", "shadow": 1},
        {"t": 7.0, "stage": "score", "event": "start", "shadow": 0},
        {"t": 7.5, "stage": "score", "event": "error", "shadow": 0},
    ]
    lines = stage_table(events).splitlines()
    assert lines[1].split() == ["finetune", "1", "1", "9.0s", "6.0s"]  # 4 + 5 s of tasks over a 6 s span
    assert lines[2].split() == ["score", "0", "0", "0.0s", "0.0s"]
