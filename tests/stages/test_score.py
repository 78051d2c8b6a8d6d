import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from memaudit.cli import main
from memaudit.data.poolfile import train_pool, validate_pool, write_pool
from memaudit.errors import MemauditError
from memaudit.metrics import mahalanobis, psmi
from memaudit.model.loading import load_base_model, load_tokenizer
from memaudit.model.lora import apply_lora, load_adapter_weights
from memaudit.model.tokenization import encode_frame
from memaudit.stages.finetune import finetune
from memaudit.stages.score import score_shadow
from memaudit.stages.scorefile import REQUIRED, read_scores
from tests.support.toy_pool import (
    TOY_SETS,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    toy_base_model,
    toy_config,
    toy_members,
    toy_pool,
)

pytestmark = pytest.mark.slow  # trains and scores a tiny model


def _pool_with_fewer_options() -> pd.DataFrame:
    """The toy pool where two train rows and one test row offer only options A and B."""
    df = toy_pool()
    for row in [*df.index[df["split"] == "train"][[1, 7]].tolist(), df.index[-1]]:
        df.at[row, "options"] = ["A", "B"]
        df.loc[row, ["gold_index", "label_index"]] = df.loc[row, ["gold_index", "label_index"]] % 2
    return validate_pool(df)


@pytest.fixture(scope="module")
def shadow(tmp_path_factory):
    """Shadow 0 of the toy pool, trained once: (cfg, pool, base folder, member, checkpoints folder)."""
    cfg = toy_config()
    df = _pool_with_fewer_options()
    base = toy_base_model(cfg, toy_pool(), tmp_path_factory.getbasetemp() / "tiny-models")
    member = toy_members(len(train_pool(df)))
    ckpts = tmp_path_factory.mktemp("shadow0")
    finetune(cfg, df, member, 0, base, ckpts, device="cpu", progress=False)
    return cfg, df, base, member, ckpts


@pytest.fixture(scope="module")
def scores(shadow, tmp_path_factory):
    cfg, df, base, member, ckpts = shadow
    path = score_shadow(cfg, df, member, 0, base, ckpts, tmp_path_factory.mktemp("s") / "scores.npz", device="cpu",
                        progress=False)  # fmt: skip
    return read_scores(path)


def test_score_file_schema(shadow, scores):
    _cfg, df, _, member, _ = shadow
    train, test = train_pool(df), df[df["split"] == "test"]
    n, t, c = len(train), len(test), 4
    assert set(REQUIRED) <= scores.keys()
    assert scores["checkpoints"].tolist() == [0, 2, 5, 10] and scores["epochs"].tolist() == [0.0, 0.4, 1.0, 2.0]
    np.testing.assert_array_equal(scores["global_index"], train["global_index"])
    np.testing.assert_array_equal(scores["label_index"], train["label_index"])
    np.testing.assert_array_equal(scores["member"], member)
    assert scores["option_logits"].shape == (c, n, 4) and scores["loss"].shape == (c, n)
    assert scores["layers"].tolist() == [1, 2] and scores["psmi"].shape == (c, 2, n)
    assert scores["shadow"] == 0 and "hidden" not in scores
    np.testing.assert_array_equal(scores["test_global_index"], test["global_index"])
    assert scores["test_option_logits"].shape == (c, t, 4) and scores["test_loss"].shape == (c, t)
    for key in ("psmi", "psmi_std", "mahalanobis"):
        assert np.isnan(scores[key][:, :, ~member]).all() and np.isfinite(scores[key][:, :, member]).all()
    assert (scores["psmi_std"][:, :, member] > 0).all()
    # two-option rows: slots C and D are absent (-inf), the others finite
    two = np.array([len(o) == 2 for o in train["options"]])
    assert np.isneginf(scores["option_logits"][:, two, 2:]).all()
    assert (
        np.isfinite(scores["option_logits"][:, ~two]).all() and np.isfinite(scores["option_logits"][:, two, :2]).all()
    )
    assert np.isneginf(scores["test_option_logits"][:, -1, 2:]).all()


