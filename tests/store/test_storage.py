"""Object stores (local folder and real S3 on SeaweedFS): atomic writes, COMPLETE markers, immutability, layout."""

import hashlib
import io
import json
import re
import socket
import time
import uuid

import pytest
from urllib3.exceptions import ProtocolError

from memaudit.errors import MemauditError
from memaudit.store import (
    LocalStore,
    RunLayout,
    RunStorage,
    S3Store,
    download_uri,
    store_for_uri,
    store_from_env,
)
from memaudit.store.base import TMP_PREFIX
from memaudit.store.layout import OUTPUTS_FORMAT, checkpoint_name, checkpoint_step

pytestmark = pytest.mark.integration


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    s3 = request.getfixturevalue("s3_server")
    return S3Store(s3.endpoint, f"t-{uuid.uuid4().hex[:12]}", s3.access_key, s3.secret_key)


def _temp_objects(store) -> list[str]:
    if isinstance(store, LocalStore):
        return [p.name for p in (store.root / TMP_PREFIX).iterdir()]
    return [o.object_name for o in store._client.list_objects(store.bucket, prefix=TMP_PREFIX + "/", recursive=True)]


def _write_behind_the_stores_back(store, key: str, data: bytes) -> None:
    """Simulate corruption, tampering or another tool: write an object without going through the store."""
    if isinstance(store, LocalStore):
        store.path(key).parent.mkdir(parents=True, exist_ok=True)
        store.path(key).write_bytes(data)
    else:
        store._client.put_object(store.bucket, key, io.BytesIO(data), len(data))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FailingStream(io.RawIOBase):
    """Yields ``good`` bytes, then fails like a broken disk or network."""

    def __init__(self, good: int):
        self.left = good

    def readable(self):
        return True

    def read(self, n=-1):
        if self.left <= 0:
            raise OSError("simulated failure mid-upload")
        n = self.left if n is None or n < 0 else min(n, self.left)
        self.left -= n
        return b"x" * n


# -------------------------------------------------------------------------------------------- round trips, listing


def test_round_trips_and_uris(store, tmp_path):
    assert store.put_bytes("fp/a.bin", b"\x00\x01payload") == store.uri("fp/a.bin")
    assert store.get_bytes("fp/a.bin", verify=False) == b"\x00\x01payload"
    src = tmp_path / "src.txt"
    src.write_bytes(b"file content" * 1000)
    store.put_file("fp/dir/file.txt", src)
    out = store.get_file("fp/dir/file.txt", tmp_path / "out" / "copy.txt", verify=False)
    assert out.read_bytes() == src.read_bytes()
    store.put_stream("fp/stream.bin", io.BytesIO(b"s" * 70_000))  # unknown size
    assert store.get_bytes("fp/stream.bin", verify=False) == b"s" * 70_000
    assert store.exists("fp/a.bin") and not store.exists("fp/none.bin")
    if isinstance(store, LocalStore):
        assert store.uri("fp/a.bin") == (store.root / "fp" / "a.bin").as_uri()
        assert store.uri("fp/a.bin").startswith("file:///")
    else:
        assert store.uri("fp/a.bin") == f"s3://{store.bucket}/fp/a.bin"
    with pytest.raises(MemauditError, match=r"fp/none\.bin not found"):
        store.get_bytes("fp/none.bin", verify=False)
    assert not (tmp_path / "out").joinpath("missing").exists()


def test_listing_is_folder_like_and_sorted(store):
    for key in ["a/b/2", "a/b/1", "a/bc/3", "a/x", "z"]:
        store.put_bytes(key, key.encode())
    assert store.list_keys("a/b") == ["a/b/1", "a/b/2"]
    assert store.list_keys("a/b/") == ["a/b/1", "a/b/2"]
    assert store.list_keys("a") == ["a/b/1", "a/b/2", "a/bc/3", "a/x"]
    assert store.list_keys() == ["a/b/1", "a/b/2", "a/bc/3", "a/x", "z"]
    assert store.list_keys("nothing") == []


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "a/./b", ".memaudit-tmp/x", ""])
def test_invalid_keys_are_refused(tmp_path, key):
    store = LocalStore(tmp_path / "store")
    with pytest.raises(MemauditError, match="object-store"):
        store.put_bytes(key, b"x")


