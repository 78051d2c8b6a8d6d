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
from memaudit.errors import MemauditError
from memaudit.pipelines.audit import build_pipeline
from memaudit.progress import PROGRESS_ENV, read_events

STORE_DIR_ENV = "MEMAUDIT_STORE_DIR"


@dataclass
class LocalRun:
    output: Path
    log: Path
    wall_s: float
    events: list[dict] = field(default_factory=list)


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _Bars:
    """One bar per stage: prepare, split, finetune (S), score (S), aggregate, plot."""

    def __init__(self, n_shadows: int, stream: TextIO, enabled: bool):
        totals = {"prepare": 1, "split": 1, "finetune": n_shadows, "score": n_shadows, "aggregate": 1, "plot": 1}
        self.bars = {
            stage: tqdm(total=total, desc=f"{stage:<9}", position=i, file=stream, disable=not enabled, leave=True)
            for i, (stage, total) in enumerate(totals.items())
        }

    def update(self, event: dict) -> None:
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


def run_local(cfg: ExperimentConfig, output: str | Path, *, progress: bool = True) -> LocalRun:
    """Run the whole pipeline for ``cfg`` with outputs under ``output``; raises on a failed task."""
    from kfp import local

    output = Path(output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    log_path, events_path = output / "kfp.log", output / "progress.jsonl"
    events_path.unlink(missing_ok=True)
    env = {PROGRESS_ENV: str(events_path), STORE_DIR_ENV: str(output / "store")}
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{output / 'mlflow.db'}"
    pipeline = build_pipeline(cfg)
    console = sys.stderr
    bars = _Bars(cfg.shadows.n_shadows, console, progress)
    failure: list[BaseException] = []
    start = time.monotonic()

    def target() -> None:
        try:
            pipeline(preset=cfg.preset or "", config_yaml=cfg.to_yaml())
        except BaseException as exc:  # reported by the watching thread
            failure.append(exc)

    events: list[dict] = []
    offset = 0
    with (
        _environment(env),
        open(log_path, "a") as log,
        contextlib.redirect_stdout(log),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(output / "kfp"))
        worker = threading.Thread(target=target, daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(timeout=0.5)
            new, offset = read_events(events_path, offset)
            for event in new:
                bars.update(event)
            events.extend(new)
    new, offset = read_events(events_path, offset)
    for event in new:
        bars.update(event)
    events.extend(new)
    bars.close()
    if failure:
        errors = [e for e in events if e["event"] == "error"]
        if errors:
            raise MemauditError(errors[-1]["message"], errors[-1].get("fix"))
        raise MemauditError(
            f"the pipeline failed ({type(failure[0]).__name__}: {str(failure[0])[:200]})",
            f"see the task logs in {log_path}",
        )
    return LocalRun(output=output, log=log_path, wall_s=time.monotonic() - start, events=events)
