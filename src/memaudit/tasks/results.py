"""What a finished run hands its user: the summary and the report, copied out of the store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from memaudit.config import ExperimentConfig
from memaudit.report.html import REPORT
from memaudit.report.outputs import SUMMARY
from memaudit.tasks.runtime import run_storage

REPORT_DIR = "report"
RUN_CONFIG = "run-config.yaml"  # the resolved config memaudit run writes into its output folder
RUN_STORE = "store"  # the output folder's object store (when MEMAUDIT_S3_ENDPOINT is unset)


def collect_results(cfg: ExperimentConfig, output: str | Path, missing: list[int] = ()) -> tuple[dict[str, Any], Path]:
    """Copy the run's summary and report (of the population without the ``missing`` shadows) from its store into
    ``output``; returns (summary, report path)."""
    output, storage = Path(output), run_storage(cfg)
    population = storage.layout.population(cfg.evaluation_fingerprint(), missing)
    summary_path = storage.store.get_file(storage.layout.aggregate(population, SUMMARY), output / SUMMARY)
    storage.store.get_dir(storage.layout.report(population), output / REPORT_DIR)
    return json.loads(summary_path.read_text()), output / REPORT_DIR / REPORT
