"""The COMPLETE seal: one marker format, one writer and one verifier for object-store prefixes and local folders.

A marker ``<prefix>/COMPLETE`` is written last and lists the sha256 and size of the files it covers::

    {"format": "memaudit-complete/1", "scope": "prefix" | "keys", "files": {"<relative key>": {"sha256", "size"}}}

Scope ``prefix`` covers every file under the prefix and seals it; scope ``keys`` covers only the listed files (it
can be extended). A reader trusts a file only when a marker lists it with the sha256 and size it reads.

With an install's seal key (``MEMAUDIT_SEAL_KEY``, from a Secret), a marker also carries ``"hmac"``: HMAC-SHA256
over its prefix (which starts with the run's fingerprint), scope and entries. A store holding the key trusts nothing
a marker lists unless that HMAC checks, so whoever can write the bucket but lacks the key cannot forge outputs that
another audit reuses, nor move a marker to another prefix.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from memaudit.errors import MemauditError
from memaudit.store.atomic import write_bytes

MARKER = "COMPLETE"
MARKER_FORMAT = "memaudit-complete/1"
SCOPES = ("prefix", "keys")
CHUNK = 8 * 1024 * 1024
SEAL_KEY_ENV = "MEMAUDIT_SEAL_KEY"
MIN_SEAL_KEY_CHARS = 32

Digest = tuple[str, int]  # (sha256 hex, size in bytes)


class HashingReader(io.RawIOBase):
    """Wraps a binary stream; computes sha256 and size of everything read through it."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._sha = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._sha.update(data)
        self.size += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def stream_digest(stream: BinaryIO) -> Digest:
    """sha256 and size of everything left in ``stream``."""
    reader = HashingReader(stream)
    while reader.read(CHUNK):
        pass
    return reader.hexdigest(), reader.size


def file_digest(path: str | Path) -> Digest:
    with open(path, "rb") as fh:
        return stream_digest(fh)


def seal_key(env: Mapping[str, str] | None = None) -> bytes | None:
    """The install's seal key from ``MEMAUDIT_SEAL_KEY`` (None when unset); a short key is refused."""
    raw = (os.environ if env is None else env).get(SEAL_KEY_ENV, "")
    if raw and len(raw) < MIN_SEAL_KEY_CHARS:
        raise MemauditError(
            f"{SEAL_KEY_ENV} has {len(raw)} characters, fewer than {MIN_SEAL_KEY_CHARS}",
            "generate one with `openssl rand -hex 32` and keep it in the Secret named by run.seal_secret",
        )
    return raw.encode() if raw else None


def _mac(key: bytes, prefix: str, scope: str, entries: Mapping[str, Any]) -> str:
    signed = {"prefix": prefix, "scope": scope, "files": entries}
    return hmac.new(key, json.dumps(signed, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def marker_bytes(files: Mapping[str, Digest], scope: str, *, prefix: str = "", key: bytes | None = None) -> bytes:
    """The marker listing ``files`` {relative key: (sha256, size)}, signed for ``prefix`` when a seal ``key`` is
    given: the only writer of the format."""
    if scope not in SCOPES:
        raise ValueError(f"unknown marker scope {scope!r}")
    entries = {rel: {"sha256": sha, "size": size} for rel, (sha, size) in files.items()}
    marker: dict[str, Any] = {"format": MARKER_FORMAT, "scope": scope, "files": entries}
    if key is not None:
        marker["hmac"] = _mac(key, prefix, scope, entries)
    return json.dumps(marker, indent=1, sort_keys=True).encode()


def authentic(manifest: Mapping[str, Any], prefix: str, key: bytes) -> bool:
    """Whether the marker of ``prefix`` carries a valid HMAC under ``key`` (a parsed manifest)."""
    expected = _mac(key, prefix, manifest["scope"], manifest["files"])
    return hmac.compare_digest(str(manifest.get("hmac", "")), expected)


def distrusted(manifest: dict[str, Any]) -> dict[str, Any]:
    """A manifest whose signature failed: flagged ``unsigned``, and no digest it lists can match a file."""
    files = {rel: {"sha256": "", "size": -1} for rel in manifest["files"]}
    return {**manifest, "files": files, "unsigned": True}


def parse_marker(data: bytes) -> dict[str, Any]:
    """A marker's manifest {format, scope, files: {rel: {sha256, size}}}; raises ValueError when malformed."""
    try:
        manifest = json.loads(data)
        if manifest.get("format") != MARKER_FORMAT or manifest.get("scope") not in SCOPES:
            raise ValueError(f"not a {MARKER_FORMAT} marker")
        for entry in manifest["files"].values():
            entry["sha256"], entry["size"] = str(entry["sha256"]), int(entry["size"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed marker ({type(exc).__name__})") from None
    return manifest


def mismatches(manifest: Mapping[str, Any], digest_of: Callable[[str], Digest | None]) -> list[str]:
    """The listed files whose digest (``digest_of(rel)``, None when absent) differs from the marker's: the verifier."""
    bad = []
    for rel, entry in manifest["files"].items():
        if digest_of(rel) != (entry["sha256"], entry["size"]):
            bad.append(rel)
    return bad


def seal_folder(folder: str | Path, files: list[Path] | None = None) -> dict[str, Any]:
    """Write ``folder/COMPLETE`` over ``files`` (default: every file under the folder, scope ``prefix``)."""
    folder = Path(folder)
    chosen = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER) if files is None else files
    digests = {p.relative_to(folder).as_posix(): file_digest(p) for p in chosen}
    data = marker_bytes(digests, "prefix" if files is None else "keys")
    write_bytes(folder / MARKER, data)
    return parse_marker(data)


def folder_mismatches(folder: str | Path) -> list[str]:
    """Files of a sealed local folder that are missing or differ from its marker (all of them when unsealed)."""
    folder = Path(folder)
    try:
        manifest = parse_marker((folder / MARKER).read_bytes())
    except (OSError, ValueError):
        return [MARKER]

    def digest_of(rel: str) -> Digest | None:
        path = folder / rel
        return file_digest(path) if path.is_file() else None

    return mismatches(manifest, digest_of)
