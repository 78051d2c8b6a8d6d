import json

import numpy as np
import pandas as pd
import pytest

from memaudit.cli import main
from memaudit.config import load_config
from memaudit.data.poolfile import write_pool
from memaudit.errors import MemauditError
from memaudit.metrics import fpr_at_tpr, lira, logit_gap, prediction_checkpoint, roc
from memaudit.stages.aggregate import aggregate
from memaudit.stages.scorefile import read_scores, write_scores
from memaudit.testing import write_synthetic_scores

N_MODELS, N_SAMPLES = 16, 400
SMI_LAYERS = [1, 2, 3, 4, 8, 16, 24, 29, 30, 31, 32]  # the authors' default layers (docs/method.md §3.1)


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    root = tmp_path_factory.mktemp("scores")
    synthetic = write_synthetic_scores(root, n_models=N_MODELS, n_samples=N_SAMPLES, layers=(1, 3), seed=3)
    write_pool(synthetic.pool, root / "pool.parquet")
    return synthetic, root


@pytest.fixture(scope="module")
def result(population, tmp_path_factory):
    synthetic, _ = population
    out = tmp_path_factory.mktemp("aggregate")
    cfg = load_config(overrides=["shadows.target=2"])  # paper mode: online LiRA with per-sample variances
    summary = aggregate(cfg, list(reversed(synthetic.paths)), synthetic.pool, out, progress=False)
    return summary, out, cfg


def test_planted_memorization_is_recovered(population, result):
    synthetic, _ = population
    summary, out, _ = result
    samples = pd.read_parquet(out / "samples.parquet")
    members = samples["member"].to_numpy()
    np.testing.assert_array_equal(members, synthetic.member[2])
    assert roc(synthetic.planted[members], samples["lira"].to_numpy()[members]).auc() >= 0.95
    assert summary["n_memorized"] == samples["memorized"].sum() == round(0.1 * members.sum())
    assert not samples["memorized"][~members].any()
    assert summary["enrichment"]["share_memorized_wrong"] > 5 * summary["enrichment"]["share_memorized_clean"]


