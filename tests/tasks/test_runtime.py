"""The task skeleton: reuse what is sealed and intact, set damaged outputs aside (never deleting them), rebuild."""

import json
from pathlib import Path

import pytest

from memaudit.config import load_config
from memaudit.progress import read_events
from memaudit.tasks.runtime import task


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMAUDIT_STORE_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("MEMAUDIT_PROGRESS_FILE", str(tmp_path / "progress.jsonl"))
    monkeypatch.delenv("MEMAUDIT_S3_ENDPOINT", raising=False)
    return tmp_path


CONFIG = json.dumps(load_config(preset="demo").to_dict())


def _build(calls: list[Path]):
    def build(out: Path) -> None:
        calls.append(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "a.txt").write_text("alpha")
        (out / "sub").mkdir(exist_ok=True)
        (out / "sub" / "b.txt").write_text("beta")

    return build


def _run(root: Path, out: str, calls: list[Path]) -> tuple[bool, object]:
    with task("aggregate", config_json=CONFIG) as t:
        reused = t.reuse_or_build_dir(t.layout.aggregate("ffff"), root / out, _build(calls))
        if reused:
            t.skipped()
    return reused, t


def test_sealed_outputs_are_reused_then_damage_is_set_aside_and_rebuilt(env, capsys):
    calls: list[Path] = []
    assert _run(env, "o1", calls)[0] is False and len(calls) == 1
    reused, t = _run(env, "o2", calls)
    assert reused and len(calls) == 1 and (env / "o2" / "sub" / "b.txt").read_text() == "beta"
    prefix = t.layout.aggregate("ffff")
    (t.store.path(f"{prefix}/sub/b.txt")).write_text("BETA")  # same size, other content
    reused, _ = _run(env, "o3", calls)
    assert reused is False and len(calls) == 2
    assert (env / "o3" / "sub" / "b.txt").read_text() == "beta" and t.store.verify_complete(prefix)
    kept = sorted(p for p in (env / "store").rglob("*") if "quarantine" in p.parts and p.is_file())
    assert [p.name for p in kept] == ["COMPLETE", "a.txt", "b.txt"] and kept[-1].read_text() == "BETA"
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "sub/b.txt does not match its COMPLETE marker: moved aside to" in line and line.endswith("; recomputing")
    events = read_events(env / "progress.jsonl")[0]
    assert [e["event"] for e in events if e["event"] != "start"] == ["done", "skipped", "damaged", "done"]


def test_a_deleted_file_listed_in_the_marker_is_damage_too(env):
    calls: list[Path] = []
    _, t = _run(env, "o1", calls)
    t.store.path(f"{t.layout.aggregate('ffff')}/a.txt").unlink()
    assert _run(env, "o2", calls)[0] is False and len(calls) == 2 and (env / "o2" / "a.txt").is_file()


def test_a_damaged_single_file_leaves_its_key_scoped_marker(env):
    def write(text):
        return lambda path: Path(path).write_text(text)

    with task("prepare", config_json=CONFIG) as t:
        assert t.reuse_or_build_file(t.layout.pool, env / "p1", write("pool")) is False
        assert t.reuse_or_build_file(t.layout.member, env / "m1", write("member")) is False
    t.store.path(t.layout.pool).write_text("pooh")
    with task("prepare", config_json=CONFIG) as t:
        assert t.reuse_or_build_file(t.layout.member, env / "m2", write("other")) is True
        assert t.reuse_or_build_file(t.layout.pool, env / "p2", write("pool")) is False
    assert (env / "p2").read_text() == "pool" and t.store.get_bytes(t.layout.member) == b"member"
    moved = [p for p in (env / "store").rglob("*") if "quarantine" in p.parts and p.is_file()]
    assert [p.read_text() for p in moved] == ["pooh"]
