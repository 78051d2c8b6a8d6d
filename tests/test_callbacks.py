"""The Trainer callback (memaudit.callbacks): a real transformers.Trainer trains a peft LoRA model on the toy task
the user's way (answer-only labels, a stock collator) with the callback watching."""

import ast
import importlib
import inspect
import json
import logging
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from memaudit.callbacks import MLFLOW_PREFIX, MemorizationCallback, subsample_rows
from memaudit.config.presets import LORA_TARGETS
from memaudit.data.poolfile import train_pool
from memaudit.errors import MemauditError
from memaudit.model.lora import lora_state
from memaudit.model.tiny import build_word_tokenizer
from memaudit.model.tokenization import encode_frame
from memaudit.stages.predict import PREDICT_SUMMARY, PREDICTIONS, CPredWatch, layer_psmi, probe
from tests.support.toy_pool import (
    one_torch_thread,  # noqa: F401 (autouse fixture)
    toy_base_model,
    toy_config,
    toy_corpus,
    toy_pool,
)

README = Path(__file__).resolve().parents[1] / "README.md"
RATIO = 0.6  # the toy model's median answer loss about halves in its first epoch; 5 % would need far longer training
SETTINGS = {"loss_ratio": RATIO, "subsample": 16, "psmi_directions": 64, "batch_size": 16, "max_len": 32}
EPOCHS, BATCH, SAVE_STEPS = 3, 4, 5  # 40 samples: 30 steps, a save every 5


def toy_samples() -> pd.DataFrame:
    train = train_pool(toy_pool()).reset_index(drop=True)
    return train[["source_id", "prompt", "options", "label_index"]].rename(columns={"source_id": "id"})


def answer_only(tokenizer, row) -> dict:
    """The user's training row: [BOS] prompt label EOS, labels -100 but on the label token."""
    ids = tokenizer(row.prompt + row.options[row.label_index])["input_ids"] + [tokenizer.eos_token_id]
    return {"input_ids": ids, "labels": [-100] * (len(ids) - 2) + [ids[-2], -100]}


def train(base: Path, samples: pd.DataFrame, out: Path, callbacks=()):
    """A user's Trainer + peft script; returns the trained peft model."""
    tokenizer = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=16, lora_dropout=0.1, target_modules=LORA_TARGETS)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), lora)
    args = TrainingArguments(
        str(out), num_train_epochs=EPOCHS, per_device_train_batch_size=BATCH, learning_rate=1e-2, warmup_steps=1,
        save_steps=SAVE_STEPS, save_only_model=True, use_cpu=True, report_to="none", seed=0, disable_tqdm=True,
        logging_strategy="no",
    )  # fmt: skip
    data = [answer_only(tokenizer, row) for row in samples.itertuples()]
    collator = DataCollatorForSeq2Seq(tokenizer)
    Trainer(model=model, args=args, train_dataset=data, data_collator=collator, callbacks=list(callbacks)).train()
    return model


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    cfg, df = toy_config(), toy_pool()
    base = toy_base_model(cfg, df, tmp_path_factory.getbasetemp() / "tiny-models")
    return base, toy_samples(), AutoTokenizer.from_pretrained(base)


@pytest.fixture(scope="module")
def trained(toy, tmp_path_factory):
    """One training with the callback, inside an MLflow run the user started (sqlite under tmp)."""
    import mlflow

    base, samples, tokenizer = toy
    root = tmp_path_factory.mktemp("callback")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        experiment = mlflow.create_experiment("callback", artifact_location=(root / "artifacts").as_uri())
        callback = MemorizationCallback(samples, tokenizer, layers="all", **SETTINGS)
        with mlflow.start_run(experiment_id=experiment) as run:
            model = train(base, samples, root / "out", [callback])
        client = mlflow.MlflowClient()
        logged = client.get_run(run.info.run_id).data.metrics
        artifacts = sorted(f.path for f in client.list_artifacts(run.info.run_id, MLFLOW_PREFIX))
    return SimpleNamespace(callback=callback, model=model, out=root / "out", metrics=logged, artifacts=artifacts)


