"""audit-model's driver (docs/design.md §2.8): open a finished run's output folder, check the user's adapter against
the run's base model, score it against the run's stored shadow population and write the outputs.

The run is the folder ``memaudit run --output`` wrote: its resolved config (``run-config.yaml``) names the
fingerprint, and its store (``store/``, or S3 when ``MEMAUDIT_S3_ENDPOINT`` is set, as for the run) holds the pool,
the base model and the shadows. Everything is checked before anything is written; the outputs go to ``--output``
(default ``<run>/model-audit``), each file atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from memaudit.config import ExperimentConfig, load_config
from memaudit.data.poolfile import read_pool, train_pool
from memaudit.errors import MemauditError
from memaudit.model.adapter import check_base_model, read_adapter_config
from memaudit.stages.audit_model import (
    audit_frame,
    member_mask_from_ids,
    model_statistic,
    read_member_ids,
    write_model_audit,
)
from memaudit.stages.population import Population, read_population
from memaudit.store import ENDPOINT_ENV, RunStorage, store_from_env
from memaudit.store.base import STORE_TAG
from memaudit.tasks.results import RUN_CONFIG, RUN_STORE
from memaudit.tasks.runtime import set_threads, work_dir

DEFAULT_OUTPUT = "model-audit"  # under the run folder
_FINISH = "finish the run first: run the same memaudit run command again (complete shadows are reused)"


@dataclass
class StoredRun:
    """A finished run: its output folder, its config and its storage."""

    folder: Path
    cfg: ExperimentConfig
    storage: RunStorage


def open_run(folder: str | Path) -> StoredRun:
    """The run whose output folder is ``folder``; a folder that is not one raises :class:`MemauditError`."""
    folder = Path(folder)
    if not (folder / RUN_CONFIG).is_file():
        raise MemauditError(
            f"{folder} is not a memaudit run folder (no {RUN_CONFIG})", "pass the --output folder of a memaudit run"
        )
    cfg = load_config(path=folder / RUN_CONFIG)
    root = folder / RUN_STORE
    if not os.environ.get(ENDPOINT_ENV, "").strip() and not (root / STORE_TAG).is_file():
        raise MemauditError(
            f"run folder {folder} has no object store ({root})",
            f"set {ENDPOINT_ENV} (and the bucket and credentials) as for the run if it stored its artifacts in S3",
        )
    return StoredRun(folder, cfg, RunStorage(store_from_env(root), cfg.fingerprint()))


def complete_shadows(run: StoredRun) -> list[int]:
    """The ids of the run's complete shadows: the target and at least ``shadows.min_complete`` (default all)."""
    shadows = run.cfg.shadows
    done = [s for s in range(shadows.n_shadows) if run.storage.shadow_complete(s)]
    if shadows.target not in done or len(done) < shadows.required():
        target = "" if shadows.target in done else f", not the target {shadows.target}"
        raise MemauditError(
            f"run {run.folder} has {len(done)} of {shadows.n_shadows} complete shadows{target}", _FINISH
        )
    return done


def _base_model(run: StoredRun, work: Path) -> Path | None:
    """The run's stored base model (the locally built tiny model) in ``work``, else None (the model config's)."""
    prefix = run.storage.layout.base_model
    if not run.storage.store.is_complete(prefix):
        return None
    run.storage.store.get_dir(prefix, work / "base-model")
    return work / "base-model"


def _population(run: StoredRun, shadows: list[int], work: Path, progress: bool) -> Population:
    """The final logit gaps and membership of the complete shadows (row 0: the target), as the aggregate reads them."""
    store, layout = run.storage.store, run.storage.layout
    paths = [store.get_file(layout.scores(s), work / "scores" / f"{s}.npz") for s in shadows]
    return read_population(run.cfg, paths, progress)


@dataclass
class ModelAudit:
    output: Path
    facts: dict[str, Any]
    frame: pd.DataFrame


def _facts(run: StoredRun, adapter: Path, members: Path | None, pop: Population) -> dict[str, Any]:
    model = run.cfg.model
    return {
        "run": str(run.folder.resolve()),
        "fingerprint": run.cfg.fingerprint(),
        "evaluation_fingerprint": run.cfg.evaluation_fingerprint(),
        "base_model": model.name + (f"@{model.revision}" if model.revision else ""),
        "adapter": str(adapter.resolve()),
        "members_file": None if members is None else str(members.resolve()),
        "target": run.cfg.shadows.target,
        "reference_shadows": pop.ids[1:],
    }


def audit_model_task(
    run_dir: str | Path,
    adapter: str | Path,
    members: str | Path | None = None,
    output: str | Path | None = None,
    *,
    device: str | None = None,
    progress: bool = True,
) -> ModelAudit:
    """Audit the LoRA adapter ``adapter`` against the run in ``run_dir`` (``members``: the file of its training
    members, else offline LiRA); writes the outputs to ``output`` (default ``<run>/model-audit``)."""
    run, adapter = open_run(run_dir), Path(adapter)
    members = None if members is None else Path(members)
    out = Path(output) if output is not None else run.folder / DEFAULT_OUTPUT
    if out.exists() and not out.is_dir():
        raise MemauditError(f"output {out} is a file", "pass a folder path (it is created when missing)")
    check_base_model(read_adapter_config(adapter), run.cfg.model, adapter)
    shadows = complete_shadows(run)
    set_threads()
    with work_dir("audit-model") as work:
        pool = read_pool(run.storage.store.get_file(run.storage.layout.pool, work / "pool.parquet"))
        train = train_pool(pool)
        mask = None if members is None else member_mask_from_ids(train, read_member_ids(members), str(members))
        pop = _population(run, shadows, work, progress)
        device = device or run.cfg.scoring.device
        statistic = model_statistic(run.cfg, pool, _base_model(run, work), adapter, device=device, progress=progress)
    frame, facts = audit_frame(run.cfg, train, pop.final_gap, pop.member, statistic, mask)
    facts.update(_facts(run, adapter, members, pop))
    write_model_audit(out, frame, facts, train["prompt"].tolist())
    return ModelAudit(out, facts, frame)