def test_target_lira_and_predictors_match_a_direct_computation(population, result):
    synthetic, _ = population
    summary, out, _ = result
    samples = pd.read_parquet(out / "samples.parquet")
    files = [read_scores(p) for p in synthetic.paths]
    label = files[0]["label_index"]
    final = np.stack([logit_gap(f["option_logits"][-1], label) for f in files])
    others = [m for m in range(N_MODELS) if m != 2]
    expected = lira(final[2], final[others], synthetic.member[others])
    np.testing.assert_allclose(samples["lira"], expected, rtol=1e-12)
    train = synthetic.pool[synthetic.pool["split"] == "train"]
    assert samples["prompt"].tolist() == train["prompt"].tolist()  # for the report's at-risk table
    labels = [options[i] for options, i in zip(train["options"], train["label_index"], strict=True)]
    assert samples["label"].tolist() == labels

    target = files[2]
    medians = np.median(target["loss"][:, target["member"]], axis=1)
    c = prediction_checkpoint(medians, 0.05)[0]
    assert summary["c_pred"]["index"] == c and summary["c_pred"]["rule"] == "auto"
    assert summary["c_pred"]["epoch"] == target["epochs"][c]
    early = lira(logit_gap(target["option_logits"][c], label), final[others], synthetic.member[others])
    np.testing.assert_allclose(samples["early_lira"], early, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(samples["psmi_L3"], target["psmi"][c, 1], rtol=1e-6)
    np.testing.assert_allclose(samples["loss"], target["loss"][c], rtol=1e-6)
    slope = (target["psmi"][c, 1].astype(np.float64) - target["psmi"][0, 1])[target["member"]]
    np.testing.assert_allclose(samples["psmi_slope_L3"].to_numpy()[target["member"]], slope, rtol=1e-12)
    assert samples["psmi_slope_L3"][~target["member"]].isna().all()
    if "psmi_std" in target:
        np.testing.assert_allclose(samples["psmi_std_L3"], target["psmi_std"][c, 1], rtol=1e-6)

    members, flags = samples["member"].to_numpy(), samples["memorized"].to_numpy()
    psmi_fpr = fpr_at_tpr(flags[members], -samples["psmi_L3"].to_numpy()[members])
    assert summary["predictors"]["psmi_L3"]["target"]["fpr_at_tpr"] == psmi_fpr
    fprs = [summary["predictors"][f"psmi_L{layer}"]["target"]["fpr_at_tpr"] for layer in (1, 3)]
    assert summary["best_layer"]["layer"] == (1, 3)[int(np.argmin(fprs))]
    predicted = samples["psmi_L3"].to_numpy()[members] < 0
    assert summary["off_the_shelf"] == {
        "layer": 3,
        "fpr": predicted[~flags[members]].mean(),
        "tpr": predicted[flags[members]].mean(),
    }


def test_summary_roc_and_timeline(result):
    summary, out, cfg = result
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["n_models"] == N_MODELS and summary["n_shadows_used"] == N_MODELS - 1
    assert summary["shadow_ids"][0] == 2 and sorted(summary["shadow_ids"]) == list(range(N_MODELS))
    assert summary["evaluation_fingerprint"] == cfg.evaluation_fingerprint()
    names = ["psmi_L1", "psmi_L3", "loss", "logit_gap", "mahalanobis_L1", "mahalanobis_L3", "early_lira"]
    assert list(summary["predictors"]) == names
    for name in names:
        spread = summary["predictors"][name]["all_models"]
        assert spread["n_models"] == N_MODELS and 0 <= spread["fpr_at_tpr"]["mean"] <= 1
    # the planted signal makes P-SMI at the deeper layer, and the loss, useful predictors on every model
    assert summary["predictors"]["psmi_L3"]["all_models"]["auc"]["mean"] > 0.8
    assert summary["predictors"]["loss"]["all_models"]["auc"]["mean"] > 0.6
    curves = pd.read_parquet(out / "roc.parquet")
    assert set(curves["predictor"]) == set(names)
    first = curves[curves["predictor"] == "loss"]
    assert first["fpr"].is_monotonic_increasing and first["tpr"].iloc[-1] == 1.0
    timeline = pd.read_parquet(out / "timeline.parquet")
    assert len(timeline) == 15 * len(names)
    at_c = timeline[(timeline["checkpoint"] == summary["c_pred"]["step"]) & (timeline["predictor"] == "psmi_L3")]
    assert at_c["fpr_at_tpr"].item() == summary["predictors"]["psmi_L3"]["target"]["fpr_at_tpr"]
    assert timeline["median_test_loss"].notna().all()


def test_config_rules(population, tmp_path):
    synthetic, _ = population
    cfg = load_config(overrides=["evaluation.c_pred=40", "evaluation.lira_mode=offline"])
    summary = aggregate(cfg, synthetic.paths[:4], synthetic.pool, tmp_path, progress=False)
    assert summary["c_pred"] == {**summary["c_pred"], "step": 40, "rule": "forced"}
    assert summary["n_shadows_used"] == 3 and summary["lira_mode"] == "offline"
    with pytest.raises(MemauditError, match="not a stored checkpoint"):
        aggregate(load_config(overrides=["evaluation.c_pred=41"]), synthetic.paths[:3], synthetic.pool, tmp_path)
    strict = load_config(overrides=["evaluation.memorized_rule=threshold", "evaluation.memorized_threshold=1000"])
    with pytest.raises(MemauditError, match="marks 0 of"):
        aggregate(strict, synthetic.paths[:3], synthetic.pool, tmp_path, progress=False)


def test_off_the_shelf_layer_is_a_setting(population, tmp_path):
    synthetic, _ = population  # layers 1 and 3
    summary = aggregate(
        load_config(overrides=["evaluation.off_the_shelf_layer=1"]), synthetic.paths, synthetic.pool, tmp_path
    )
    samples = pd.read_parquet(tmp_path / "samples.parquet")
    members = samples["member"].to_numpy()
    flags = samples["memorized"].to_numpy()[members]
    predicted = samples["psmi_L1"].to_numpy()[members] < 0
    assert summary["off_the_shelf"] == {"layer": 1, "fpr": predicted[~flags].mean(), "tpr": predicted[flags].mean()}
    missing = load_config(overrides=["evaluation.off_the_shelf_layer=2"])
    with pytest.raises(MemauditError, match=r"off_the_shelf_layer 2 is not among the computed layers \[1, 3\]"):
        aggregate(missing, synthetic.paths, synthetic.pool, tmp_path / "other")


def test_inconsistent_inputs(population, tmp_path):
    synthetic, _ = population
    cfg = load_config()
    with pytest.raises(MemauditError, match="at least 2 score files"):
        aggregate(cfg, synthetic.paths[:1], synthetic.pool, tmp_path)
    with pytest.raises(MemauditError, match="no score file for the target shadow 0"):
        aggregate(cfg, synthetic.paths[1:3], synthetic.pool, tmp_path)
    with pytest.raises(MemauditError, match="repeat shadow ids"):
        aggregate(cfg, [synthetic.paths[0]] * 2, synthetic.pool, tmp_path)
    arrays = read_scores(synthetic.paths[1])
    arrays["global_index"] = arrays["global_index"][::-1].copy()
    odd = write_scores(tmp_path / "odd" / "shadow-1.npz", **arrays)
    with pytest.raises(MemauditError, match="different global_index"):
        aggregate(cfg, [synthetic.paths[0], odd], synthetic.pool, tmp_path)
    with pytest.raises(MemauditError, match="differs from the pool"):
        aggregate(cfg, synthetic.paths[:3], synthetic.pool.iloc[1:], tmp_path)
    arrays = read_scores(synthetic.paths[2])
    arrays["option_logits"][-1, 5, 0] = np.nan  # a diverged shadow
    diverged = write_scores(tmp_path / "nan" / "shadow-2.npz", **arrays)
    with pytest.raises(MemauditError, match=r"^aggregate: option logits contain NaN; fix: check the score files"):
        aggregate(cfg, [*synthetic.paths[:2], diverged], synthetic.pool, tmp_path)
    assert not (tmp_path / "samples.parquet").exists()


def test_cli(population, tmp_path, capsys):
    synthetic, root = population
    paths = [str(p) for p in synthetic.paths[:5]]
    listing = tmp_path / "scores.txt"
    listing.write_text("\n".join(paths[2:]) + "\n")
    args = ["stage", "aggregate", "--pool", str(root / "pool.parquet"), "--output", str(tmp_path / "out"), "-q"]
    main([*args, "--scores", *paths[:2], "--scores-list", str(listing)])
    printed = capsys.readouterr().out
    assert "psmi_L3" in printed and "c_pred: step" in printed
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["n_models"] == 5

    broken = tmp_path / "shadow-4.npz"
    broken.write_bytes(synthetic.paths[4].read_bytes()[:5000])
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--scores", *paths[:4], str(broken)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: score file") and "corrupted" in err and "\n" not in err


