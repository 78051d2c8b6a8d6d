"""``memaudit audit-model`` refuses bad input with one line and exit code 2, before writing anything.

The run is laid out as ``memaudit run --output`` leaves it (config, store, sealed pool and shadows), with synthetic
score files: every refusal here happens before a model would be loaded."""

import json

import pytest

from memaudit.cli import main
from memaudit.data.poolfile import write_pool
from memaudit.store import LocalStore, RunStorage
from memaudit.tasks.results import RUN_CONFIG
from memaudit.testing import write_synthetic_scores
from tests.support.pipeline_config import small_config


def _stored_run(root, complete=(0, 1, 2)):
    cfg = small_config()
    synthetic = write_synthetic_scores(root / "synthetic", n_models=3, n_samples=30, n_checkpoints=2)
    storage = RunStorage(LocalStore(root / "run" / "store"), cfg.fingerprint())
    storage.put_sealed_file(storage.layout.pool, write_pool(synthetic.pool, root / "pool.parquet"))
    for shadow in complete:
        storage.store.put_file(storage.layout.scores(shadow), synthetic.paths[shadow])
        storage.seal_shadow(shadow)
    (root / "run" / RUN_CONFIG).write_text(cfg.to_yaml())
    return root / "run"


def _adapter(folder, base="/runs/demo/artifacts/base_model", weights="adapter_model.safetensors"):
    folder.mkdir()
    config = {"peft_type": "LORA", "base_model_name_or_path": base, "revision": None, "r": 4}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / weights).write_bytes(b"")
    return folder


def _refused(capsys, run, adapter, *more: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main(["audit-model", "--run", str(run), "--adapter", str(adapter), "--no-progress", *more])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert not (run / "model-audit").exists()
    return err


def test_an_adapter_of_another_base_model(tmp_path, capsys):
    run, adapter = _stored_run(tmp_path), _adapter(tmp_path / "a", base="mistralai/Mistral-7B-v0.1")
    err = _refused(capsys, run, adapter)
    assert err.startswith(f"error: adapter {adapter} was trained on mistralai/Mistral-7B-v0.1, the run on tiny-llama")


def test_a_pickled_adapter(tmp_path, capsys):
    run, adapter = _stored_run(tmp_path), _adapter(tmp_path / "a", weights="adapter_model.bin")
    err = _refused(capsys, run, adapter)
    assert f"adapter {adapter} holds pickled adapter_model.bin weights" in err
    assert "fix: save it as adapter_model.safetensors" in err


def test_an_unknown_member_id(tmp_path, capsys):
    run, adapter = _stored_run(tmp_path), _adapter(tmp_path / "a")
    (tmp_path / "members.txt").write_text("synthetic-3\n7\nnot-in-the-pool\nneither\n")
    err = _refused(capsys, run, adapter, "--members", str(tmp_path / "members.txt"))
    assert f"error: member id 'not-in-the-pool' in {tmp_path / 'members.txt'} is not a sample" in err


def test_a_folder_that_is_not_a_run_or_not_complete(tmp_path, capsys):
    adapter = _adapter(tmp_path / "a")
    (tmp_path / "empty").mkdir()
    err = _refused(capsys, tmp_path / "empty", adapter)
    assert err.startswith(f"error: {tmp_path / 'empty'} is not a memaudit run folder (no {RUN_CONFIG})")
    run = _stored_run(tmp_path, complete=(0, 2))
    err = _refused(capsys, run, adapter)
    assert err.startswith(f"error: run {run} has 2 of 3 complete shadows;")
