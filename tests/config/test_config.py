import json

import pytest

from memaudit.cli import main
from memaudit.config import OVERRIDE_SEPARATOR, load_config, preset_names, split_overrides
from memaudit.config.presets import LORA_TARGETS, PAPER_LAYERS_32, PAPER_LAYERS_GEMMA
from memaudit.errors import MemauditError
from memaudit.tasks.prepare import config_from_parameters

PAPER = ["arc-mistral", "ethics-mistral", "mmlu-mistral", "mmlu-llama", "mmlu-gemma"]


@pytest.mark.parametrize("name", PAPER)
def test_paper_presets_follow_method_section_3(name):
    cfg = load_config(preset=name)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (8, 16, 0.5)
    assert cfg.lora.target_modules == LORA_TARGETS and "lm_head" in cfg.lora.target_modules
    t = cfg.training
    assert (t.learning_rate, t.warmup_steps, t.batch_size, t.grad_accum, t.epochs, t.max_len) == (
        2.5e-5,
        5,
        2,
        2,
        10,
        512,
    )
    assert (cfg.checkpoints.per_epoch_in_first, cfg.checkpoints.every_epochs) == (5, 1)
    assert cfg.dataset.label_noise == 0.03334
    assert (cfg.shadows.n_shadows, cfg.shadows.target, cfg.shadows.scheme) == (100, 0, "paper")
    assert cfg.model.layers == (PAPER_LAYERS_GEMMA if "gemma" in name else PAPER_LAYERS_32)
    assert cfg.evaluation.memorized_fraction == 0.10 and cfg.evaluation.tpr_target == 0.75


def test_paper_dataset_caps():
    caps = {name: load_config(preset=name).dataset.max_train_rows for name in PAPER}
    assert caps == {
        "arc-mistral": 1078,
        "ethics-mistral": 13901,
        "mmlu-mistral": 33750,
        "mmlu-llama": 33750,
        "mmlu-gemma": 33750,
    }


def test_all_presets_validate_and_have_distinct_fingerprints():
    fps = {load_config(preset=name).fingerprint() for name in preset_names()}
    assert len(fps) == len(preset_names())


@pytest.mark.parametrize(
    "override",
    [
        "dataset.data_dir=/mnt/data",
        "model.local_path=/models/m",
        "scoring.batch_size=7",
        "run.parallelism=32",
        "scoring.device=cuda:1",
        "run.image_gpu=x/y:1",
        "evaluation.memorized_fraction=0.2",
    ],
)
def test_fingerprint_ignores_paths_parallelism_and_logging(override):
    base = load_config(preset="demo")
    assert load_config(preset="demo", overrides=[override]).fingerprint() == base.fingerprint()


@pytest.mark.parametrize(
    "override",
    [
        "training.learning_rate=1e-4",
        "dataset.label_noise=0.1",
        "model.layers=[2]",
        "lora.dropout=0.1",
        "shadows.n_shadows=8",
        "scoring.psmi_directions=100",
        "dataset.synthetic.seed=3",
        "training.seed=1",
    ],
)
def test_fingerprint_changes_with_results(override):
    base = load_config(preset="demo")
    assert load_config(preset="demo", overrides=[override]).fingerprint() != base.fingerprint()


def test_evaluation_fingerprint_tracks_evaluation_only():
    base = load_config(preset="demo")
    changed = load_config(preset="demo", overrides=["evaluation.memorized_fraction=0.2"])
    assert changed.evaluation_fingerprint() != base.evaluation_fingerprint()
    assert load_config(preset="demo", overrides=["run.parallelism=9"]).evaluation_fingerprint() == (
        base.evaluation_fingerprint()
    )


def test_fingerprint_is_stable_across_processes():
    # same content, same digest: computed from canonical JSON, not from Python hashing
    a = load_config(preset="arc-mistral").fingerprint()
    b = load_config(path=None, preset="arc-mistral", overrides=["training.epochs=10"]).fingerprint()
    assert a == b and len(a) == 16 and int(a, 16) >= 0


def test_yaml_and_json_files_with_preset_key(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("preset: demo\ntraining:\n  epochs: 3\n")
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"preset": "demo", "training": {"epochs": 3}}))
    cy, cj = load_config(path=y), load_config(path=j)
    assert cy.training.epochs == cj.training.epochs == 3
    assert cy.fingerprint() == cj.fingerprint()
    assert cy.model.name == "tiny-llama"  # rest comes from the preset


