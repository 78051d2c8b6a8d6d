"""The fault-injection suite, counted: runs tests/faults and the interrupt tests, then prints (and writes to
benchmarks/results/faults.md and .json) one row per case: tried, survived, work lost.

    .venv/bin/python benchmarks/faults.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SUITE = ["tests/faults", "tests/pipelines/test_interrupts.py"]


def _run_suite(log: Path) -> tuple[int, float]:
    env = {**os.environ, "MEMAUDIT_FAULT_LOG": str(log)}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITE], cwd=ROOT, env=env)
    return done.returncode, time.monotonic() - start


def _table(rows: list[dict]) -> str:
    lines = ["| case | tried | survived | work lost |", "|---|---:|---:|---|"]
    lines += [f"| {r['case']} | {r['tried']} | {r['survived']} | {r['work_lost']} |" for r in rows]
    tried, survived = sum(r["tried"] for r in rows), sum(r["survived"] for r in rows)
    lines.append(f"| **all** | **{tried}** | **{survived}** | |")
    return "\n".join(lines)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "faults.jsonl"
        code, seconds = _run_suite(log)
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    table = _table(rows)
    print(table)
    print(f"\npytest exit code {code}; suite wall time {seconds:.0f} s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    header = f"Fault-injection suite (`.venv/bin/python benchmarks/faults.py`), suite wall time {seconds:.0f} s.\n\n"
    (RESULTS / "faults.md").write_text(header + table + "\n")
    (RESULTS / "faults.json").write_text(
        json.dumps({"exit_code": code, "wall_s": round(seconds), "cases": rows}, indent=1) + "\n"
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