@pytest.mark.slow
def test_predictions_rank_every_sample_at_c_pred(toy, trained):
    samples, cb = toy[1], trained.callback
    frame = pd.read_parquet(trained.out / PREDICTIONS)
    assert frame["id"].tolist() == samples["id"].tolist() and frame["label"].tolist() == samples["label_index"].tolist()
    assert sorted(frame["rank"]) == list(range(1, len(samples) + 1))
    assert frame.sort_values("rank")["psmi"].is_monotonic_increasing
    assert (frame["at_risk"] == (frame["psmi"] < 0)).all() and 0 < frame["at_risk"].sum() < len(frame)
    assert (frame["psmi"] == frame["psmi_L2"]).all() and {"psmi_L1", "psmi_L2"} <= set(frame.columns)  # last layer
    pd.testing.assert_frame_equal(frame, cb.predictions)
    summary = json.loads((trained.out / PREDICT_SUMMARY).read_text())
    assert summary == cb.summary and summary["c_pred"]["step"] == cb.c_pred_step
    assert summary["n_at_risk"] == frame["at_risk"].sum() and summary["n_samples"] == len(samples)
    assert summary["c_pred"]["epoch"] == pytest.approx(cb.c_pred_step * BATCH / len(samples))


@pytest.mark.slow
def test_c_pred_is_the_audit_rule_on_the_medians_of_the_saves(trained):
    cb = trained.callback
    steps, medians = cb.summary["c_pred"]["checkpoints"], cb.summary["c_pred"]["median_loss"]
    replay = CPredWatch(RATIO)
    reached = [step for step, m in zip(steps, medians, strict=True) if replay.reached(step, np.array([m]), None)]
    assert reached == [cb.c_pred_step] and steps[-1] == cb.c_pred_step
    assert steps == list(range(0, cb.c_pred_step + 1, SAVE_STEPS))  # every save up to c_pred was measured
    last = EPOCHS * len(cb.rows) // BATCH
    assert cb.c_pred_step < last and (trained.out / f"checkpoint-{last}").is_dir()  # later saves: not measured


@pytest.mark.slow
def test_predictions_are_those_of_the_c_pred_checkpoint(toy, trained):
    base, samples, tokenizer = toy
    cb = trained.callback
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    enc = encode_frame(tokenizer, samples, SETTINGS["max_len"])
    picked = subsample_rows(len(samples), SETTINGS["subsample"], cb.cfg.scoring.psmi_seed)
    start = encode_frame(tokenizer, samples.iloc[picked], SETTINGS["max_len"])
    loss, _ = probe(model, start, tokenizer.pad_token_id, torch.device("cpu"), cb.cfg, [2])
    assert cb.summary["c_pred"]["median_loss"][0] == pytest.approx(np.median(loss), rel=1e-6)  # untrained model
    adapter = PeftModel.from_pretrained(model, trained.out / f"checkpoint-{cb.c_pred_step}")
    _, hidden = probe(adapter, enc, tokenizer.pad_token_id, torch.device("cpu"), cb.cfg, [1, 2])
    values = layer_psmi(hidden, enc.labels, cb.cfg)
    np.testing.assert_allclose(cb.predictions[["psmi_L1", "psmi_L2"]].to_numpy().T, values, rtol=1e-6, atol=1e-9)


@pytest.mark.slow
def test_the_active_mlflow_run_got_the_metrics_and_the_files(trained):
    cb = trained.callback
    assert trained.metrics[f"{MLFLOW_PREFIX}.c_pred_step"] == cb.c_pred_step
    assert trained.metrics[f"{MLFLOW_PREFIX}.n_at_risk"] == cb.summary["n_at_risk"]
    assert trained.metrics[f"{MLFLOW_PREFIX}.share_at_risk"] == pytest.approx(cb.summary["n_at_risk"] / len(cb.rows))
    assert trained.artifacts == [f"{MLFLOW_PREFIX}/{PREDICT_SUMMARY}", f"{MLFLOW_PREFIX}/{PREDICTIONS}"]


class DrawsRandom(TrainerCallback):
    """What the callback must not do: consume the training's random stream (LoRA dropout) at each save."""

    def on_save(self, args, state, control, **kwargs):
        torch.rand(1)


@pytest.mark.slow
def test_training_is_bit_identical_with_and_without_the_callback(toy, trained, tmp_path):
    base, samples, _ = toy
    with_callback = lora_state(trained.model)
    without = lora_state(train(base, samples, tmp_path / "plain"))
    assert with_callback.keys() == without.keys() and len(without) > 0
    assert all(torch.equal(with_callback[k], without[k]) for k in without)
    disturbed = lora_state(train(base, samples, tmp_path / "disturbed", [DrawsRandom()]))
    assert any(not torch.equal(disturbed[k], without[k]) for k in without)  # the comparison can see a change