def test_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(preset="mmlu-gemma", overrides=["run.gpu_tolerations=[{key: nvidia.com/gpu}]"])
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path=path)
    assert again == cfg and again.fingerprint() == cfg.fingerprint()


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["training.epochs=0"], "training.epochs"),
        (["lora.dropout=1.5"], "lora.dropout"),
        (["shadows.target=200"], "target 200"),
        (["dataset.name=imagenet"], "dataset.name"),
        (["training.nope=1"], "training.nope"),
        (["trainingepochs"], "no '='"),
        (["model.quantization=int3"], "model.quantization"),
    ],
)
def test_invalid_config_is_one_line_naming_the_field(overrides, needle):
    with pytest.raises(MemauditError) as info:
        load_config(preset="demo", overrides=overrides)
    message = str(info.value)
    assert needle in message and "\n" not in message and "fix:" in message


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(MemauditError, match="unknown preset 'nope'"):
        load_config(preset="nope")
    with pytest.raises(MemauditError, match="not found"):
        load_config(path=tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [1, 2\n")
    with pytest.raises(MemauditError, match="not valid YAML"):
        load_config(path=bad)


def test_cli_bad_config_exits_2_without_traceback(capsys):
    with pytest.raises(SystemExit) as info:
        main(["config", "show", "--preset", "demo", "--set", "training.learning_rate=-1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid config: training.learning_rate") and "Traceback" not in err
    assert err.count("\n") == 1


def test_cli_presets_lists_all(capsys):
    main(["presets"])
    out = capsys.readouterr().out
    assert all(name in out for name in preset_names())


def test_pipeline_parameters_resolve_in_order():
    text = load_config(preset="demo", overrides=["training.epochs=3"]).to_yaml()
    cfg = config_from_parameters(
        preset="", config_yaml=text, overrides="lora.r=4; training.epochs=5", n_shadows=6, dataset="", model=""
    )
    assert cfg.preset == "demo" and cfg.training.epochs == 5 and cfg.lora.r == 4 and cfg.shadows.n_shadows == 6
    assert config_from_parameters(preset="mmlu-gemma").model.name == "google/gemma-7b"
    switched = config_from_parameters(preset="arc-mistral", dataset="mmlu", model="meta-llama/Llama-2-7b-hf")
    assert (switched.dataset.name, switched.model.name) == ("mmlu", "meta-llama/Llama-2-7b-hf")
    # the full text of a resolved config round-trips exactly
    assert config_from_parameters(config_yaml=text) == load_config(preset="demo", overrides=["training.epochs=3"])


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"config_yaml": "a: [1"}, "not valid YAML"),
        ({"config_yaml": "- 1"}, "mapping"),
        ({"preset": "demo", "overrides": "lora.r=0"}, "lora.r"),
        ({"preset": "demo", "n_shadows": 1}, "n_shadows"),
    ],
)
def test_bad_pipeline_parameters_are_one_line(kwargs, needle):
    with pytest.raises(MemauditError, match=needle):
        config_from_parameters(**kwargs)


def test_one_loader_for_files_and_pipeline_text(tmp_path):
    path = tmp_path / "audit.yaml"
    path.write_text("preset: arc-mistral\ntraining:\n  epochs: 3\n")
    overrides = ["lora.r=4", "shadows.n_shadows=10"]
    from_file = load_config(path=path, overrides=overrides)
    assert from_file == load_config(text=path.read_text(), overrides=overrides)
    assert from_file == config_from_parameters(
        config_yaml=path.read_text(), overrides=OVERRIDE_SEPARATOR.join(overrides)
    )
    assert (from_file.preset, from_file.training.epochs, from_file.lora.r) == ("arc-mistral", 3, 4)
    assert split_overrides("a.b=1; c.d=2\n e.f=3") == ["a.b=1", "c.d=2", "e.f=3"]
    with pytest.raises(MemauditError, match=r"config file .*audit\.yaml: not valid YAML/JSON at line 3"):
        path.write_text("training:\n  epochs: [3\n")
        load_config(path=path)


def test_dict_fields_are_replaced_not_merged():
    base = load_config(preset="arc-mistral")
    assert base.run.gpu_node_selector == {"memaudit.io/pool": "gpu"}
    cleared = load_config(preset="arc-mistral", overrides=["run.gpu_node_selector={}", "run.gpu_tolerations=[]"])
    assert cleared.run.gpu_node_selector == {} and cleared.run.gpu_tolerations == []
    other = load_config(
        preset="arc-mistral", overrides=["run.gpu_node_selector={cloud.google.com/gke-accelerator: a100}"]
    )
    assert other.run.gpu_node_selector == {"cloud.google.com/gke-accelerator": "a100"}
    # sections still merge field by field
    assert load_config(preset="arc-mistral", overrides=["training.epochs=3"]).training.learning_rate == 2.5e-5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--no-such-flag"], "No such option: --no-such-flag (see 'memaudit run --help')"),
        (["no-such-command"], "No such command 'no-such-command'"),
        (["stage", "split", "--preset"], "Option '--preset' requires an argument"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and "Traceback" not in err
