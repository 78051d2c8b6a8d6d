"""Environment variables: set for the duration of a block; the user's cache folder."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

CACHE_ENV = "MEMAUDIT_CACHE_DIR"


@contextlib.contextmanager
def scoped_env(values: Mapping[str, str], *, force: bool = True) -> Iterator[None]:
    """Set ``values`` (with ``force=False``, only those not already set), then restore the previous state."""
    saved = {k: os.environ.get(k) for k in values}
    for key, value in values.items():
        if force or key not in os.environ:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def user_cache_dir() -> Path:
    """Where memaudit keeps what it builds once per machine: ``MEMAUDIT_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/memaudit``, else ``~/.cache/memaudit``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "memaudit"
