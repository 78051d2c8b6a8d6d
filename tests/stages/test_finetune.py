import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from memaudit.data.poolfile import train_pool
from memaudit.errors import MemauditError
from memaudit.model.forward import answer_forward
from memaudit.model.loading import load_base_model, load_tokenizer
from memaudit.model.lora import apply_lora
from memaudit.model.tokenization import encode_frame
from memaudit.stages.finetune import finetune
from memaudit.stages.schedule import checkpoint_schedule, steps_per_epoch
from memaudit.stages.score import score_shadow
from memaudit.stages.scorefile import read_scores
from memaudit.store.layout import TRAIN_LOG as LOG_FILE
from memaudit.store.layout import TRAINER_STATE as STATE_FILE
from memaudit.store.seal import MARKER as COMPLETE_MARKER
from tests.support.toy_pool import (
    one_torch_thread,  # noqa: F401 (autouse fixture)
    toy_base_model,
    toy_config,
    toy_members,
    toy_pool,
)

pytestmark = pytest.mark.slow  # trains tiny models

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize(
    ("n_members", "save", "epoch_steps"),
    [(1000, 50, 250), (7940, 397, 1985), (15000, 750, 3750)],  # ARC, ETHICS, MMLU (docs/method.md §1.5, §3.4)
)
def test_paper_checkpoint_schedules(n_members, save, epoch_steps):
    schedule = checkpoint_schedule(n_members, 2, 2, 10, 5, 1)
    assert steps_per_epoch(n_members, 2, 2) == epoch_steps
    expected = [0, *(k * save for k in range(1, 6)), *(e * epoch_steps for e in range(2, 11))]
    assert [s for s, _ in schedule] == expected and len(schedule) == 15
    np.testing.assert_allclose([e for _, e in schedule], [0, 0.2, 0.4, 0.6, 0.8, *range(1, 11)])


