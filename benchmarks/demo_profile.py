"""Profile `memaudit run --preset demo`: wall time, and per stage the tasks' work against their launch overhead.

Three runs, one after another, each into a new output folder:

- ``first``: a new, empty cache folder (``MEMAUDIT_CACHE_DIR``): the tiny base model is pre-trained, as on a machine
  that never ran the demo;
- ``second``: the same cache, a new output folder (what every later demo pays);
- ``reference``: as ``second`` with ``--set run.warm_worker=false``: every task a fresh kfp.local subprocess that
  imports torch, transformers, peft and mlflow itself (the launch path before the warm worker).

Per stage, ``kfp_s`` is the time kfp.local spent on its tasks (sum over tasks of "Executing task" → "finished" in
``kfp.log``), ``work_s`` the time the tasks' bodies report (progress events start → done) and ``launch_s`` the
difference: process start, imports, kfp's input/output handling and exit. ``outside_s`` is the wall time outside
every task (the CLI, the pipeline process, collecting the results). Each run's summary.json must equal the first's.

    .venv/bin/python benchmarks/demo_profile.py          # ~15 min on 2 cores
    make bench-demo

Writes benchmarks/results/demo-profile.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KFP_LINE = re.compile(r"(\d\d:\d\d:\d\d\.\d+) - INFO - (Executing task|Task) '(\w+)'(?: finished with status (\w+))?")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
RUNS = {
    "first": ("new cache folder: the tiny base model is pre-trained", []),
    "second": ("same cache, new output folder", []),
    "reference": ("as second, every task its own process (run.warm_worker=false)", ["--set", "run.warm_worker=false"]),
}


def kfp_spans(log: Path) -> tuple[dict[str, float], float]:
    """Per task name, the summed seconds kfp.local spent on its tasks; and the span from the first task's start
    to the last one's end. kfp.local sometimes logs no "finished" line for the last iteration of a loop: such a task
    ends when the next task of another name starts (the stage after the loop)."""
    starts: dict[str, list[float]] = {}
    ends: dict[str, list[float]] = {}
    order: list[tuple[float, str]] = []
    for match in KFP_LINE.finditer(ANSI.sub("", log.read_text(errors="replace"))):  # lines of parallel tasks interleave
        if match[2] == "Task" and not match[4]:
            continue
        clock = dt.datetime.strptime(match[1], "%H:%M:%S.%f")
        seconds = clock.hour * 3600 + clock.minute * 60 + clock.second + clock.microsecond / 1e6
        (starts if match[2] == "Executing task" else ends).setdefault(match[3], []).append(seconds)
        if match[2] == "Executing task":
            order.append((seconds, match[3]))
    for name, times in starts.items():
        missing = len(times) - len(ends.get(name, []))
        after = [t for t, other in order if other != name and t > max(times)]
        if missing and after:
            ends.setdefault(name, []).extend([min(after)] * missing)
    spans = {name: sum(ends.get(name, [])) - sum(times) for name, times in starts.items()}
    first = min(t for times in starts.values() for t in times)
    last = max(t for times in ends.values() for t in times)
    return spans, last - first


def work_times(events_path: Path) -> dict[str, dict[str, float]]:
    """Per stage: tasks and the summed seconds of their bodies (progress events start → done or skipped)."""
    started: dict[tuple, float] = {}
    stages: dict[str, dict[str, float]] = {}
    for line in events_path.read_text().splitlines():
        event = json.loads(line)
        key = (event["stage"], event.get("shadow"))
        if event["event"] == "start":
            started[key] = event["t"]
        elif event["event"] in ("done", "skipped") and key in started:
            row = stages.setdefault(event["stage"], {"tasks": 0, "work_s": 0.0})
            row["tasks"] += 1
            row["work_s"] += event["t"] - started.pop(key)
    return stages


def profile_run(name: str, extra: list[str], output: Path, cache: Path) -> dict:
    """One `memaudit run --preset demo` into ``output``: its wall time and per-stage profile."""
    command = [str(ROOT / ".venv/bin/memaudit"), "run", "--preset", "demo", "--output", str(output), "--no-progress"]
    env = {**os.environ, "MEMAUDIT_CACHE_DIR": str(cache)}
    print(f"{name}: {' '.join(command[1:] + extra)}", flush=True)
    started = time.monotonic()
    subprocess.run(command + extra, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.monotonic() - started
    spans, tasks_span = kfp_spans(output / "kfp.log")
    stages = {}
    for stage, row in work_times(output / "progress.jsonl").items():
        kfp_s = spans.get(stage, 0.0)
        stages[stage] = {**row, "kfp_s": kfp_s, "launch_s": kfp_s - row["work_s"]}
    totals = {key: sum(row[key] for row in stages.values()) for key in ("tasks", "work_s", "kfp_s", "launch_s")}
    summary = json.loads((output / "summary.json").read_text())
    print(f"{name}: {wall:.0f} s", flush=True)
    return {"wall_s": wall, "tasks_span_s": tasks_span, "outside_s": wall - tasks_span, "stages": stages,
            "totals": totals, "summary": summary}  # fmt: skip


def markdown(result: dict) -> str:
    """The profile as Markdown tables: one row per run, then per stage of each run."""
    lines = ["# make demo, profiled (benchmarks/demo_profile.py)", "", result["machine"], ""]
    lines += ["| run | what | wall s | tasks' work s | launch s | outside tasks s |", "|---|---|---:|---:|---:|---:|"]
    for name, run in result["runs"].items():
        t = run["totals"]
        lines.append(f"| {name} | {RUNS[name][0]} | {run['wall_s']:.0f} | {t['work_s']:.0f} | {t['launch_s']:.0f} "
                     f"| {run['outside_s']:.0f} |")  # fmt: skip
    lines += ["", f"Ratios: {json.dumps(result['ratios'])}; summaries identical: {result['identical_summaries']}", ""]
    for name, run in result["runs"].items():
        lines += [f"## {name}", "", "| stage | tasks | work s | kfp s | launch s | launch s per task |"]
        lines.append("|---|---:|---:|---:|---:|---:|")
        for stage, row in run["stages"].items():
            per = row["launch_s"] / row["tasks"]
            lines.append(f"| {stage} | {row['tasks']} | {row['work_s']:.1f} | {row['kfp_s']:.1f} "
                         f"| {row['launch_s']:.1f} | {per:.2f} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=",".join(RUNS), help="which runs, in order (default: all three)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/demo-profile.json")
    args = parser.parse_args(argv)
    names = args.runs.split(",")
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        print(f"demo_profile: unknown run {', '.join(unknown)}; use some of {', '.join(RUNS)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="memaudit-profile-") as tmp:
        runs = {name: profile_run(name, RUNS[name][1], Path(tmp) / name, Path(tmp) / "cache") for name in names}
    first = runs[names[0]]["summary"]
    result = {
        "machine": f"{os.cpu_count()} CPU cores, {sys.platform}, Python {sys.version.split()[0]}",
        "identical_summaries": all(run["summary"] == first for run in runs.values()),
        "fingerprint": first.get("fingerprint"),
        "ratios": {},
        "runs": {name: {k: v for k, v in run.items() if k != "summary"} for name, run in runs.items()},
    }
    if "reference" in runs and "second" in runs:
        result["ratios"]["reference_over_second_wall"] = runs["reference"]["wall_s"] / runs["second"]["wall_s"]
        launch = runs["second"]["totals"]["launch_s"]
        result["ratios"]["reference_over_second_launch"] = runs["reference"]["totals"]["launch_s"] / launch
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1) + "\n")
    args.results.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0 if result["identical_summaries"] else 1


if __name__ == "__main__":
    sys.exit(main())
