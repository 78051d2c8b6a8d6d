"""Stored files changed or deleted behind the store's back: each is detected when reused, moved aside (never
deleted), recomputed, and the audit's numbers come out the same."""

import json
import shutil
from pathlib import Path

import pytest

from memaudit.store import MARKER, LocalStore
from memaudit.store.layout import OUTPUTS_FORMAT
from memaudit.store.seal import file_digest, marker_bytes, parse_marker
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


def _copy_of(complete_run, tmp_path: Path, monkeypatch) -> tuple[Path, dict]:
    """A copy of the complete run, with the tasks pointed at it and no progress events yet; and its summary."""
    source, summary = complete_run
    root = tmp_path / "run"
    shutil.copytree(source, root)
    point_tasks_at(monkeypatch, root)
    (root / "progress.jsonl").unlink()
    return root, summary


def _same(path: Path, original: bytes) -> bool:
    """The recomputed file equals the original (a training log: the same losses; its timings differ)."""
    if path.name != "train_log.json":
        return path.read_bytes() == original
    ours, theirs = json.loads(path.read_text()), json.loads(original)
    return [c["loss"] for c in ours["loss"]] == [c["loss"] for c in theirs["loss"]]


@pytest.mark.parametrize("case", list(CASES))
def test_damage_is_detected_set_aside_and_recomputed(complete_run, case, tmp_path, monkeypatch):
    root, summary = _copy_of(complete_run, tmp_path, monkeypatch)
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


SEAL = "s" * 64


def _sign_every_marker(store_root: Path) -> None:
    """What the install's runs write with MEMAUDIT_SEAL_KEY set: every marker signed for its prefix."""
    for marker in sorted(store_root.rglob(MARKER), key=lambda m: -len(m.parts)):  # inner markers first
        prefix = marker.parent.relative_to(store_root).as_posix()
        manifest = parse_marker(marker.read_bytes())
        files = {rel: (e["sha256"], e["size"]) for rel, e in manifest["files"].items()}
        files |= {rel: file_digest(marker.parent / rel) for rel in files if rel.endswith(MARKER)}  # signed by now
        marker.write_bytes(marker_bytes(files, manifest["scope"], prefix=prefix, key=SEAL.encode()))


def _forge(store_root: Path, key: str, content: bytes) -> None:
    """A writer with the bucket's key but not the seal key: new bytes, their digest in the marker, no HMAC."""
    (store_root / key).write_bytes(content)
    for folder in [f for f in (store_root / key).parents if store_root in f.parents]:
        prefix, marker = folder.relative_to(store_root).as_posix(), folder / MARKER
        manifest = parse_marker(marker.read_bytes()) if marker.is_file() else {"files": {}}
        if key[len(prefix) + 1 :] in manifest["files"]:
            files = {rel: (e["sha256"], e["size"]) for rel, e in manifest["files"].items()}
            files[key[len(prefix) + 1 :]] = file_digest(store_root / key)
            marker.write_bytes(marker_bytes(files, manifest["scope"]))
            return
    raise AssertionError(f"no marker lists {key}")


@pytest.mark.parametrize("sealed", [True, False], ids=["with the seal key", "control: no seal key"])
def test_a_shadow_forged_without_the_seal_key_is_not_reused(complete_run, sealed, tmp_path, monkeypatch):
    root, summary = _copy_of(complete_run, tmp_path, monkeypatch)
    store_root = root / "store"
    _sign_every_marker(store_root)
    target, donor = (f"{FP}/shadows/{s}/scores.npz" for s in (0, 1))
    original = (store_root / target).read_bytes()
    _forge(store_root, target, (store_root / donor).read_bytes())  # shadow 1's scores passed off as shadow 0's
    if sealed:
        monkeypatch.setenv("MEMAUDIT_SEAL_KEY", SEAL)
    again = _run_all(root)
    damaged = [e for e in progress_events(root / "progress.jsonl") if e["event"] == "damaged"]
    if not sealed:  # the forgery is indistinguishable from honest output without the key: it is reused
        assert damaged == [] and (store_root / target).read_bytes() != original
        return
    # the forged marker vouches for the whole shadow, checkpoints included: all of it is set aside and retrained
    assert len(damaged) == 1 and damaged[0]["shadow"] == 0
    assert "is listed by a COMPLETE marker without this install's seal" in damaged[0]["message"]
    assert (store_root / target).read_bytes() == original
    assert again["predictors"] == summary["predictors"] and again["n_memorized"] == summary["n_memorized"]