def test_schedule_keeps_epoch_ends_and_final_step_when_not_divisible():
    # 533 members, batch 8: 67 steps/epoch, save_steps 13; every 3 epochs of 8
    steps = [s for s, _ in checkpoint_schedule(533, 8, 1, 8, 5, 3)]
    assert steps == [0, 13, 26, 39, 52, 67, 201, 402, 536]
    assert checkpoint_schedule(10, 8, 1, 3, 5, 1) == [(0, 0.0), (1, 0.8), (2, 1.6), (4, 3.2), (6, 4.8)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = toy_config()
    df = toy_pool()
    base = toy_base_model(cfg, df, tmp_path_factory.getbasetemp() / "tiny-models")
    return cfg, df, base, toy_members(len(train_pool(df)))


@pytest.fixture(scope="module")
def trained(setup, tmp_path_factory):
    cfg, df, base, member = setup
    out = tmp_path_factory.mktemp("shadow0")
    logged, saved = [], []
    log = finetune(
        cfg, df, member, 0, base, out, device="cpu", progress=False,
        on_log=lambda step, metrics: logged.append((step, metrics)),
        on_checkpoint=lambda step, path: saved.append((step, path, (path / COMPLETE_MARKER).is_file())),
    )  # fmt: skip
    return out, log, logged, saved


def _adapter(path):
    return load_file(path / "adapter" / "adapter_model.safetensors")


def _assert_same_adapters(a, b):
    ta, tb = _adapter(a), _adapter(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


def test_finetune_writes_scheduled_checkpoints_and_log(trained):
    out, log, logged, saved = trained
    assert [(s, p.name, done) for s, p, done in saved] == [(s, f"ckpt-{s}", True) for s in (0, 2, 5, 10)]
    assert [c["step"] for c in log["checkpoints"]] == [0, 2, 5, 10]
    assert [c["epoch"] for c in log["checkpoints"]] == [0.0, 0.4, 1.0, 2.0]
    assert [p.parent.name for p in out.glob(f"ckpt-*/{STATE_FILE}")] == ["ckpt-10"]  # optimizer state: latest only
    assert all(len(_adapter(out / f"ckpt-{s}")) > 0 for s in (0, 2, 5, 10))
    assert json.loads((out / LOG_FILE).read_text()) == log
    assert log["total_steps"] == 10 and log["n_members"] == 20 and log["tokens"] > 0
    assert log["tokens_per_s"] > 0 and log["wall_time_s"] > 0 and log["peak_memory_bytes"] > 0
    assert [step for step, _ in logged] == [c["step"] for c in log["loss"]] and logged[-1][0] == 10
    assert {"loss", "learning_rate", "grad_norm", "epoch", "tokens_per_s"} <= logged[0][1].keys()
    assert logged[-1][1]["learning_rate"] == 0.0  # linear decay to 0 at the last step


def test_training_loss_falls(trained):
    curve = [c["loss"] for c in trained[1]["loss"]]
    assert np.mean(curve[-3:]) < 0.8 * np.mean(curve[:3])


def test_step0_loss_is_answer_token_cross_entropy_over_full_vocab(setup, tmp_path):
    cfg, df, base, member = setup
    one_step = toy_config("training.epochs=1", "training.batch_size=32", "training.learning_rate=1e-9")
    log = finetune(one_step, df, member, 0, base, tmp_path, device="cpu", progress=False)
    # by hand: the whole member set in one batch, full-sequence logits of the untrained (identity) adapter
    tok = load_tokenizer(cfg.model, base)
    model = apply_lora(load_base_model(cfg.model, base), one_step.lora, seed=0)
    model.train()  # dropout is on during training; LoRA B = 0 at step 0 makes it irrelevant
    enc = encode_frame(tok, train_pool(df)[member], cfg.training.max_len)
    losses = []
    with torch.no_grad():
        for row, label in zip(enc.input_ids, enc.labels, strict=True):
            logits = model(input_ids=torch.as_tensor(row)[None]).logits[0, -3]
            losses.append(F.cross_entropy(logits, torch.tensor(label)).item())
    assert log["loss"][0]["step"] == 1
    assert log["loss"][0]["loss"] == pytest.approx(np.mean(losses), rel=1e-5)


def test_same_seed_gives_identical_adapters(setup, trained, tmp_path):
    cfg, df, base, member = setup
    finetune(cfg, df, member, 0, base, tmp_path, device="cpu", progress=False)
    for step in (0, 2, 5, 10):
        _assert_same_adapters(trained[0] / f"ckpt-{step}", tmp_path / f"ckpt-{step}")
    other = finetune(cfg, df, member, 1, base, tmp_path / "s1", device="cpu", progress=False)
    assert other["shadow"] == 1
    a, b = _adapter(trained[0] / "ckpt-0"), _adapter(tmp_path / "s1" / "ckpt-0")
    assert any(not torch.equal(a[k], b[k]) for k in a)  # LoRA init seeded by lora.seed + shadow


class Killed(Exception):
    pass


def test_resumed_run_equals_uninterrupted_run(setup, trained, tmp_path):
    cfg, df, base, member = setup

    def kill_after_2(step, path):
        if step == 2:
            raise Killed

    with pytest.raises(Killed):
        finetune(cfg, df, member, 0, base, tmp_path, device="cpu", progress=False, on_checkpoint=kill_after_2)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-0", "ckpt-2"]
    (tmp_path / ".ckpt-5.tmp").mkdir()  # a half-written checkpoint of the killed run
    (tmp_path / ".ckpt-5.tmp" / "junk").write_text("x")
    saved = []
    log = finetune(cfg, df, member, 0, base, tmp_path, device="cpu", progress=False,
                   on_checkpoint=lambda step, path: saved.append(step))  # fmt: skip
    assert saved == [5, 10]  # continued from ckpt-2
    for step in (0, 2, 5, 10):
        _assert_same_adapters(trained[0] / f"ckpt-{step}", tmp_path / f"ckpt-{step}")
    assert [c["loss"] for c in log["loss"]] == pytest.approx([c["loss"] for c in trained[1]["loss"]], rel=1e-6)
    assert [c["step"] for c in log["checkpoints"]] == [0, 2, 5, 10]
    assert not (tmp_path / ".ckpt-5.tmp").exists()


def test_complete_run_is_skipped_without_loading_the_model(setup, trained):
    cfg, df, _, member = setup
    # base_model=None would fail for tiny-llama if the model were loaded
    assert finetune(cfg, df, member, 0, None, trained[0], device="cpu", progress=False) == trained[1]


def test_run_killed_before_its_final_log_only_rewrites_the_log(setup, trained, tmp_path):
    cfg, df, base, member = setup
    shutil.copytree(trained[0], tmp_path / "s0")
    stale = {**trained[1], "checkpoints": trained[1]["checkpoints"][:3]}  # the log written at ckpt-5
    (tmp_path / "s0" / LOG_FILE).write_text(json.dumps(stale))
    saved = []
    log = finetune(cfg, df, member, 0, base, tmp_path / "s0", device="cpu", progress=False,
                   on_checkpoint=lambda step, path: saved.append(step))  # fmt: skip
    assert saved == [] and log["checkpoints"] == trained[1]["checkpoints"] and log["loss"] == trained[1]["loss"]
    _assert_same_adapters(trained[0] / "ckpt-10", tmp_path / "s0" / "ckpt-10")


def test_corrupted_trainer_state_is_a_clear_error(setup, trained, tmp_path):
    cfg, df, base, member = setup
    shutil.copytree(trained[0], tmp_path / "s0", ignore=shutil.ignore_patterns("ckpt-10", LOG_FILE))
    shutil.copy(trained[0] / "ckpt-10" / STATE_FILE, tmp_path / "s0" / "ckpt-5" / STATE_FILE)
    (tmp_path / "s0" / "ckpt-5" / STATE_FILE).write_bytes(b"truncated")
    with pytest.raises(MemauditError, match=r"trainer state .*ckpt-5.* is unreadable"):
        finetune(cfg, df, member, 0, base, tmp_path / "s0", device="cpu", progress=False)


def test_bad_inputs(setup, trained, tmp_path):
    cfg, df, base, member = setup
    with pytest.raises(MemauditError, match="shape"):
        finetune(cfg, df, member[:-1], 0, base, tmp_path, progress=False)
    with pytest.raises(MemauditError, match="dtype"):
        finetune(cfg, df, member.astype(int), 0, base, tmp_path, progress=False)
    with pytest.raises(MemauditError, match="no training members"):
        finetune(cfg, df, np.zeros_like(member), 0, base, tmp_path, progress=False)
    with pytest.raises(MemauditError, match="another run"):
        finetune(cfg, df, member, 3, base, trained[0], progress=False)  # shadow 0's folder
    with pytest.raises(MemauditError, match="already holds checkpoints"):
        finetune(cfg, df, member, 0, base, trained[0], progress=False, resume=False)
    with pytest.raises(MemauditError, match="lacks column"):
        finetune(cfg, df.drop(columns=["label_index"]), member, 0, base, tmp_path, progress=False)
    assert sorted(p.name for p in trained[0].glob("ckpt-*")) == ["ckpt-0", "ckpt-10", "ckpt-2", "ckpt-5"]


@pytest.mark.gpu
@cuda
def test_bf16_autocast_training_on_cuda(setup, tmp_path):
    _, df, base, member = setup
    cfg = toy_config("model.autocast_bf16=true", "model.dtype=float32")
    log = finetune(cfg, df, member, 0, base, tmp_path, device="cuda", progress=False)
    assert log["autocast_bf16"] and log["peak_memory_kind"] == "cuda_max_allocated"
    curve = [c["loss"] for c in log["loss"]]
    assert np.mean(curve[-3:]) < 0.8 * np.mean(curve[:3])


def test_exact_precision_switch_trains_and_scores_on_the_cpu(setup, trained, tmp_path):
    """model.dtype=float32 + model.autocast_bf16=true: the authors' fp32 weights under bf16 compute."""
    cfg, df, base, member = setup
    exact = toy_config("model.dtype=float32", "model.autocast_bf16=true")
    assert exact.fingerprint() != cfg.fingerprint()
    log = finetune(exact, df, member, 0, base, tmp_path / "exact", device="cpu", progress=False)
    assert log["autocast_bf16"] and not trained[1]["autocast_bf16"]
    exact_curve, fp32_curve = ([c["loss"] for c in run["loss"]] for run in (log, trained[1]))
    assert np.mean(exact_curve[-3:]) < 0.8 * np.mean(exact_curve[:3])  # it trains
    assert exact_curve != fp32_curve  # bf16 compute is not fp32 compute ...
    np.testing.assert_allclose(exact_curve, fp32_curve, rtol=0.1)  # ... but close to it
    scores = score_shadow(exact, df, member, 0, base, tmp_path / "exact", tmp_path / "scores.npz", progress=False)
    arrays = read_scores(scores)
    assert np.isfinite(arrays["loss"]).all() and np.isfinite(arrays["psmi"][:, :, member]).all()
    with pytest.raises(MemauditError, match="set dtype float32"):
        toy_config("model.autocast_bf16=true", "model.dtype=bfloat16")


def test_answer_forward_matches_full_sequence_logits(setup):
    cfg, df, base, _ = setup
    tok = load_tokenizer(cfg.model, base)
    model = load_base_model(cfg.model, base)
    enc = encode_frame(tok, train_pool(df).iloc[:6], cfg.training.max_len)
    with torch.no_grad():
        logits, hidden = answer_forward(model, enc.input_ids, tok.pad_token_id, torch.device("cpu"), layers=[0, 2])
        for i, row in enumerate(enc.input_ids):
            full = model(input_ids=torch.as_tensor(row)[None], output_hidden_states=True)
            torch.testing.assert_close(logits[i], full.logits[0, -3], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(hidden[1][i], full.hidden_states[2][0, -3], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(hidden[0][i], model.get_input_embeddings()(torch.as_tensor(row[-3])))
