"""The embedded object store: a local folder (the default when no S3 endpoint is configured)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from memaudit.errors import MemauditError
from memaudit.store.base import STORE_TAG, TMP_PREFIX, ObjectNotFound, ObjectStore
from memaudit.store.seal import CHUNK, HashingReader


class LocalStore(ObjectStore):
    """Objects as files under ``root_dir``; writes go to ``root_dir/.memaudit-tmp`` first, then ``os.replace``."""

    def __init__(self, root_dir: str | Path):
        super().__init__()
        self.root = Path(root_dir).expanduser().resolve()
        try:
            (self.root / TMP_PREFIX).mkdir(parents=True, exist_ok=True)
            tag = self.root / STORE_TAG
            if not tag.exists():
                tag.write_text("memaudit object store\n")
        except OSError as exc:
            raise MemauditError(
                f"cannot use {self.root} as the object store ({exc.strerror})",
                "pass a writable folder as the output directory, or set MEMAUDIT_S3_ENDPOINT",
            ) from None

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def uri(self, key: str = "") -> str:
        return (self.root / key).as_uri() if key else self.root.as_uri()

    def path(self, key: str) -> Path:
        """The local file behind ``key`` (for tools that need a path; prefer get_file for verified reads)."""
        return self.root / key

    def _raw_put(self, key: str, stream: HashingReader, size: int) -> None:
        final = self.root / key
        fd, tmp = tempfile.mkstemp(dir=self.root / TMP_PREFIX, prefix=final.name[:40] + ".")
        try:
            with os.fdopen(fd, "wb") as fh:
                while chunk := stream.read(CHUNK):
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _raw_open(self, key: str) -> BinaryIO:
        try:
            return (self.root / key).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None

    def _raw_exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def _raw_list(self, prefix: str) -> Iterable[str]:
        base = self.root / prefix if prefix else self.root
        for dirpath, dirnames, filenames in os.walk(base):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            if rel_dir == ".":
                dirnames[:] = [d for d in dirnames if d != TMP_PREFIX]
                filenames = [f for f in filenames if f != STORE_TAG]
            for name in filenames:
                yield name if rel_dir == "." else f"{rel_dir}/{name}"

    def _raw_delete(self, keys: list[str]) -> None:
        for key in keys:
            path = self.root / key
            path.unlink(missing_ok=True)
            parent = path.parent
            while parent != self.root and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
