"""The prepare task: resolve the run's config from its pipeline parameters, write the pool and the base model
(from the store when already built), open the MLflow parent run."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memaudit import tracking
from memaudit.config import ExperimentConfig, load_config, split_overrides
from memaudit.config.presets import TINY_MODEL
from memaudit.environment import user_cache_dir
from memaudit.store.seal import MARKER, file_digest
from memaudit.tasks.runtime import Task, set_threads, task, tracking_uri
from memaudit.tasks.warm import forked

HUB_MODEL_FILE = "memaudit-model.json"
TINY_CACHE = "tiny-models"  # built once per machine and settings, under the user's cache folder


@dataclass
class PrepareResult:
    config_json: str
    fingerprint: str
    parent_run_id: str
    shadow_ids: list[int]
    pool_metadata: dict[str, Any]
    model_metadata: dict[str, Any]


def config_from_parameters(
    preset: str = "",
    config_yaml: str = "",
    overrides: str = "",
    n_shadows: int = 0,
    dataset: str = "",
    model: str = "",
) -> ExperimentConfig:
    """The config of a pipeline run from its parameters (KFP UI fields; empty/0 = keep).

    Order: preset, then the config text (YAML/JSON; its own ``preset:`` key is used when ``preset`` is empty),
    then the ``key=value`` override lines, then ``n_shadows``, ``dataset`` (dataset.name) and ``model``
    (model.name).
    """
    lines = split_overrides(overrides)
    shortcuts = {"shadows.n_shadows": n_shadows, "dataset.name": dataset, "model.name": model}
    lines += [f"{key}={value}" for key, value in shortcuts.items() if value]
    return load_config(preset or None, overrides=lines, text=config_yaml, source="pipeline parameters")


def _build_pool(cfg: ExperimentConfig, path: Path) -> None:
    from memaudit.data.pool import build_pool
    from memaudit.data.poolfile import write_pool

    write_pool(build_pool(cfg, data_dir=cfg.dataset.data_dir, progress=False), path)


def _base_model(t: Task, pool, out: Path) -> dict[str, Any]:
    """Copy (or build, then store) the tiny model or the dequantized GGUF model into ``out``; for a Hub model write a
    pointer file."""
    cfg = t.cfg
    if cfg.model.gguf_file is not None:
        from memaudit.model.gguf import save_dequantized

        t.reuse_or_build_dir(t.layout.base_model, out, lambda folder: save_dequantized(cfg.model, folder))
        return {"name": cfg.model.name, "gguf_file": cfg.model.gguf_file, "uri": t.store.uri(t.layout.base_model)}
    if cfg.model.name != TINY_MODEL:
        out.mkdir(parents=True, exist_ok=True)
        pointer = {"name": cfg.model.name, "revision": cfg.model.revision}
        (out / HUB_MODEL_FILE).write_text(json.dumps(pointer))
        return pointer

    def build(folder: Path) -> None:
        from memaudit.data.synthetic import tiny_model_corpus
        from memaudit.model.tiny import ensure_base_model

        set_threads()  # one thread per process is several times faster for a model this small
        built = ensure_base_model(cfg.model, tiny_model_corpus(cfg, pool), user_cache_dir() / TINY_CACHE)
        shutil.copytree(built, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MARKER))  # the store seals

    t.reuse_or_build_dir(t.layout.base_model, out, build)
    return {"name": TINY_MODEL, "uri": t.store.uri(t.layout.base_model)}


def _pool_input(cfg: ExperimentConfig, pool_path: Path, n_train: int, n_test: int, pool_uri: str):
    """The pool as the parent run's input dataset: its digest, where it came from, the train/test split."""
    ds = cfg.dataset
    if ds.hub_id:
        source_type = "hugging_face"
        source = {"path": ds.hub_id, "config_name": ds.hub_config, "split": ds.train_split, "data_dir": ds.data_dir}
    else:
        source_type, source = "local", {"uri": ds.path or ds.data_dir or pool_uri}
    profile = {"num_rows": n_train + n_test, "train_pool": n_train, "held_out_test": n_test,
               "label_noise": ds.label_noise}  # fmt: skip
    digest = file_digest(pool_path)[0][:16]
    return tracking.PoolInput(ds.name, digest, source_type, source, profile, context="train")


@forked
def prepare_task(
    *,
    preset: str,
    config_yaml: str,
    overrides: str,
    n_shadows: int,
    dataset: str,
    model: str,
    run_name: str,
    pool_path: str,
    base_model_path: str,
) -> PrepareResult:
    """Resolve the config, write the pool and the base model (from the store when already built), open MLflow."""
    from memaudit.data.poolfile import read_pool, train_pool

    def resolve() -> ExperimentConfig:
        return config_from_parameters(preset, config_yaml, overrides, n_shadows, dataset, model)

    with task("prepare", resolve=resolve) as t:
        cfg, layout = t.cfg, t.layout
        if t.reuse_or_build_file(layout.pool, Path(pool_path), lambda path: _build_pool(cfg, path)):
            t.skipped()
        pool = read_pool(pool_path)
        model_metadata = _base_model(t, pool, Path(base_model_path))
        n_train = len(train_pool(pool))
        pool_input = _pool_input(cfg, Path(pool_path), n_train, len(pool) - n_train, t.store.uri(layout.pool))
        parent = tracking.start_parent_run(cfg, uri=tracking_uri(), run_name=run_name or None, pool=pool_input)
        t.outcome.update(n_train=n_train, n_test=len(pool) - n_train)
    return PrepareResult(
        config_json=json.dumps(cfg.to_dict()),
        fingerprint=cfg.fingerprint(),
        parent_run_id=parent,
        shadow_ids=list(range(cfg.shadows.n_shadows)),
        pool_metadata={"uri": t.store.uri(layout.pool), "n_train": n_train, "n_test": len(pool) - n_train},
        model_metadata=model_metadata,
    )