def test_files_without_mahalanobis(tmp_path):
    synthetic = write_synthetic_scores(
        tmp_path / "s", n_models=6, n_samples=120, layers=(5, 7), with_mahalanobis=False, seed=1
    )
    cfg = load_config(overrides=["evaluation.lira_mode=global"])
    summary = aggregate(cfg, synthetic.paths, synthetic.pool, tmp_path / "out", progress=False)
    assert list(summary["predictors"]) == ["psmi_L5", "psmi_L7", "loss", "logit_gap", "early_lira"]
    samples = pd.read_parquet(tmp_path / "out" / "samples.parquet")
    target = read_scores(synthetic.paths[0])
    c = summary["c_pred"]["index"]
    np.testing.assert_array_equal(samples["logit_gap"], logit_gap(target["option_logits"][c], target["label_index"]))
    np.testing.assert_array_equal(samples["psmi_L7"], target["psmi"][c, 1].astype(np.float64))
    np.testing.assert_array_equal(samples["loss"], target["loss"][c].astype(np.float64))


def test_the_best_layer_is_searched_over_every_computed_layer(tmp_path):
    layers = tuple(range(1, 33))  # all_layers of a 32-block model (docs/method.md §6.1)
    strength = tuple(1.0 if layer == 23 else 0.05 for layer in layers)
    synthetic = write_synthetic_scores(
        tmp_path / "scores", n_models=6, n_samples=300, n_checkpoints=6, layers=layers,
        layer_strength=strength, with_mahalanobis=False, seed=5,
    )  # fmt: skip
    summary = aggregate(load_config(), synthetic.paths, synthetic.pool, tmp_path / "out", progress=False)
    assert 23 not in SMI_LAYERS
    assert summary["best_layer"]["layer"] == 23 and summary["best_layer"]["predictor"] == "psmi_L23"
    fprs = {name: entry["target"]["fpr_at_tpr"] for name, entry in summary["predictors"].items() if "psmi_L" in name}
    assert len(fprs) == 32 and min(fprs, key=fprs.get) == "psmi_L23"
