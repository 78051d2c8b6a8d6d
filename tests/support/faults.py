"""Counting the fault-injection suite: each case records what was tried, what survived and the work lost.

``benchmarks/faults.py`` runs the suite with ``MEMAUDIT_FAULT_LOG`` set and prints the table from these records.
"""

import json
import os
from pathlib import Path

LOG_ENV = "MEMAUDIT_FAULT_LOG"


def record(case: str, tried: int, survived: int, lost: str = "none") -> None:
    """Append one case's counts to the fault log (a no-op when the suite runs without it)."""
    path = os.environ.get(LOG_ENV)
    if path:
        line = json.dumps({"case": case, "tried": tried, "survived": survived, "work_lost": lost})
        with Path(path).open("a") as fh:
            fh.write(line + "\n")
