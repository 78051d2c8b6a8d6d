import numpy as np
import pandas as pd
import pytest

from memaudit.config import load_config
from memaudit.data.poolfile import train_pool
from memaudit.errors import MemauditError
from memaudit.metrics import prediction_checkpoint
from memaudit.stages.finetune import finetune
from memaudit.stages.predict import (
    CPredWatch,
    audit_train_steps,
    check_at_step,
    choose_layer,
    predict,
    prediction_frame,
)
from memaudit.stages.score import score_shadow
from memaudit.stages.scorefile import read_scores
from tests.support.toy_pool import (
    one_torch_thread,  # noqa: F401 (autouse fixture)
    toy_base_model,
    toy_config,
    toy_members,
    toy_pool,
)


def _watch(medians, **kwargs) -> tuple[CPredWatch, list[bool]]:
    watch = CPredWatch(0.05, **kwargs)
    return watch, [watch.reached(10 * i, np.full(3, m), f"hidden-{i}") for i, m in enumerate(medians)]


def test_c_pred_is_the_first_checkpoint_below_five_percent_of_checkpoint_0():
    watch, stops = _watch([10.0, 2.0, 0.4])  # 5 % of 10 = 0.5: the third checkpoint
    assert stops == [False, False, True]
    assert watch.kept[:1] == (20,) and watch.kept[1] == "hidden-2" and watch.rule(20) == "auto"


def test_forced_step_and_the_fallback_to_the_lowest_median():
    watch, stops = _watch([10.0, 0.1, 0.2], at_step=20)
    assert stops == [False, False, True] and watch.kept[0] == 10 and watch.rule(20) == "forced"
    watch, stops = _watch([10.0, 3.0, 1.0, 2.0])
    assert not any(stops) and watch.kept[0] == 20 and watch.rule(None) == "fallback_lowest_median_loss"


def test_audit_train_steps_counts_every_shadow_s_epochs():
    cfg = load_config("demo", overrides=["shadows.n_shadows=4", "training.epochs=3"])  # batch 8, no accumulation
    assert audit_train_steps(cfg, 100) == 4 * 7 * 3  # the paper scheme gives each model 50 members: ceil(50/8) = 7


def test_prediction_frame_ranks_lowest_psmi_first_and_flags_negative_values():
    rows = pd.DataFrame(
        {"source_id": ["a", "b", "c"], "global_index": [5, 6, 7], "prompt": ["p"] * 3, "label_index": [0, 1, 2]}
    )
    values = np.array([[0.3, -0.1, 0.2], [0.5, 0.4, -0.2]])
    frame = prediction_frame(rows, values, [1, 2], 2)
    assert frame["psmi_L1"].tolist() == [0.3, -0.1, 0.2] and frame["psmi"].tolist() == [0.5, 0.4, -0.2]
    assert frame["rank"].tolist() == [3, 2, 1] and frame["at_risk"].tolist() == [False, False, True]
    assert frame["id"].tolist() == ["a", "b", "c"] and frame["label"].tolist() == [0, 1, 2]


def test_layer_and_step_choices_are_checked():
    cfg = toy_config()
    assert choose_layer(cfg, [1, 2], None, "") == (2, "off-the-shelf layer")
    assert choose_layer(cfg, [1, 2], 1, "--layer") == (1, "--layer")
    with pytest.raises(MemauditError, match=r"layer 5 .--layer. is not among the computed layers"):
        choose_layer(cfg, [1, 2], 5, "--layer")
    check_at_step(cfg, 20, 5)  # toy schedule for 20 members: 0, 2, 5, 10
    with pytest.raises(MemauditError, match=r"--at-step 3 is not a scheduled checkpoint.*0, 2, 5, 10"):
        check_at_step(cfg, 20, 3)


@pytest.mark.slow
def test_predict_reproduces_the_score_stage_at_the_audits_c_pred(tmp_path):
    """Trained up to c_pred only, the model's P-SMI equals what scoring the full shadow gives at c_pred."""
    cfg = toy_config("training.epochs=4")
    df = toy_pool()
    base = toy_base_model(cfg, df, tmp_path / "tiny")
    member = toy_members(len(train_pool(df)))
    finetune(cfg, df, member, 0, base, tmp_path / "full", device="cpu", progress=False)
    scores = read_scores(score_shadow(cfg, df, member, 0, base, tmp_path / "full", tmp_path / "s.npz", progress=False))
    medians = np.median(scores["loss"][:, member].astype(np.float64), axis=1)
    c, _ = prediction_checkpoint(medians, cfg.evaluation.c_pred_loss_ratio)
    result = predict(cfg, df, member, 0, base, tmp_path / "early", device="cpu", progress=False)
    s = result.summary
    assert s["c_pred"]["step"] == scores["checkpoints"][c] and s["train_steps"] == s["c_pred"]["step"]
    np.testing.assert_allclose(s["c_pred"]["median_loss"], medians[: len(s["c_pred"]["median_loss"])], rtol=1e-5)
    assert s["c_pred"]["checkpoints"][-1] <= scores["checkpoints"][-1]
    for i, layer in enumerate(scores["layers"]):
        np.testing.assert_allclose(result.frame[f"psmi_L{layer}"], scores["psmi"][c, i, member], atol=1e-5)
    assert s["layer"] == 2 and s["n_at_risk"] == int((result.frame["psmi_L2"] < 0).sum())
    assert s["audit_train_steps"] == audit_train_steps(cfg, len(member))
    assert s["cost_ratio"] == pytest.approx(s["train_steps"] / s["audit_train_steps"])