# -------------------------------------------------------------------------------------------------- atomicity


def test_failed_upload_leaves_no_final_key_and_keeps_the_old_object(store):
    with pytest.raises(OSError, match="simulated"):
        store.put_stream("fp/big.bin", FailingStream(3 * 1024 * 1024), 6 * 1024 * 1024)
    assert not store.exists("fp/big.bin")
    assert store.list_keys() == []
    store.put_bytes("fp/keep.bin", b"version 1")
    with pytest.raises(OSError, match="simulated"):
        store.put_stream("fp/keep.bin", FailingStream(100), 200)
    assert store.get_bytes("fp/keep.bin", verify=False) == b"version 1"
    assert _temp_objects(store) == []


def test_s3_failure_in_the_final_copy_leaves_no_final_key(s3_server, monkeypatch):
    store = S3Store(s3_server.endpoint, f"t-{uuid.uuid4().hex[:12]}", s3_server.access_key, s3_server.secret_key)

    def broken_copy(*args, **kwargs):
        raise ProtocolError("Connection aborted.", ConnectionResetError("connection reset during copy"))

    monkeypatch.setattr(store._client, "copy_object", broken_copy)
    with pytest.raises(MemauditError, match="connection reset during copy"):
        store.put_bytes("fp/x.bin", b"data")
    monkeypatch.undo()
    assert not store.exists("fp/x.bin")
    assert _temp_objects(store) == []


# ------------------------------------------------------------------------------------------ COMPLETE and checksums


def test_complete_marker_lists_sha256_and_size(store):
    files = {"fp/agg/samples.parquet": b"rows" * 100, "fp/agg/sub/summary.json": b'{"auc": 0.9}'}
    store.put_bytes("fp/agg/samples.parquet", files["fp/agg/samples.parquet"])
    _write_behind_the_stores_back(store, "fp/agg/sub/summary.json", files["fp/agg/sub/summary.json"])  # no sha meta
    assert not store.is_complete("fp/agg") and not store.verify_complete("fp/agg")
    manifest = store.write_complete("fp/agg")
    expected = {k.removeprefix("fp/agg/"): {"sha256": _sha(v), "size": len(v)} for k, v in files.items()}
    assert manifest["files"] == expected and manifest["scope"] == "prefix"
    assert json.loads(store.get_bytes("fp/agg/COMPLETE", verify=False))["files"] == expected
    assert store.is_complete("fp/agg") and store.verify_complete("fp/agg")
    assert store.read_complete("fp/agg") == expected
    assert store.get_bytes("fp/agg/sub/summary.json") == b'{"auc": 0.9}'  # verified read
    assert store.is_sealed("fp/agg/samples.parquet") and not store.is_sealed("fp/agg/other")


def test_corrupted_object_is_detected_with_key_and_fix(store, tmp_path):
    store.put_bytes("fp/shadows/1/scores.npz", b"good scores")
    store.put_bytes("fp/shadows/1/ckpt-0/adapter/w.bin", b"weights")
    store.write_complete("fp/shadows/1")
    _write_behind_the_stores_back(store, "fp/shadows/1/scores.npz", b"bad scores!")  # same size, other bytes
    assert store.is_complete("fp/shadows/1") and not store.verify_complete("fp/shadows/1")
    with pytest.raises(MemauditError) as err:
        store.get_bytes("fp/shadows/1/scores.npz")
    message = str(err.value)
    assert store.uri("fp/shadows/1/scores.npz") in message and "corrupted" in message
    assert f"delete {store.uri('fp/shadows/1')} and re-run" in message and "\n" not in message
    with pytest.raises(MemauditError, match="corrupted"):
        store.get_file("fp/shadows/1/scores.npz", tmp_path / "scores.npz")
    assert not (tmp_path / "scores.npz").exists()  # a corrupted download never reaches its destination
    with pytest.raises(MemauditError, match="corrupted"):
        store.read_complete("fp/shadows/1")
    assert store.get_bytes("fp/shadows/1/ckpt-0/adapter/w.bin") == b"weights"  # the intact file still reads


