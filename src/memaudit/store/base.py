"""The object-store interface of :class:`~memaudit.store.local.LocalStore` and :class:`~memaudit.store.s3.S3Store`.

Keys are ``/``-separated relative paths (``<fingerprint>/shadows/3/scores.npz``). Three rules hold for every store:

* **Atomic writes**: an object is either absent or complete. Subclasses upload to a temporary name and move it into
  place (``os.replace`` locally; a server-side copy on S3), so an interrupted upload leaves no final key.
* **COMPLETE markers** (format in :mod:`memaudit.store.seal`): :meth:`ObjectStore.write_complete` writes
  ``<prefix>/COMPLETE`` last, listing the sha256 and size of every file it covers. Readers (``verify=True``, the
  default) trust only files listed in a marker whose checksum matches what they downloaded. With the install's seal
  key in the environment, markers are signed and an unsigned or foreign one is treated as damage (set aside, redone).
* **Immutability**: nothing under a complete prefix, and no file listed in a marker, can be written again. To
  recompute, delete the prefix explicitly (:meth:`ObjectStore.delete_prefix`).

A marker has one of two scopes. ``prefix`` (``write_complete(prefix)``) covers every file under the prefix and seals
the whole prefix. ``keys`` (``write_complete(prefix, keys)``) covers only the listed files and can be extended by later
calls; it lets single files that sit next to other outputs (``<fp>/pool.parquet``, ``<fp>/member.npy``) be sealed
without freezing the folder that holds them.
"""

from __future__ import annotations

import abc
import io
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from tqdm import tqdm

from memaudit.errors import MemauditError
from memaudit.store.seal import (
    CHUNK,
    MARKER,
    SEAL_KEY_ENV,
    HashingReader,
    authentic,
    distrusted,
    marker_bytes,
    mismatches,
    parse_marker,
    seal_key,
    stream_digest,
)

TMP_PREFIX = ".memaudit-tmp"  # temporary objects of in-flight writes; never listed
STORE_TAG = ".memaudit-store"  # file in a LocalStore root; lets store_for_uri find the root of a file:// URI
_INTERNAL = (TMP_PREFIX, STORE_TAG)


class ObjectNotFound(Exception):
    """Raised by a subclass's raw read when the key does not exist (turned into MemauditError by the base)."""


class CorruptedObject(MemauditError):
    """A file a COMPLETE marker lists is missing or differs from it: ``key``, under the marker of ``prefix``."""

    def __init__(self, problem: str, fix: str, key: str, prefix: str):
        super().__init__(problem, fix)
        self.key, self.prefix = key, prefix


def check_key(key: str, *, what: str = "key") -> str:
    """Validate a store key: relative, ``/``-separated, no empty, ``.`` or ``..`` parts, no reserved names."""
    if not isinstance(key, str) or not key:
        raise MemauditError(f"empty object-store {what}", "pass a relative path such as 'fp/pool.parquet'")
    parts = key.split("/")
    bad = (
        key.startswith("/")
        or "\\" in key
        or any(part in ("", ".", "..") for part in parts)
        or any(ord(ch) < 32 for ch in key)
        or parts[0] in _INTERNAL
    )
    if bad:
        raise MemauditError(
            f"invalid object-store {what} {key!r}",
            "use a relative '/'-separated path without empty, '.', '..' or reserved parts",
        )
    return key


def check_prefix(prefix: str) -> str:
    """A prefix without its trailing slash; '' is the store root."""
    prefix = prefix.rstrip("/")
    return check_key(prefix, what="prefix") if prefix else ""


def _under(prefix: str) -> str:
    return f"{prefix}/" if prefix else ""


