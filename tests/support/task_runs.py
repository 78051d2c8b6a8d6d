"""Running the pipeline's task bodies in a test: the environment they read, and one call per task."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from memaudit.progress import read_events
from memaudit.store import LocalStore, RunStorage
from memaudit.tasks import aggregate as aggregate_tasks
from memaudit.tasks.finetune import finetune_task
from memaudit.tasks.plot import plot_task
from memaudit.tasks.prepare import prepare_task
from memaudit.tasks.score import score_task
from memaudit.tasks.split import split_task


def task_env(root: Path) -> dict[str, str]:
    """What the tasks of a run under ``root`` read: a local store, scratch, progress file and sqlite MLflow."""
    return {
        "MEMAUDIT_STORE_DIR": str(root / "store"),
        "MEMAUDIT_WORK_DIR": str(root / "work"),
        "MEMAUDIT_TORCH_THREADS": "1",
        "MEMAUDIT_PROGRESS_FILE": str(root / "progress.jsonl"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
    }


def point_tasks_at(monkeypatch, root: Path) -> Path:
    """Make the tasks called in this process use the run under ``root``."""
    for key, value in task_env(root).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MEMAUDIT_S3_ENDPOINT", raising=False)
    return root


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Point the tasks at a store, work dir, progress file and sqlite MLflow inside tmp_path."""
    torch.set_num_threads(1)
    return point_tasks_at(monkeypatch, tmp_path)


def progress_events(path: Path) -> list[dict]:
    return read_events(path)[0]


def prepare(root: Path, cfg):
    art = root / "artifacts"
    art.mkdir(exist_ok=True)
    result = prepare_task(
        preset="", config_yaml=cfg.to_yaml(), overrides="", n_shadows=0, dataset="", model="", run_name="t",
        pool_path=str(art / "pool.parquet"), base_model_path=str(art / "base_model"),
    )  # fmt: skip
    split_task(config_json=result.config_json, pool_path=str(art / "pool.parquet"), member_path=str(art / "m"))
    return result, art


def finetune(result, art: Path, shadow: int):
    return finetune_task(
        config_json=result.config_json, shadow=shadow, parent_run_id=result.parent_run_id,
        pool_path=str(art / "pool.parquet"), member_path=str(art / "m"), base_model_path=str(art / "base_model"),
        manifest_path=str(art / f"ckpts-{shadow}.json"),
    )  # fmt: skip


def score(result, art: Path, shadow: int):
    return score_task(
        config_json=result.config_json, shadow=shadow, pool_path=str(art / "pool.parquet"),
        member_path=str(art / "m"), base_model_path=str(art / "base_model"),
        checkpoints_manifest=str(art / f"ckpts-{shadow}.json"), manifest_path=str(art / f"scores-{shadow}.json"),
    )  # fmt: skip


def final_adapter(root: Path, cfg, shadow: int, step: int) -> dict[str, torch.Tensor]:
    storage = RunStorage(LocalStore(root / "store"), cfg.fingerprint())
    out = storage.download_checkpoints(shadow, root / "check", [step])[step]
    return load_file(out / "adapter_model.safetensors")


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def quarantined(root: Path, cfg) -> list[str]:
    base = root / "store" / cfg.fingerprint() / "quarantine"
    return sorted(str(p.relative_to(base)).split("/", 1)[1] for p in base.rglob("*") if p.is_file())


def aggregate(result, art: Path, uris: list[str]):
    return aggregate_tasks.aggregate_task(
        config_json=result.config_json, parent_run_id=result.parent_run_id, score_uris=uris,
        pool_path=str(art / "pool.parquet"), samples_path=str(art / "samples"), summary_path=str(art / "summary"),
    )  # fmt: skip


def plot(result, art: Path, aggregate_uri: str) -> str:
    return plot_task(
        config_json=result.config_json, parent_run_id=result.parent_run_id, aggregate_uri=aggregate_uri,
        samples_path=str(art / "samples"), summary_path=str(art / "summary"), html_path=str(art / "report.html"),
        markdown_path=str(art / "headline.md"),
    )  # fmt: skip


def task_in_subprocess(env: dict[str, str], function: str, kwargs: dict) -> subprocess.Popen:
    """The task ``memaudit.tasks.<function>`` in a process of its own (with ``env``), as a runner starts it."""
    module, name = function.rsplit(".", 1)
    code = f"import json, sys; from memaudit.tasks.{module} import {name}; {name}(**json.loads(sys.argv[1]))"
    command = [sys.executable, "-c", code, json.dumps(kwargs)]
    return subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def finetune_kwargs(result, art: Path, shadow: int) -> dict:
    return {
        "config_json": result.config_json, "shadow": shadow, "parent_run_id": result.parent_run_id,
        "pool_path": str(art / "pool.parquet"), "member_path": str(art / "m"),
        "base_model_path": str(art / "base_model"), "manifest_path": str(art / f"ckpts-{shadow}.json"),
    }  # fmt: skip
