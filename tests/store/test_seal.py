"""The COMPLETE seal: one format for object-store prefixes and local folders, one writer, one verifier."""

import json

import pytest

from memaudit.errors import MemauditError
from memaudit.store import LocalStore
from memaudit.store.base import CorruptedObject
from memaudit.store.seal import (
    MARKER,
    MARKER_FORMAT,
    authentic,
    file_digest,
    folder_mismatches,
    marker_bytes,
    mismatches,
    parse_marker,
    seal_folder,
    seal_key,
)


def test_marker_round_trips_and_names_its_format():
    data = marker_bytes({"a/b.bin": ("ab" * 32, 3)}, "keys")
    assert json.loads(data)["format"] == MARKER_FORMAT
    manifest = parse_marker(data)
    assert manifest["scope"] == "keys"
    assert manifest["files"] == {"a/b.bin": {"sha256": "ab" * 32, "size": 3}}


@pytest.mark.parametrize(
    "data",
    [b"{}", b"[]", b'{"format": "other/1", "scope": "prefix", "files": {}}', b'{"format": "memaudit-complete/1"}'],
)
def test_malformed_markers_are_refused(data):
    with pytest.raises(ValueError):
        parse_marker(data)


def test_verifier_reports_changed_and_missing_files():
    manifest = parse_marker(marker_bytes({"x": ("0" * 64, 1), "y": ("1" * 64, 2)}, "prefix"))
    digests = {"x": ("0" * 64, 1), "y": ("1" * 64, 3)}
    assert mismatches(manifest, digests.get) == ["y"]
    assert mismatches(manifest, {}.get) == ["x", "y"]


def test_sealed_folder_detects_a_changed_or_deleted_file(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "w.bin").write_bytes(b"weights")
    (tmp_path / "state.pt").write_bytes(b"state")
    manifest = seal_folder(tmp_path, [tmp_path / "adapter" / "w.bin"])
    assert manifest["scope"] == "keys" and list(manifest["files"]) == ["adapter/w.bin"]
    assert folder_mismatches(tmp_path) == []
    (tmp_path / "state.pt").unlink()  # not covered by the seal
    assert folder_mismatches(tmp_path) == []
    (tmp_path / "adapter" / "w.bin").write_bytes(b"weightz")
    assert folder_mismatches(tmp_path) == ["adapter/w.bin"]
    (tmp_path / "adapter" / "w.bin").unlink()
    assert folder_mismatches(tmp_path) == ["adapter/w.bin"]
    (tmp_path / MARKER).unlink()
    assert folder_mismatches(tmp_path) == [MARKER]


def test_a_sealed_folder_and_a_store_prefix_have_the_same_marker(tmp_path):
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.txt").write_text("alpha")
    (folder / "b.txt").write_text("beta")
    store = LocalStore(tmp_path / "store")
    store.put_dir("fp/thing", folder)
    local = seal_folder(folder)
    assert store.write_complete("fp/thing") == local
    assert store.get_bytes(f"fp/thing/{MARKER}", verify=False) == (folder / MARKER).read_bytes()
    assert local["files"]["b.txt"] == dict(zip(("sha256", "size"), file_digest(folder / "b.txt"), strict=True))


KEY = "k" * 32


def test_a_signed_marker_carries_the_hmac_of_its_prefix_scope_and_entries():
    import hashlib
    import hmac

    data = marker_bytes({"a.bin": ("ab" * 32, 3)}, "keys", prefix="fp/x", key=KEY.encode())
    signed = '{"files": {"a.bin": {"sha256": "' + "ab" * 32 + '", "size": 3}}, "prefix": "fp/x", "scope": "keys"}'
    assert json.loads(data)["hmac"] == hmac.new(KEY.encode(), signed.encode(), hashlib.sha256).hexdigest()
    manifest = parse_marker(data)
    assert authentic(manifest, "fp/x", KEY.encode())
    assert not authentic(manifest, "fp/y", KEY.encode()) and not authentic(manifest, "fp/x", b"j" * 32)
    assert not authentic(parse_marker(marker_bytes({"a.bin": ("ab" * 32, 3)}, "keys")), "fp/x", KEY.encode())


