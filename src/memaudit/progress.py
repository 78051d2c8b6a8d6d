"""Progress events from pipeline tasks to whoever watches the run (``memaudit run`` draws bars from them).

A task appends one JSON line per event to the file named by ``MEMAUDIT_PROGRESS_FILE`` (nothing happens when it
is unset, e.g. on a cluster where the KFP UI shows progress). Lines are short and written with O_APPEND, so
concurrent tasks do not interleave.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

PROGRESS_ENV = "MEMAUDIT_PROGRESS_FILE"


def emit(stage: str, event: str, *, shadow: int | None = None, **info: Any) -> None:
    """Record that ``stage`` (of ``shadow``) reached ``event`` (start, done, skipped, error, ...)."""
    path = os.environ.get(PROGRESS_ENV)
    if not path:
        return
    record = {"t": round(time.time(), 3), "pid": os.getpid(), "stage": stage, "event": event, "shadow": shadow, **info}
    line = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_events(path: str | Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Events appended since byte ``offset``; returns them and the new offset (partial lines are left)."""
    path = Path(path)
    if not path.is_file():
        return [], offset
    with path.open("rb") as fh:
        fh.seek(offset)
        data = fh.read()
    end = data.rfind(b"\n") + 1
    events = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
    return events, offset + end