def _ancestors(key: str) -> list[str]:
    """Non-root prefixes containing ``key``, nearest first: 'a/b/c' -> ['a/b', 'a']."""
    parts = key.split("/")
    return ["/".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


class ObjectStore(abc.ABC):
    """Atomic, checksummed object storage. Subclasses implement the ``_raw_*`` methods and :meth:`uri`."""

    def __init__(self) -> None:
        self._sealed: dict[str, dict[str, Any]] = {}  # prefix-scope markers seen (they never change)
        self._key = seal_key()  # the install's seal key: markers are signed, unsigned ones distrusted

    # ------------------------------------------------------------------------------------- subclass interface

    @abc.abstractmethod
    def uri(self, key: str = "") -> str:
        """The URI of a key or prefix (``file:///…`` or ``s3://bucket/…``)."""

    @abc.abstractmethod
    def _raw_put(self, key: str, stream: HashingReader, size: int) -> None:
        """Store ``stream`` (``size`` bytes, -1 if unknown) under ``key`` atomically (temp name, then move)."""

    @abc.abstractmethod
    def _raw_open(self, key: str) -> BinaryIO:
        """A readable stream of the object; raises :class:`ObjectNotFound`. The caller closes it."""

    @abc.abstractmethod
    def _raw_exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def _raw_list(self, prefix: str) -> Iterable[str]:
        """Every key starting with ``prefix`` (which is '' or ends with '/'), temporary objects excluded."""

    @abc.abstractmethod
    def _raw_delete(self, keys: list[str]) -> None: ...

    def _stored_digest(self, key: str) -> tuple[str, int] | None:
        """(sha256, size) recorded when the object was written, if the backend keeps it; None otherwise."""
        return None

    # ----------------------------------------------------------------------------------------------- writes

    def put_bytes(self, key: str, data: bytes) -> str:
        """Store ``data`` under ``key``; returns the key's URI."""
        return self.put_stream(key, io.BytesIO(data), len(data))

    def put_file(self, key: str, path: str | Path) -> str:
        """Upload a local file; returns the key's URI."""
        path = Path(path)
        if not path.is_file():
            raise MemauditError(f"cannot upload {path}: not a file", "pass an existing file")
        with path.open("rb") as fh:
            return self.put_stream(key, fh, path.stat().st_size)

    def put_stream(self, key: str, stream: BinaryIO, size: int = -1) -> str:
        """Upload from a readable binary stream (``size`` = -1 when unknown); atomic; returns the key's URI."""
        check_key(key)
        self._check_writable([key])
        self._raw_put(key, HashingReader(stream), size)
        return self.uri(key)

    def put_dir(self, prefix: str, local_dir: str | Path) -> list[str]:
        """Upload every file under ``local_dir`` to ``prefix/<relative path>``; returns the keys written."""
        prefix, local_dir = check_prefix(prefix), Path(local_dir)
        if not local_dir.is_dir():
            raise MemauditError(f"cannot upload {local_dir}: not a directory", "pass an existing directory")
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        keys = [_under(prefix) + p.relative_to(local_dir).as_posix() for p in files]
        for key in keys:
            check_key(key)
        self._check_writable(keys)
        for path, key in tqdm(list(zip(files, keys, strict=True)), desc=f"upload {prefix}", unit="file", disable=None):
            with path.open("rb") as fh:
                self._raw_put(key, HashingReader(fh), path.stat().st_size)
        return keys

    def delete_prefix(self, prefix: str) -> int:
        """Delete everything under ``prefix`` (its marker first, so a half-deleted prefix is never 'complete');
        returns the number of objects deleted. Refused inside a larger complete prefix (delete that one instead).
        """
        prefix = check_prefix(prefix)
        if not prefix:
            raise MemauditError("refusing to delete the whole store", "delete a fingerprint or a narrower prefix")
        for outer, manifest in self._markers_above([prefix]):
            if manifest["scope"] == "prefix":
                raise MemauditError(
                    f"{self.uri(prefix)} lies inside the complete outputs at {self.uri(outer)}",
                    f"delete {self.uri(outer)} instead",
                )
        keys = self.list_keys(prefix)
        marker = f"{prefix}/{MARKER}"
        if marker in keys:
            keys.remove(marker)
            keys.insert(0, marker)
        self._raw_delete(keys)  # in order: the marker first
        self._forget_markers(prefix)
        return len(keys)

    def _forget_markers(self, prefix: str) -> None:
        """Drop the cached markers at or under ``prefix`` (they are being deleted or moved)."""
        for sealed in [p for p in self._sealed if p == prefix or p.startswith(prefix + "/")]:
            del self._sealed[sealed]

    # ------------------------------------------------------------------------------------------------ reads

    def exists(self, key: str) -> bool:
        return self._raw_exists(check_key(key))

    def list_keys(self, prefix: str = "") -> list[str]:
        """Sorted keys under ``prefix`` (a folder-like prefix: 'a/b' lists 'a/b/…', not 'a/bc')."""
        return sorted(self._raw_list(_under(check_prefix(prefix))))

    def get_bytes(self, key: str, *, verify: bool = True) -> bytes:
        """The object's content; with ``verify`` it must be listed in a COMPLETE marker with a matching sha256."""
        buffer = io.BytesIO()
        self._download(key, buffer, verify=verify)
        return buffer.getvalue()

    def get_file(self, key: str, path: str | Path, *, verify: bool = True) -> Path:
        """Download to ``path`` atomically (temp file, then os.replace); verified as in :meth:`get_bytes`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with tmp.open("wb") as fh:
                self._download(key, fh, verify=verify)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def get_dir(self, prefix: str, local_dir: str | Path, *, verify: bool = True) -> list[Path]:
        """Download every file under ``prefix`` (markers excluded) into ``local_dir``; returns the local paths."""
        prefix, local_dir = check_prefix(prefix), Path(local_dir)
        keys = [check_key(k) for k in self.list_keys(prefix) if k.rsplit("/", 1)[-1] != MARKER]  # all, before any write
        if not keys:
            raise MemauditError(f"nothing stored under {self.uri(prefix)}", "run the task that writes it first")
        manifest = self._load_marker(prefix) if verify else None
        absent = sorted({f"{prefix}/{rel}" for rel in manifest["files"]} - set(keys)) if manifest else []
        if absent:
            raise self._corrupted(absent[0], prefix, missing=True)
        n = len(_under(prefix))
        return [
            self.get_file(key, local_dir / key[n:], verify=verify)
            for key in tqdm(keys, desc=f"download {prefix}", unit="file", disable=None)
        ]

    def _download(self, key: str, sink: BinaryIO, *, verify: bool) -> None:
        check_key(key)
        expected = self._listed_entry(key) if verify else None
        try:
            stream = self._raw_open(key)
        except ObjectNotFound:
            if expected:  # a marker lists it: damage, not a task that has not run yet
                raise self._corrupted(key, expected["prefix"], missing=True) from None
            raise MemauditError(f"{self.uri(key)} not found", "run the task that writes it first") from None
        try:
            reader = HashingReader(stream)
            while chunk := reader.read(CHUNK):
                sink.write(chunk)
        finally:
            stream.close()
        if expected and (reader.hexdigest(), reader.size) != (expected["sha256"], expected["size"]):
            raise self._corrupted(key, expected["prefix"])

    # ------------------------------------------------------------------------------------------------ markers

    def write_complete(self, prefix: str, keys: list[str] | None = None) -> dict[str, Any]:
        """Write ``<prefix>/COMPLETE`` listing sha256 and size of every file under ``prefix`` (scope 'prefix',
        sealing it), or only of ``keys`` (full keys under ``prefix``; scope 'keys', extendable). Returns the manifest.
        """
        prefix = check_prefix(prefix)
        if not prefix:
            raise MemauditError("a COMPLETE marker needs a non-empty prefix", "mark a fingerprint or a sub-folder")
        existing = self._load_marker(prefix)
        if existing is not None and (keys is None or existing["scope"] == "prefix"):
            raise MemauditError(
                f"{self.uri(prefix)} is already complete",
                "skip the task whose outputs are complete, or delete the prefix to recompute it",
            )
        all_keys = [k for k in self.list_keys(prefix) if k != f"{prefix}/{MARKER}"]
        if keys is None:
            chosen = all_keys
        else:
            chosen = [check_key(k) for k in keys]
            outside = [k for k in chosen if not k.startswith(prefix + "/")]
            missing = sorted(set(chosen) - set(all_keys))
            if outside or missing:
                raise MemauditError(
                    f"cannot mark {(outside or missing)[0]!r} complete under {self.uri(prefix)}: "
                    + ("not under that prefix" if outside else "no such object"),
                    "upload every listed file under the prefix before writing its COMPLETE marker",
                )
        if not chosen:
            raise MemauditError(f"nothing to mark complete under {self.uri(prefix)}", "upload the outputs first")
        files = {rel: (e["sha256"], e["size"]) for rel, e in existing["files"].items()} if existing else {}
        for key in chosen:
            files[key[len(prefix) + 1 :]] = self._stored_digest(key) or self._digest(key)
        data = marker_bytes(files, "prefix" if keys is None else "keys", prefix=prefix, key=self._key)
        self._raw_put(f"{prefix}/{MARKER}", HashingReader(io.BytesIO(data)), len(data))
        return parse_marker(data)

    def is_complete(self, prefix: str) -> bool:
        """Whether ``<prefix>/COMPLETE`` exists (cheap; checksums are checked on read or by verify_complete)."""
        return self._raw_exists(f"{check_prefix(prefix)}/{MARKER}")

    def read_complete(self, prefix: str) -> dict[str, dict[str, Any]]:
        """The verified manifest {relative key: {sha256, size}}: downloads every listed file and checks it.

        Raises MemauditError when the marker is missing or any file is missing or corrupted.
        """
        prefix = check_prefix(prefix)
        manifest = self._load_marker(prefix)
        if manifest is None:
            raise MemauditError(
                f"{self.uri(prefix)} is not complete (no {MARKER} marker)", "run the task that writes it"
            )
        bad = self.damaged(prefix)
        if bad:
            raise self._corrupted(bad[0], prefix, missing=not self._raw_exists(bad[0]))
        return manifest["files"]

    def is_sealed(self, key: str) -> bool:
        """Whether a COMPLETE marker lists ``key`` (its content is checked when it is read)."""
        try:
            self._listed_entry(check_key(key))
        except MemauditError:
            return False
        return True

    def verify_complete(self, prefix: str) -> bool:
        """True when the marker exists and every listed file is present with a matching sha256 and size."""
        try:
            self.read_complete(prefix)
        except MemauditError:
            return False
        return True

    # -------------------------------------------------------------------------------------------- internals

    def _digest(self, key: str, *, missing_ok: bool = False) -> tuple[str, int] | None:
        """sha256 and size of the stored object (None when absent and ``missing_ok``)."""
        try:
            stream = self._raw_open(key)
        except ObjectNotFound:
            if missing_ok:
                return None
            raise
        try:
            return stream_digest(stream)
        finally:
            stream.close()

    def _load_marker(self, prefix: str) -> dict[str, Any] | None:
        if prefix in self._sealed:
            return self._sealed[prefix]
        key = f"{prefix}/{MARKER}"
        try:
            stream = self._raw_open(key)
        except ObjectNotFound:
            return None
        try:
            manifest = parse_marker(stream.read())
        except ValueError:
            raise MemauditError(
                f"marker {self.uri(key)} is corrupted",
                f"delete {self.uri(prefix)} and re-run the task that wrote it",
            ) from None
        finally:
            stream.close()
        if self._key is not None and not authentic(manifest, prefix, self._key):
            manifest = distrusted(manifest)  # written without this install's key: nothing it lists is trusted
        if manifest["scope"] == "prefix":
            self._sealed[prefix] = manifest
        return manifest

    def unsigned(self, prefix: str) -> bool:
        """Whether this store holds a seal key and the marker of ``prefix`` is not signed with it."""
        manifest = self._load_marker(check_prefix(prefix))
        return bool(manifest and manifest.get("unsigned"))

    def _markers_above(self, keys: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        for prefix in sorted({p for key in keys for p in _ancestors(key)}):
            manifest = self._load_marker(prefix)
            if manifest is not None:
                yield prefix, manifest

    def _check_writable(self, keys: list[str]) -> None:
        for key in keys:
            if key.rsplit("/", 1)[-1] == MARKER:
                raise MemauditError(f"{key!r} is a reserved name", "write COMPLETE markers with write_complete()")
        for prefix, manifest in self._markers_above(keys):
            for key in keys:
                if not key.startswith(prefix + "/"):
                    continue
                if manifest["scope"] == "prefix" or key[len(prefix) + 1 :] in manifest["files"]:
                    raise MemauditError(
                        f"{self.uri(key)} is part of the complete outputs at {self.uri(prefix)} and is never "
                        "overwritten",
                        "skip the task whose outputs are complete, or delete that prefix to recompute it",
                    )

    def _listed_entry(self, key: str) -> dict[str, Any]:
        """The marker entry covering ``key`` (nearest marker first), with its prefix; raises if none lists it."""
        for prefix in _ancestors(key):
            manifest = self._load_marker(prefix)
            entry = manifest and manifest["files"].get(key[len(prefix) + 1 :])
            if entry:
                return {**entry, "prefix": prefix}
        raise MemauditError(
            f"{self.uri(key)} is not listed in any {MARKER} marker, so it may be partial",
            "re-run the task that writes it (read it with verify=False only if you know it is whole)",
        )

    def _corrupted(self, key: str, prefix: str, *, missing: bool = False) -> CorruptedObject:
        what = "is missing" if missing else "does not match the sha256/size in its COMPLETE marker (corrupted)"
        if self.unsigned(prefix):
            what = f"is listed by a COMPLETE marker not signed with this install's {SEAL_KEY_ENV} (forged or foreign)"
        return CorruptedObject(
            f"{self.uri(key)} {what}", f"delete {self.uri(prefix)} and re-run the task that wrote it", key, prefix
        )

    # ------------------------------------------------------------------------------------------------ damage

    def damaged(self, prefix: str) -> list[str]:
        """The keys the COMPLETE marker of ``prefix`` lists that are missing or differ from it (each one read and
        hashed); [] when all are intact."""
        prefix = check_prefix(prefix)
        manifest = self._load_marker(prefix)
        if manifest is None:
            raise MemauditError(
                f"{self.uri(prefix)} is not complete (no {MARKER} marker)", "run the task that writes it"
            )
        bad = mismatches(manifest, lambda rel: self._digest(f"{prefix}/{rel}", missing_ok=True))
        return [f"{prefix}/{rel}" for rel in bad]

    def move_aside(self, prefix: str, dest: str, keys: list[str] | None = None) -> list[str]:
        """Move what a damaged ``prefix`` holds to ``dest`` (never deleting it): ``keys`` (default: every file under
        the prefix) and, for a prefix-scope marker, the marker first, so the prefix is never complete half-moved;
        from a key-scope marker only the entries of ``keys`` leave. Returns the keys written under ``dest``."""
        prefix, dest = check_prefix(prefix), check_prefix(dest)
        manifest = self._load_marker(prefix)
        self._forget_markers(prefix)
        marker = f"{prefix}/{MARKER}"
        if manifest is not None and manifest["scope"] == "keys" and keys is not None:
            files = manifest["files"].items()
            kept = {rel: (e["sha256"], e["size"]) for rel, e in files if f"{prefix}/{rel}" not in keys}
            data = marker_bytes(kept, "keys", prefix=prefix, key=self._key)
            self._raw_put(marker, HashingReader(io.BytesIO(data)), len(data))
            moving = list(keys)
        else:  # the marker first; then the given keys, or everything under the prefix
            moving = [marker, *(keys if keys is not None else (k for k in self.list_keys(prefix) if k != marker))]
        return [self._move(key, f"{dest}/{key[len(prefix) + 1 :]}") for key in moving if self._raw_exists(key)]

    def _move(self, key: str, target: str) -> str:
        stream = self._raw_open(key)
        try:
            self._raw_put(target, HashingReader(stream), -1)
        finally:
            stream.close()
        self._raw_delete([key])
        return target
