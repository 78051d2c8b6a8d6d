"""Environment variables set for the duration of a block."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping


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