def test_scores_match_an_independent_full_sequence_forward(shadow, scores):
    """Per row, unbatched, full-sequence logits of the final checkpoint's adapter: same logits and loss."""
    cfg, df, base, _, ckpts = shadow
    tok = load_tokenizer(cfg.model, base)
    model = apply_lora(load_base_model(cfg.model, base), cfg.lora, seed=99)
    load_adapter_weights(model, ckpts / "ckpt-10" / "adapter", cfg.lora)
    model.eval()
    frame = pd.concat([train_pool(df), df[df["split"] == "test"]], ignore_index=True)
    enc = encode_frame(tok, frame, cfg.training.max_len)
    logits_all = np.concatenate([scores["option_logits"][-1], scores["test_option_logits"][-1]])
    loss_all = np.concatenate([scores["loss"][-1], scores["test_loss"][-1]])
    with torch.no_grad():
        for i in [0, 1, 7, 13, len(frame) - 1]:
            logits = model(input_ids=torch.as_tensor(enc.input_ids[i])[None]).logits[0, -3]
            ids = [t for t in enc.option_ids[i] if t >= 0]
            np.testing.assert_allclose(logits_all[i, : len(ids)], logits[ids].numpy(), rtol=1e-5, atol=1e-5)
            want = F.cross_entropy(logits, torch.tensor(enc.labels[i])).item()
            assert loss_all[i] == pytest.approx(want, rel=1e-5)


def test_members_loss_falls_over_checkpoints(shadow, scores):
    member = shadow[3]
    median = np.median(scores["loss"][:, member], axis=1)
    assert median[-1] < 0.7 * median[0]


def test_same_seed_gives_identical_score_files(shadow, scores, tmp_path):
    cfg, df, base, member, ckpts = shadow
    again = read_scores(score_shadow(cfg, df, member, 0, base, ckpts, tmp_path / "again.npz", progress=False))
    assert again.keys() == scores.keys()
    for key in scores:
        np.testing.assert_array_equal(again[key], scores[key], err_msg=key)


def test_all_layers_is_every_block_of_the_model(shadow, scores, tmp_path):
    _, df, base, member, ckpts = shadow  # the toy model has 2 blocks; the fixture scores layers [1, 2]
    every = toy_config("model.layers=all")
    got = read_scores(score_shadow(every, df, member, 0, base, ckpts, tmp_path / "all.npz", progress=False))
    assert got["layers"].tolist() == [1, 2]
    np.testing.assert_array_equal(got["psmi"], scores["psmi"])
    with pytest.raises(MemauditError, match=r"model.layers \[3\] out of range .* which has 2 layers"):
        score_shadow(toy_config("model.layers=[1, 3]"), df, member, 0, base, ckpts, tmp_path / "x.npz", progress=False)