def test_missing_listed_object_and_unlisted_object(store):
    store.put_bytes("fp/r/a", b"a")
    store.put_bytes("fp/r/b", b"b")
    store.write_complete("fp/r")
    store._raw_delete(["fp/r/b"])
    with pytest.raises(MemauditError, match=r"fp/r/b is missing"):
        store.read_complete("fp/r")
    store.put_bytes("fp/loose/x", b"x")
    with pytest.raises(MemauditError, match="not listed in any COMPLETE marker"):
        store.get_bytes("fp/loose/x")
    assert store.get_bytes("fp/loose/x", verify=False) == b"x"


def test_corrupted_marker_is_reported(store):
    store.put_bytes("fp/r/a", b"a")
    store.write_complete("fp/r")
    _write_behind_the_stores_back(store, "fp/r/COMPLETE", b"{not json")
    with pytest.raises(MemauditError, match=r"marker .*fp/r/COMPLETE is corrupted; fix: delete"):
        store.get_bytes("fp/r/a")


# -------------------------------------------------------------------------------------------------- immutability


def test_complete_prefix_is_immutable_until_deleted(store, tmp_path):
    store.put_bytes("fp/aggregate/e1/summary.json", b"v1")
    store.write_complete("fp/aggregate/e1")
    for attempt in (
        lambda: store.put_bytes("fp/aggregate/e1/summary.json", b"v2"),
        lambda: store.put_bytes("fp/aggregate/e1/new/file", b"new"),
        lambda: store.write_complete("fp/aggregate/e1"),
    ):
        with pytest.raises(MemauditError, match="complete"):
            attempt()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"f")
    with pytest.raises(MemauditError, match="never overwritten"):
        store.put_dir("fp/aggregate/e1/dir", tmp_path / "d")
    with pytest.raises(MemauditError, match="reserved"):
        store.put_bytes("fp/other/COMPLETE", b"{}")
    assert store.get_bytes("fp/aggregate/e1/summary.json") == b"v1"
    assert store.list_keys("fp/aggregate/e1") == ["fp/aggregate/e1/COMPLETE", "fp/aggregate/e1/summary.json"]
    store.put_bytes("fp/aggregate/e2/summary.json", b"other evaluation")  # a sibling prefix stays writable
    store.delete_prefix("fp/aggregate/e1")
    assert store.list_keys("fp/aggregate/e1") == []
    store.put_bytes("fp/aggregate/e1/summary.json", b"v2")
    assert store.get_bytes("fp/aggregate/e1/summary.json", verify=False) == b"v2"


def test_key_scoped_marker_seals_single_files_and_extends(store, tmp_path):
    run = RunStorage(store, "fp0")
    (tmp_path / "pool.parquet").write_bytes(b"pool")
    (tmp_path / "member.npy").write_bytes(b"member")
    run.put_sealed_file(run.layout.pool, tmp_path / "pool.parquet")
    with pytest.raises(MemauditError, match="never overwritten"):
        store.put_bytes(run.layout.pool, b"other pool")
    assert store.is_sealed(run.layout.pool) and not store.is_sealed(run.layout.member)
    run.put_sealed_file(run.layout.member, tmp_path / "member.npy")
    assert store.read_complete("fp0") == {
        "pool.parquet": {"sha256": _sha(b"pool"), "size": 4},
        "member.npy": {"sha256": _sha(b"member"), "size": 6},
    }
    store.put_bytes(run.layout.scores(0), b"scores")  # the fingerprint folder itself stays writable
    assert store.get_bytes(run.layout.member) == b"member"


# ---------------------------------------------------------------------------------------- directories, layout