def test_a_short_seal_key_is_refused_with_the_fix():
    with pytest.raises(MemauditError, match=r"MEMAUDIT_SEAL_KEY has 5 characters.*openssl rand -hex 32"):
        seal_key({"MEMAUDIT_SEAL_KEY": "short"})
    assert seal_key({}) is None and seal_key({"MEMAUDIT_SEAL_KEY": KEY}) == KEY.encode()


def _stores(tmp_path, monkeypatch):
    """The install's store (with the seal key) and a forger's (same bucket, without the key)."""
    monkeypatch.delenv("MEMAUDIT_SEAL_KEY", raising=False)
    forger = LocalStore(tmp_path)
    monkeypatch.setenv("MEMAUDIT_SEAL_KEY", KEY)
    return LocalStore(tmp_path), forger


def test_the_install_reads_what_it_sealed(tmp_path, monkeypatch):
    store, _ = _stores(tmp_path, monkeypatch)
    store.put_bytes("fp/shadows/0/scores.npz", b"scores")
    store.write_complete("fp/shadows/0")
    assert "hmac" in json.loads((tmp_path / "fp/shadows/0" / MARKER).read_bytes())
    assert LocalStore(tmp_path).get_bytes("fp/shadows/0/scores.npz") == b"scores"  # a fresh store of the install
    assert not store.unsigned("fp/shadows/0") and store.damaged("fp/shadows/0") == []


def test_outputs_sealed_without_the_key_are_not_trusted(tmp_path, monkeypatch):
    store, forger = _stores(tmp_path, monkeypatch)
    forger.put_bytes("fp/shadows/0/scores.npz", b"forged")
    forger.write_complete("fp/shadows/0")
    assert forger.get_bytes("fp/shadows/0/scores.npz") == b"forged"  # control: a store without a key accepts it
    assert store.unsigned("fp/shadows/0") and store.damaged("fp/shadows/0") == ["fp/shadows/0/scores.npz"]
    with pytest.raises(CorruptedObject, match="not signed with this install's MEMAUDIT_SEAL_KEY"):
        store.get_bytes("fp/shadows/0/scores.npz")


def test_a_changed_file_with_a_rewritten_digest_or_a_moved_marker_is_refused(tmp_path, monkeypatch):
    store, _ = _stores(tmp_path, monkeypatch)
    for prefix in ("fp/a", "fp/b"):
        store.put_bytes(f"{prefix}/x.bin", b"honest")
        store.write_complete(prefix)
    (tmp_path / "fp/b" / MARKER).write_bytes((tmp_path / "fp/a" / MARKER).read_bytes())  # same files, signed for fp/a
    marker = json.loads((tmp_path / "fp/a" / MARKER).read_bytes())
    (tmp_path / "fp/a/x.bin").write_bytes(b"forged")  # the forger keeps the HMAC and fixes the digest
    marker["files"]["x.bin"] = {"sha256": file_digest(tmp_path / "fp/a/x.bin")[0], "size": 6}
    (tmp_path / "fp/a" / MARKER).write_text(json.dumps(marker))
    for prefix in ("fp/a", "fp/b"):
        with pytest.raises(CorruptedObject, match="not signed"):
            LocalStore(tmp_path).get_bytes(f"{prefix}/x.bin")


def test_a_forged_prefix_set_aside_is_sealed_again_by_the_install(tmp_path, monkeypatch):
    store, forger = _stores(tmp_path, monkeypatch)
    forger.put_bytes("fp/s/y.bin", b"forged")
    forger.write_complete("fp/s")
    store.move_aside("fp/s", "fp/quarantine/1/s")
    store.put_bytes("fp/s/y.bin", b"honest")
    store.write_complete("fp/s")
    assert store.get_bytes("fp/s/y.bin") == b"honest" and not store.unsigned("fp/s")