def test_sample_outputs_do_not_depend_on_batch_mates(shadow, scores, tmp_path):
    _cfg, df, base, member, ckpts = shadow
    single = toy_config("scoring.batch_size=1", "model.layers=[]")
    alone = read_scores(score_shadow(single, df, member, 0, base, ckpts, tmp_path / "b1.npz", progress=False))
    np.testing.assert_allclose(alone["option_logits"], scores["option_logits"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(alone["loss"], scores["loss"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(alone["test_loss"], scores["test_loss"], rtol=1e-5, atol=1e-5)
    assert alone["psmi"].shape == (4, 0, len(member))


def test_stored_hidden_states_give_the_stored_psmi(shadow, tmp_path):
    cfg, df, base, member, ckpts = shadow
    cfg = toy_config("scoring.store_hidden=true")
    s = read_scores(score_shadow(cfg, df, member, 0, base, ckpts, tmp_path / "h.npz", progress=False))
    assert s["hidden"].dtype == np.float16 and s["hidden"].shape == (4, 2, len(member), 32)
    labels = encode_frame(load_tokenizer(cfg.model, base), train_pool(df)[member], cfg.training.max_len).labels
    features = s["hidden"][2, 1, member].astype(np.float64)  # checkpoint 5, layer 2
    want = psmi(features, labels, n_directions=cfg.scoring.psmi_directions, seed=cfg.scoring.psmi_seed)
    np.testing.assert_allclose(s["psmi"][2, 1, member], want, atol=2e-2)
    maha = mahalanobis(features, n_components=cfg.scoring.mahalanobis_components)
    np.testing.assert_allclose(s["mahalanobis"][2, 1, member], maha, rtol=2e-2)


def test_bad_inputs(shadow, tmp_path):
    cfg, df, base, member, ckpts = shadow
    out = tmp_path / "scores.npz"
    with pytest.raises(MemauditError, match=r"lacks 4 of 4 complete checkpoints"):
        score_shadow(cfg, df, member, 0, base, tmp_path, out, progress=False)
    longer = toy_config("training.epochs=3")
    with pytest.raises(MemauditError, match=r"lacks 1 of 5 .*ckpt-15"):
        score_shadow(longer, df, member, 0, base, ckpts, out, progress=False)
    with pytest.raises(MemauditError, match="trained with r=4"):
        score_shadow(toy_config("lora.r=2"), df, member, 0, base, ckpts, out, progress=False)
    with pytest.raises(MemauditError, match="shape"):
        score_shadow(cfg, df, member[1:], 0, base, ckpts, out, progress=False)
    assert not out.exists()


def test_a_checkpoint_that_differs_from_its_seal_is_refused(shadow, tmp_path):
    cfg, df, base, member, ckpts = shadow
    copy = tmp_path / "ckpts"
    shutil.copytree(ckpts, copy)
    weights = next((copy / "ckpt-5" / "adapter").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)
    with pytest.raises(MemauditError, match=r"ckpt-5 does not match its COMPLETE marker \(adapter/.*safetensors\)"):
        score_shadow(cfg, df, member, 0, base, copy, tmp_path / "scores.npz", progress=False)


def _cli(*args: str) -> int:
    with pytest.raises(SystemExit) as exc:
        main([*args])
    return exc.value.code


def test_cli_finetune_and_score(shadow, tmp_path, capsys):
    _, df, base, _, ckpts = shadow
    write_pool(df, tmp_path / "pool.parquet")
    members = np.stack([toy_members(len(train_pool(df)), s) for s in range(2)])
    np.save(tmp_path / "member.npy", members)
    sets = [arg for s in TOY_SETS for arg in ("--set", s)]
    common = ["--preset", "demo", *sets, "--pool", str(tmp_path / "pool.parquet"), "--members"]
    common += [str(tmp_path / "member.npy"), "--shadow", "1", "--device", "cpu", "--quiet"]
    main(["stage", "finetune", *common, "--output", str(tmp_path / "s1"), "--base-model", str(base)])
    assert "shadow 1: 10 steps, final loss" in capsys.readouterr().out
    main(["stage", "score", *common, "--checkpoints", str(tmp_path / "s1"), "--output", str(tmp_path / "s1.npz"),
          "--base-model", str(base)])  # fmt: skip
    s = read_scores(tmp_path / "s1.npz")
    np.testing.assert_array_equal(s["member"], members[1])
    assert s["shadow"] == 1

    capsys.readouterr()
    assert _cli("stage", "score", *common, "--checkpoints", str(tmp_path / "s1"), "--output", "x.npz") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model 'tiny-llama' is built locally") and err.count("\n") == 1
    np.save(tmp_path / "member.npy", members.astype(np.int8))
    assert _cli("stage", "finetune", *common, "--output", str(tmp_path / "s9"), "--base-model", str(base)) == 2
    assert "expected a 2-D bool matrix" in capsys.readouterr().err
    np.save(tmp_path / "member.npy", members)
    bad_shadow = [*common[:-4], "7", "--device", "cpu"]
    assert _cli("stage", "finetune", *bad_shadow, "--output", str(tmp_path / "s9")) == 2
    assert "shadow 7 out of range 0..1" in capsys.readouterr().err
    (tmp_path / "member.npy").write_bytes(b"not numpy")
    assert _cli("stage", "finetune", *common, "--output", str(tmp_path / "s9")) == 2
    assert "is not a readable .npy file" in capsys.readouterr().err
    assert not (tmp_path / "s9").exists()
    assert ckpts.is_dir()