def test_directory_round_trip(store, tmp_path):
    src = tmp_path / "adapter"
    (src / "nested").mkdir(parents=True)
    (src / "adapter_config.json").write_text('{"r": 8}')
    (src / "nested" / "weights.bin").write_bytes(bytes(range(256)) * 40)
    keys = store.put_dir("fp/base-model", src)
    assert keys == ["fp/base-model/adapter_config.json", "fp/base-model/nested/weights.bin"]
    store.write_complete("fp/base-model")
    paths = store.get_dir("fp/base-model", tmp_path / "back")
    assert sorted(p.relative_to(tmp_path / "back").as_posix() for p in paths) == [
        "adapter_config.json",
        "nested/weights.bin",
    ]  # markers are not copied out
    assert (tmp_path / "back" / "nested" / "weights.bin").read_bytes() == bytes(range(256)) * 40
    with pytest.raises(MemauditError, match="nothing stored"):
        store.get_dir("fp/absent", tmp_path / "none")


def test_a_listed_key_that_escapes_its_folder_is_refused_before_anything_is_written(store, tmp_path, monkeypatch):
    src = tmp_path / "adapter"
    (src / "a").mkdir(parents=True)
    (src / "a" / "weights.bin").write_bytes(b"w")
    store.put_dir("fp/model", src)
    listed = store.list_keys("fp/model")
    monkeypatch.setattr(store, "list_keys", lambda prefix: [*listed, "fp/model/../../outside"])  # a hostile listing
    with pytest.raises(MemauditError, match=re.escape("invalid object-store key 'fp/model/../../outside'")):
        store.get_dir("fp/model", tmp_path / "back", verify=False)
    assert not (tmp_path / "back").exists() and not (tmp_path / "outside").exists()


def test_layout_keys_follow_design_section_5():
    layout = RunLayout("0123abcd0123abcd")
    assert layout.pool == "0123abcd0123abcd/pool.parquet"
    assert layout.member == "0123abcd0123abcd/member.npy"
    assert layout.base_model == "0123abcd0123abcd/base-model"
    assert layout.adapter(7, 120) == "0123abcd0123abcd/shadows/7/ckpt-120/adapter"
    assert layout.scores(7) == "0123abcd0123abcd/shadows/7/scores.npz"
    assert layout.aggregate("ffff") == f"0123abcd0123abcd/aggregate-v{OUTPUTS_FORMAT}/ffff"
    assert layout.aggregate("ffff", "summary.json") == f"0123abcd0123abcd/aggregate-v{OUTPUTS_FORMAT}/ffff/summary.json"
    assert layout.report("ffff") == f"0123abcd0123abcd/report-v{OUTPUTS_FORMAT}/ffff"
    assert layout.report("ffff", "report.html") == f"0123abcd0123abcd/report-v{OUTPUTS_FORMAT}/ffff/report.html"
    assert layout.train_log(7) == "0123abcd0123abcd/shadows/7/train_log.json"
    assert layout.resume(7) == "0123abcd0123abcd/shadows/7/resume"
    assert checkpoint_name(120) == "ckpt-120" and checkpoint_step("ckpt-120") == 120
    assert checkpoint_step("ckpt-x") is None and checkpoint_step("adapter") is None
    for bad in (lambda: RunLayout("../x"), lambda: layout.shadow(-1), lambda: layout.checkpoint(0, True)):
        with pytest.raises(MemauditError, match="invalid"):
            bad()