@pytest.mark.slow
def test_no_c_pred_is_a_warning_and_writes_nothing(toy, tmp_path, caplog):
    base, samples, tokenizer = toy
    callback = MemorizationCallback(samples, tokenizer, **{**SETTINGS, "loss_ratio": 1e-6})
    with caplog.at_level(logging.WARNING, logger="memaudit.callbacks"):
        train(base, samples, tmp_path, [callback])
    assert callback.c_pred_step is None and callback.predictions is None
    assert len(callback.watch.steps) == 1 + EPOCHS * len(samples) // BATCH // SAVE_STEPS
    assert not (tmp_path / PREDICTIONS).exists() and not (tmp_path / PREDICT_SUMMARY).exists()
    assert [r.message for r in caplog.records if "c_pred not reached" in r.message]


def test_a_resumed_training_gets_no_prediction(word_tokenizer, caplog):
    callback = MemorizationCallback(toy_samples(), word_tokenizer)
    resumed = SimpleNamespace(is_world_process_zero=True, global_step=10, epoch=1.0)
    with caplog.at_level(logging.WARNING, logger="memaudit.callbacks"):
        callback.on_train_begin(None, resumed, None, model=None)
        callback.on_save(SimpleNamespace(output_dir="never-written"), resumed, None, model=None)
        callback.on_train_end(None, resumed, None)
    assert callback.watch.steps == [] and callback.c_pred_step is None and not Path("never-written").exists()
    assert [r.message for r in caplog.records if "resumes at step 10" in r.message]


@pytest.fixture(scope="module")
def word_tokenizer():
    return build_word_tokenizer(toy_corpus(toy_pool()))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.drop(columns="options"), "have no column 'options'"),
        (lambda s: s.iloc[:0], "samples are empty"),
        (lambda s: s.to_dict("list"), "must be a pandas DataFrame"),
        (lambda s: s.assign(label_index=s["label_index"].where(s.index != 3, 4)), "row 3: label_index 4 is not"),
        (lambda s: s.assign(options=[["A"]] * len(s)), "row 0: options must be a list of at least two"),
        (lambda s: s.assign(id="same"), "id 'same' appears twice"),
        (lambda s: s.assign(prompt=s["prompt"].str.rstrip(":\n")), "does not tokenize as one final token"),
    ],
)
def test_a_bad_samples_frame_is_one_line(word_tokenizer, change, message):
    with pytest.raises(MemauditError, match=re.escape(message)) as err:
        MemorizationCallback(change(toy_samples()), word_tokenizer)
    assert "\n" not in str(err.value) and err.value.fix


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss_ratio": 1.5}, "loss_ratio=1.5"),
        ({"layers": [-1]}, "layers=[-1]"),
        ({"subsample": 0}, "subsample=0"),
        ({"layers": [1, 2], "layer": 3}, "layer 3 (the layer argument) is not among"),
        ({"max_len": 4}, "max_len=4"),
    ],
)
def test_bad_arguments_are_one_line(word_tokenizer, kwargs, message):
    with pytest.raises(MemauditError, match=re.escape(message)) as err:
        MemorizationCallback(toy_samples(), word_tokenizer, **kwargs)
    assert "\n" not in str(err.value)


def test_a_tracking_failure_is_one_warning_never_an_error(word_tokenizer, monkeypatch, caplog, tmp_path):
    def refuse(*args, **kwargs):
        raise ConnectionError("http://user:secret@mlflow:5000 is down")

    fake = SimpleNamespace(active_run=lambda: object(), log_metrics=refuse, log_artifact=refuse)
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    callback = MemorizationCallback(toy_samples(), word_tokenizer)
    callback.summary = {"n_at_risk": 3, "share_at_risk": 0.1}
    with caplog.at_level(logging.WARNING, logger="memaudit.callbacks"):
        callback._log_mlflow(10, [tmp_path / PREDICTIONS])
        callback._log_mlflow(15, [tmp_path / PREDICTIONS])
    assert [r.message for r in caplog.records] == [
        "MemorizationCallback: not logged to MLflow (ConnectionError: http://***@mlflow:5000 is down)"
    ]


def _readme_example() -> str:
    section = README.read_text().split("## Early warning inside your own training: the Trainer callback", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_example_uses_the_real_api(word_tokenizer):
    code = _readme_example()
    tree = ast.parse(code)
    assert len(code.splitlines()) <= 20
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            assert all(hasattr(module, alias.name) for alias in node.names), node.module
    calls = [
        n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "MemorizationCallback"
    ]
    assert len(calls) == 1 and len(calls[0].args) == 2
    parameters = inspect.signature(MemorizationCallback).parameters
    assert {k.arg for k in calls[0].keywords} <= set(parameters)
    callback = MemorizationCallback(toy_samples(), word_tokenizer)
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and getattr(n.value, "id", "") == "watch"}
    assert used and all(hasattr(callback, name) for name in used)
    assert re.search(rf"\b{re.escape(PREDICTIONS)}\b", code) and 'query("at_risk")' in code
