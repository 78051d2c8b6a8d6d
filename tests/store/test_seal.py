"""The COMPLETE seal: one format for object-store prefixes and local folders, one writer, one verifier."""

import json

import pytest

from memaudit.store import LocalStore
from memaudit.store.seal import (
    MARKER,
    MARKER_FORMAT,
    file_digest,
    folder_mismatches,
    marker_bytes,
    mismatches,
    parse_marker,
    seal_folder,
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