def test_resumable_checkpoints_and_shadow_completion(store, tmp_path):
    run = RunStorage(store, "fp1")

    def adapter(step: int):
        folder = tmp_path / f"local-{step}"
        folder.mkdir(exist_ok=True)
        (folder / "adapter_model.bin").write_bytes(f"weights at {step}".encode())
        return folder

    run.upload_checkpoint(3, 0, adapter(0))
    run.upload_checkpoint(3, 10, adapter(10))
    store.put_bytes(run.layout.adapter(3, 20) + "/adapter_model.bin", b"half")  # killed before its marker
    store.put_bytes(run.layout.adapter(3, 20) + "/stale.bin", b"stale")
    assert run.stored_checkpoints(3) == [0, 10]
    assert run.stored_checkpoints(4) == []
    got = run.download_checkpoints(3, tmp_path / "dl")
    assert sorted(got) == [0, 10]
    assert (got[10] / "adapter_model.bin").read_bytes() == b"weights at 10"
    with pytest.raises(MemauditError, match=r"checkpoints \[20\] of shadow 3 are not complete"):
        run.download_checkpoints(3, tmp_path / "dl", steps=[10, 20])
    run.upload_checkpoint(3, 20, adapter(20))  # the resumed fine-tune replaces the leftovers
    assert store.list_keys(run.layout.adapter(3, 20)) == [run.layout.adapter(3, 20) + "/adapter_model.bin"]
    assert run.stored_checkpoints(3) == [0, 10, 20]
    with pytest.raises(MemauditError, match="complete"):
        run.upload_checkpoint(3, 10, adapter(10))
    assert not run.shadow_complete(3)
    with pytest.raises(MemauditError, match=r"scores\.npz is missing"):
        run.seal_shadow(3)
    store.put_bytes(run.layout.scores(3), b"npz")
    manifest = run.seal_shadow(3)
    assert sorted(manifest["files"]) == [
        "ckpt-0/COMPLETE",
        "ckpt-0/adapter/adapter_model.bin",
        "ckpt-10/COMPLETE",
        "ckpt-10/adapter/adapter_model.bin",
        "ckpt-20/COMPLETE",
        "ckpt-20/adapter/adapter_model.bin",
        "scores.npz",
    ]
    assert run.shadow_complete(3) and store.verify_complete(run.layout.shadow(3))
    with pytest.raises(MemauditError, match="complete"):
        store.put_bytes(run.layout.scores(3), b"rewritten")
    with pytest.raises(MemauditError, match=r"lies inside the complete outputs at .*shadows/3; fix: delete"):
        store.delete_prefix(run.layout.checkpoint(3, 0))
    assert store.delete_prefix(run.layout.shadow(3)) == 8 and run.stored_checkpoints(3) == []


def test_resume_state_is_kept_for_the_latest_checkpoint_and_dropped(store, tmp_path):
    run = RunStorage(store, "fp1")
    assert run.load_resume_state(2, tmp_path / "state.pt") is None
    for step in (5, 10):
        (tmp_path / f"s{step}.pt").write_bytes(f"state {step}".encode())
        run.save_resume_state(2, step, tmp_path / f"s{step}.pt")
    step, path = run.load_resume_state(2, tmp_path / "got.pt")
    assert step == 10 and path.read_bytes() == b"state 10"
    assert all(key.startswith(run.layout.resume(2) + "/") for key in store.list_keys(run.layout.shadow(2)))
    run.drop_resume_state(2)
    assert store.list_keys(run.layout.shadow(2)) == [] and run.load_resume_state(2, tmp_path / "x") is None
    run.drop_resume_state(2)  # nothing to drop: no error


# ------------------------------------------------------------------------------------------ URIs and environment


def test_store_for_uri_reads_what_a_task_wrote(store, tmp_path, monkeypatch, request):
    if isinstance(store, S3Store):
        s3 = request.getfixturevalue("s3_server")
        monkeypatch.setenv("MEMAUDIT_S3_ENDPOINT", s3.endpoint)
        monkeypatch.setenv("MEMAUDIT_S3_ACCESS_KEY", s3.access_key)
        monkeypatch.setenv("MEMAUDIT_S3_SECRET_KEY", s3.secret_key)
    store.put_bytes("fp/report/e/report.html", b"<html>")
    store.put_bytes("fp/report/e/fig/roc.png", b"png")
    store.write_complete("fp/report/e")
    other, key = store_for_uri(store.uri("fp/report/e/report.html"))
    assert type(other) is type(store) and key == "fp/report/e/report.html"
    assert other.get_bytes(key) == b"<html>"
    assert download_uri(store.uri("fp/report/e/fig/roc.png"), tmp_path / "roc.png").read_bytes() == b"png"
    folder = download_uri(store.uri("fp/report/e"), tmp_path / "report")
    assert (folder / "fig" / "roc.png").read_bytes() == b"png" and (folder / "report.html").exists()


def test_store_for_uri_rejects_foreign_uris(tmp_path, monkeypatch):
    monkeypatch.delenv("MEMAUDIT_S3_ENDPOINT", raising=False)
    (tmp_path / "plain.txt").write_text("x")
    with pytest.raises(MemauditError, match="not inside a memaudit store"):
        store_for_uri((tmp_path / "plain.txt").as_uri())
    with pytest.raises(MemauditError, match="MEMAUDIT_S3_ENDPOINT is not set"):
        store_for_uri("s3://bucket/key")
    with pytest.raises(MemauditError, match="unsupported URI scheme 'gs'"):
        store_for_uri("gs://bucket/key")


