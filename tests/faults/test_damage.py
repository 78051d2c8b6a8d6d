"""Stored files changed or deleted behind the store's back: each is detected when reused, moved aside (never
deleted), recomputed, and the audit's numbers come out the same."""

import json
import shutil
from pathlib import Path

import pytest

from memaudit.store import LocalStore
from memaudit.store.layout import OUTPUTS_FORMAT
from tests.support.faults import record
from tests.support.pipeline_config import small_config
from tests.support.task_runs import aggregate, finetune, plot, point_tasks_at, prepare, progress_events, score

CFG = small_config()
FP, EFP = CFG.fingerprint(), CFG.evaluation_fingerprint()
CASES = {  # object of the store (a glob under the fingerprint), what happens to it
    "checkpoint adapter, changed": ("shadows/1/ckpt-9/adapter/*.safetensors", "change"),
    "checkpoint adapter, deleted": ("shadows/2/ckpt-2/adapter/*.safetensors", "delete"),
    "score file, changed": ("shadows/0/scores.npz", "change"),
    "score file, deleted": ("shadows/1/scores.npz", "delete"),
    "training log, changed": ("shadows/2/train_log.json", "change"),
    "aggregate summary, changed": (f"aggregate-v{OUTPUTS_FORMAT}/{EFP}/summary.json", "change"),
    "aggregate samples, deleted": (f"aggregate-v{OUTPUTS_FORMAT}/{EFP}/samples.parquet", "delete"),
    "report page, changed": (f"report-v{OUTPUTS_FORMAT}/{EFP}/report.html", "change"),
    "pool, changed": ("pool.parquet", "change"),
    "membership, deleted": ("member.npy", "delete"),
}


def _run_all(root: Path) -> dict:
    result, art = prepare(root, CFG)
    uris = []
    for shadow in range(CFG.shadows.n_shadows):
        finetune(result, art, shadow)
        uris.append(score(result, art, shadow).uri)
    out = aggregate(result, art, uris)
    plot(result, art, out.uri)
    return json.loads((art / "summary").read_text())


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("complete")
    with pytest.MonkeyPatch.context() as mp:
        point_tasks_at(mp, root)
        summary = _run_all(root)
    return root, summary


def _same(path: Path, original: bytes) -> bool:
    """The recomputed file equals the original (a training log: the same losses; its timings differ)."""
    if path.name != "train_log.json":
        return path.read_bytes() == original
    ours, theirs = json.loads(path.read_text()), json.loads(original)
    return [c["loss"] for c in ours["loss"]] == [c["loss"] for c in theirs["loss"]]


@pytest.mark.parametrize("case", list(CASES))
def test_damage_is_detected_set_aside_and_recomputed(complete_run, case, tmp_path, monkeypatch):
    source, summary = complete_run
    root = tmp_path / "run"
    shutil.copytree(source, root)
    point_tasks_at(monkeypatch, root)
    (root / "progress.jsonl").unlink()
    pattern, damage = CASES[case]
    (target,) = sorted((root / "store" / FP).glob(pattern))
    original = target.read_bytes()
    if damage == "change":
        target.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
    else:
        target.unlink()
    again = _run_all(root)
    damaged = [e for e in progress_events(root / "progress.jsonl") if e["event"] == "damaged"]
    moved = list((root / "store" / FP / "quarantine").glob(f"*/{target.relative_to(root / 'store' / FP)}"))
    store = LocalStore(root / "store")
    markers = [m for m in (root / "store").rglob("COMPLETE") if "quarantine" not in m.parts]
    intact = all(store.verify_complete(m.parent.relative_to(root / "store").as_posix()) for m in markers)
    survived = len(damaged) == 1 and intact and again["predictors"] == summary["predictors"]
    record(f"stored {case}", 1, int(survived), "the damaged unit is recomputed")
    assert len(damaged) == 1 and target.name in damaged[0]["message"]
    assert intact and _same(target, original)  # recomputed identically
    if damage == "change":
        assert [p.read_bytes() != original for p in moved] == [True]  # the damaged copy is kept aside
    assert again["predictors"] == summary["predictors"] and again["n_memorized"] == summary["n_memorized"]
