"""The embedded default: run the audit pipeline on this machine through ``kfp.local.SubprocessRunner``.

The same pipeline function as on a cluster; each task runs in a subprocess of the current Python. The object
store is a folder under the output directory unless ``MEMAUDIT_S3_ENDPOINT`` is set, and MLflow writes to
``sqlite:///<output>/mlflow.db`` unless ``MLFLOW_TRACKING_URI`` is set. kfp's own (verbose) logs go to
``<output>/kfp.log``; the terminal shows one progress bar per stage, fed by the tasks' progress events.
"""

import contextlib
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from memaudit.config import ExperimentConfig
from memaudit.environment import scoped_env
from memaudit.errors import MemauditError
from memaudit.pipelines.audit import build_pipeline
from memaudit.progress import PROGRESS_ENV, read_events
from memaudit.tasks.results import collect_results
from memaudit.tasks.runtime import STORE_DIR_ENV, THREADS_ENV, WORK_DIR_ENV


@dataclass
class LocalRun:
    output: Path
    log: Path
    wall_s: float
    summary: dict
    report: Path
    events: list[dict] = field(default_factory=list)


class _Bars:
    """One bar per stage (prepare, split, finetune ×S, score ×S, aggregate, plot) on a terminal; elsewhere (CI
    logs, pipes) one line per finished task."""

    def __init__(self, n_shadows: int, stream: TextIO, enabled: bool):
        totals = {"prepare": 1, "split": 1, "finetune": n_shadows, "score": n_shadows, "aggregate": 1, "plot": 1}
        self.stream, self.enabled = stream, enabled
        self.lines = enabled and not (hasattr(stream, "isatty") and stream.isatty())
        self.bars = (
            {
                stage: tqdm(total=total, desc=f"{stage:<9}", position=i, file=stream, leave=True)
                for i, (stage, total) in enumerate(totals.items())
            }
            if enabled and not self.lines
            else {}
        )
        self.started: dict[tuple, float] = {}

    def update(self, event: dict) -> None:
        key = (event["stage"], event.get("shadow"))
        if event["event"] == "damaged" and self.enabled:
            tqdm.write(f"{event['stage']}: {event['message']}; recomputing", file=self.stream)
        if event["event"] == "start":
            self.started[key] = event["t"]
        if self.lines and event["event"] in ("done", "skipped", "error"):
            who = event["stage"] + (f" shadow {event['shadow']}" if event.get("shadow") is not None else "")
            took = event["t"] - self.started.get(key, event["t"])
            print(f"{who}: {event['event']} ({took:.1f} s)", file=self.stream, flush=True)
        bar = self.bars.get(event["stage"])
        if bar is None:
            return
        if event["event"] in ("done", "skipped"):
            bar.update(1)
            if event["event"] == "skipped":
                bar.set_postfix_str("reused from store", refresh=False)
        elif event["event"] == "step" and event.get("shadow") is not None:
            bar.set_postfix_str(f"shadow {event['shadow']}: {event.get('detail', '')}", refresh=False)
        bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _environment(cfg: ExperimentConfig, output: Path, events_path: Path) -> dict[str, str]:
    """What the tasks read: the progress file, the store and scratch folders, torch threads, MLflow."""
    threads = max(1, (os.cpu_count() or 1) // min(cfg.run.parallelism, cfg.shadows.n_shadows))
    env = {
        PROGRESS_ENV: str(events_path),
        STORE_DIR_ENV: str(output / "store"),
        WORK_DIR_ENV: str(output / "work"),
        THREADS_ENV: str(threads),
    }
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{output / 'mlflow.db'}"
    return env


def _watch(worker: threading.Thread, events_path: Path, bars: _Bars) -> list[dict]:
    """Feed the bars from the progress file until the pipeline thread ends; returns every event."""
    events: list[dict] = []
    offset = 0
    while True:
        alive = worker.is_alive()
        worker.join(timeout=0.5)
        new, offset = read_events(events_path, offset)
        for event in new:
            bars.update(event)
        events.extend(new)
        if not alive:
            return events


def _failure(failure: BaseException, events: list[dict], log_path: Path) -> MemauditError:
    """The one-line error of a failed run: the last task error reported, else the runner's own."""
    errors = [e for e in events if e["event"] == "error"]
    if errors:
        return MemauditError(errors[-1]["message"], errors[-1].get("fix"))
    return MemauditError(
        f"the pipeline failed ({type(failure).__name__}: {str(failure)[:200]})", f"see the task logs in {log_path}"
    )


def run_local(cfg: ExperimentConfig, output: str | Path, *, progress: bool = True) -> LocalRun:
    """Run the whole pipeline for ``cfg`` with outputs under ``output``; raises on a failed task."""
    from kfp import local

    output = Path(output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    log_path, events_path = output / "kfp.log", output / "progress.jsonl"
    events_path.unlink(missing_ok=True)
    # no retries with back-off on this machine: a failed task is reported at once
    pipeline = build_pipeline(cfg.model_copy(update={"run": cfg.run.model_copy(update={"retries": 0})}))
    bars = _Bars(cfg.shadows.n_shadows, sys.stderr, progress)
    failure: list[BaseException] = []
    start = time.monotonic()

    def target() -> None:
        try:
            pipeline(preset=cfg.preset or "", config_yaml=cfg.to_yaml())
        except BaseException as exc:  # reported by the watching thread
            failure.append(exc)

    with scoped_env(_environment(cfg, output, events_path)):
        with open(log_path, "a") as log, contextlib.redirect_stdout(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(output / "kfp"))
            worker = threading.Thread(target=target, daemon=True)
            worker.start()
            events = _watch(worker, events_path, bars)
        bars.close()
        if failure:
            raise _failure(failure[0], events, log_path)
        summary, report = collect_results(cfg, output)
    return LocalRun(output, log_path, time.monotonic() - start, summary, report, events)


def stage_table(events: list[dict]) -> str:
    """Per stage: tasks run and skipped, summed task time and the stage's span, from the progress events."""
    started: dict[tuple, float] = {}
    rows: dict[str, dict] = {}
    for e in events:
        key = (e["stage"], e.get("shadow"))
        row = rows.setdefault(e["stage"], {"done": 0, "skipped": 0, "task_s": 0.0, "first": e["t"], "last": e["t"]})
        if e["event"] == "start":
            started[key] = e["t"]
        elif e["event"] in ("done", "skipped") and key in started:
            row[e["event"]] += 1
            row["task_s"] += e["t"] - started.pop(key)
            row["last"] = e["t"]
    lines = [f"{'stage':<10}{'ran':>5}{'skipped':>9}{'task time':>11}{'span':>8}"]
    for stage, row in rows.items():
        lines.append(
            f"{stage:<10}{row['done']:>5}{row['skipped']:>9}{row['task_s']:>10.1f}s{row['last'] - row['first']:>7.1f}s"
        )
    return "\n".join(lines)
