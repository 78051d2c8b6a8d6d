"""The embedded default: run the audit pipeline on this machine through ``kfp.local.SubprocessRunner``.

The same pipeline function as on a cluster; each task runs in a subprocess of the current Python. The object
store is a folder under the output directory unless ``MEMAUDIT_S3_ENDPOINT`` is set, and MLflow writes to
``sqlite:///<output>/mlflow.db`` unless ``MLFLOW_TRACKING_URI`` is set. kfp's own (verbose) logs go to
``<output>/kfp.log``; the terminal shows one progress bar per stage, fed by the tasks' progress events.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from memaudit.config import ExperimentConfig
from memaudit.environment import scoped_env
from memaudit.errors import Interrupted, MemauditError
from memaudit.pipelines.audit import build_pipeline
from memaudit.progress import PROGRESS_ENV, read_events
from memaudit.tasks.results import RUN_CONFIG, RUN_STORE, collect_results
from memaudit.tasks.runtime import STORE_DIR_ENV, THREADS_ENV, WORK_DIR_ENV
from memaudit.tasks.warm import worker

LOCAL_CONCURRENCY = 2  # kfp.local runs at most 2 ParallelFor iterations at once (its ParallelExecutor's cap)


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
    at_once = min(cfg.run.parallelism, cfg.shadows.n_shadows, LOCAL_CONCURRENCY)
    threads = max(1, (os.cpu_count() or 1) // at_once)
    env = {
        PROGRESS_ENV: str(events_path),
        STORE_DIR_ENV: str(output / RUN_STORE),
        WORK_DIR_ENV: str(output / "work"),
        THREADS_ENV: str(threads),
    }
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{output / 'mlflow.db'}"
    return env


class _Stop(Exception):
    """SIGINT or SIGTERM reached ``memaudit run``."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _stop_on_signals():
    """SIGINT and SIGTERM raise :class:`_Stop` in the main thread for the duration of the block."""

    def handler(signum, _frame):
        raise _Stop(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _terminate(child: subprocess.Popen, grace_s: float = 5.0) -> None:
    """End the pipeline's whole process session: SIGTERM, then SIGKILL after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=wait)
            if sig == signal.SIGKILL or not _session_alive(child.pid):
                return


def _session_alive(session: int) -> bool:
    try:
        os.killpg(session, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _watch(child: subprocess.Popen, events_path: Path, bars: _Bars) -> list[dict]:
    """Feed the bars from the progress file until the pipeline process ends; returns every event."""
    events: list[dict] = []
    offset = 0
    while True:
        done = child.poll() is not None
        new, offset = read_events(events_path, offset)
        for event in new:
            bars.update(event)
        events.extend(new)
        if done:
            return events
        time.sleep(0.5)


def run_local(cfg: ExperimentConfig, output: str | Path, *, progress: bool = True) -> LocalRun:
    """Run the whole pipeline for ``cfg`` with outputs under ``output``; raises on a failed task, and
    :class:`Interrupted` (after stopping every task) on SIGINT or SIGTERM."""
    output = Path(output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    log_path, events_path = output / "kfp.log", output / "progress.jsonl"
    events_path.unlink(missing_ok=True)
    shutil.rmtree(output / "work", ignore_errors=True)  # scratch folders of tasks an earlier run abandoned
    config_path = output / RUN_CONFIG
    config_path.write_text(cfg.to_yaml())
    env = {**os.environ, **_environment(cfg, output, events_path)}
    bars = _Bars(cfg.shadows.n_shadows, sys.stderr, progress)
    start, events = time.monotonic(), []
    with open(log_path, "a") as log, _stop_on_signals():
        command = [sys.executable, "-m", "memaudit.pipelines.local", str(config_path), str(output)]
        child = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            events = _watch(child, events_path, bars)
        except _Stop as stop:
            _terminate(child)
            bars.close()
            events += read_events(events_path)[0][len(events) :]
            raise Interrupted(stop.signum, _kept(cfg, events, output)) from None
    bars.close()
    if child.returncode:
        raise _failure(events, output, log_path)
    missing = next(
        (e.get("missing_shadows", []) for e in events if e["stage"] == "aggregate" and "population" in e), []
    )
    with scoped_env({STORE_DIR_ENV: str(output / RUN_STORE)}):
        summary, report = collect_results(cfg, output, missing)
    return LocalRun(output, log_path, time.monotonic() - start, summary, report, events)


def _shadow_state(events: list[dict]) -> tuple[set[int], dict[int, str]]:
    """(complete shadows, {shadow: last checkpoint reached}) from the progress events."""
    complete = {e["shadow"] for e in events if e["stage"] == "score" and e["event"] in ("done", "skipped")}
    partial = {
        e["shadow"]: e["detail"].split()[-1].split("/")[0]
        for e in events
        if e["stage"] == "finetune" and e["event"] == "step" and e.get("detail", "").startswith("checkpoint")
    }
    return complete, {s: step for s, step in partial.items() if s not in complete}


def _kept(cfg: ExperimentConfig, events: list[dict], output: Path) -> str:
    """The one line an interrupted run prints: what is kept and how to resume."""
    complete, partial = _shadow_state(events)
    resumes = ", ".join(f"shadow {s} after step {step}" for s, step in sorted(partial.items()))
    return (
        f"{len(complete)} of {cfg.shadows.n_shadows} shadows complete"
        + (f", {resumes} resume{'s' if len(partial) == 1 else ''} from stored checkpoints" if partial else "")
        + f"; kept in {output}; run the same command again to resume"
    )


def _failure(events: list[dict], output: Path, log_path: Path) -> MemauditError:
    """The one-line error of a failed run: which stage of which shadow, and that a rerun resumes."""
    resume = (
        "a rerun of the same command resumes: complete shadows are skipped, "
        "a fine-tune continues after its last stored checkpoint"
    )
    errors = [e for e in events if e["event"] == "error"]
    if errors:
        e = errors[-1]
        return MemauditError(f"{_who(e)} failed: {e['message']}", f"{e.get('fix') or 'see ' + str(log_path)}; {resume}")
    ended = {(e["stage"], e.get("shadow")) for e in events if e["event"] in ("done", "skipped", "error")}
    running = [e for e in events if e["event"] == "start" and (e["stage"], e.get("shadow")) not in ended]
    what = f"{_who(running[-1])} stopped without reporting an error (killed?)" if running else "the pipeline failed"
    return MemauditError(what, f"see the task logs in {log_path}; {resume}")


def _who(event: dict) -> str:
    return event["stage"] + (f" of shadow {event['shadow']}" if event.get("shadow") is not None else "")


def _run_pipeline(config_path: Path, output: Path) -> None:
    """The pipeline process: run the graph through kfp.local (its own session, so it can be stopped whole)."""
    from kfp import local

    from memaudit.config import load_config

    cfg = load_config(path=config_path)
    # no retries with back-off on this machine: a failed task is reported at once
    pipeline = build_pipeline(cfg.model_copy(update={"run": cfg.run.model_copy(update={"retries": 0})}))
    warnings.simplefilter("ignore")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(output / "kfp"))
    warm = worker(output / "kfp.log") if cfg.run.warm_worker else contextlib.nullcontext()
    with warm:
        pipeline(preset=cfg.preset or "", config_yaml=cfg.to_yaml())


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


if __name__ == "__main__":
    try:
        _run_pipeline(Path(sys.argv[1]), Path(sys.argv[2]))
    except Exception as exc:  # the parent reports from the progress events; the log keeps the details
        print(f"pipeline failed: {type(exc).__name__}: {exc}", flush=True)
        sys.exit(1)