def test_store_from_env(s3_server, tmp_path):
    assert isinstance(store_from_env(tmp_path / "local", env={}), LocalStore)
    env = {
        "MEMAUDIT_S3_ENDPOINT": s3_server.endpoint,  # http://host:port form
        "AWS_ACCESS_KEY_ID": s3_server.access_key,  # fallback credentials
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "MEMAUDIT_S3_BUCKET": "env-bucket",
    }
    store = store_from_env(tmp_path / "local", env=env)
    assert isinstance(store, S3Store) and store.bucket == "env-bucket" and not store.secure
    assert store.uri("k") == "s3://env-bucket/k"
    bare = store_from_env(tmp_path, env={**env, "MEMAUDIT_S3_ENDPOINT": s3_server.endpoint.removeprefix("http://")})
    assert bare.endpoint == s3_server.endpoint
    del env["MEMAUDIT_S3_BUCKET"]
    assert store_from_env(tmp_path, env=env).bucket == "memaudit"  # created when missing
    with pytest.raises(MemauditError, match="MEMAUDIT_S3_SECURE='maybe' is not a boolean"):
        store_from_env(tmp_path, env={**env, "MEMAUDIT_S3_SECURE": "maybe"})
    with pytest.raises(MemauditError, match=r"no S3 credentials .*; fix: set MEMAUDIT_S3_ACCESS_KEY"):
        store_from_env(tmp_path, env={"MEMAUDIT_S3_ENDPOINT": s3_server.endpoint})


# ----------------------------------------------------------------------------------------------- failures


def _assert_one_line_without(err: MemauditError, secret: str) -> str:
    message = str(err)
    assert "\n" not in message and secret not in message and "; fix: " in message
    return message


def test_unreachable_endpoint_fails_fast_in_one_line():
    with socket.socket() as sock:  # a port that was free a moment ago: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(MemauditError) as err:
        S3Store(f"http://127.0.0.1:{port}", "memaudit", "key", "s3cr3t-value")
    assert time.monotonic() - start < 3
    message = _assert_one_line_without(err.value, "s3cr3t-value")
    assert f"cannot connect to S3 endpoint http://127.0.0.1:{port}" in message and "MEMAUDIT_S3_ENDPOINT" in message


def test_silent_endpoint_times_out_within_seconds():
    server = socket.socket()  # accepts TCP connections (kernel backlog) but never answers
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        start = time.monotonic()
        with pytest.raises(MemauditError) as err:
            S3Store(f"127.0.0.1:{server.getsockname()[1]}", "memaudit", "key", "s3cr3t-value")
        elapsed = time.monotonic() - start
        assert elapsed < 8, elapsed
        assert "timed out" in _assert_one_line_without(err.value, "s3cr3t-value")
    finally:
        server.close()


def test_bad_credentials_are_named_without_leaking_them(s3_server):
    with pytest.raises(MemauditError, match="invalid S3 bucket name 'B'"):
        S3Store(s3_server.endpoint, "B", s3_server.access_key, s3_server.secret_key)
    host = s3_server.endpoint.removeprefix("http://")
    with pytest.raises(MemauditError, match=rf"cannot connect to S3 endpoint https://{host} .*MEMAUDIT_S3_SECURE"):
        S3Store(host, s3_server.bucket, s3_server.access_key, s3_server.secret_key, secure=True)  # TLS to plain HTTP
    with pytest.raises(MemauditError) as err:
        S3Store(s3_server.endpoint, s3_server.bucket, s3_server.access_key, "wrong-secret-123")
    message = _assert_one_line_without(err.value, "wrong-secret-123")
    assert "rejected the credentials" in message and s3_server.endpoint in message
    good = S3Store(s3_server.endpoint, s3_server.bucket, s3_server.access_key, s3_server.secret_key)
    assert s3_server.secret_key not in repr(good) and s3_server.secret_key not in str(vars(good))
