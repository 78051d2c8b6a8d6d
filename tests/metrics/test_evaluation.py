import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from memaudit.metrics import (
    auc,
    best_layer,
    evaluate,
    fpr_at_tpr,
    memorized,
    memorized_threshold,
    off_the_shelf,
    prediction_checkpoint,
    roc,
    tpr_at_fpr,
)

# scores 8..1 in decreasing order; positives at 8, 6, 5, 3. ROC (fpr, tpr) after each threshold:
# 8 (0, .25)  7 (.25, .25)  6 (.25, .5)  5 (.25, .75)  4 (.5, .75)  3 (.5, 1)  2 (.75, 1)  1 (1, 1)
Y = np.array([1, 0, 1, 1, 0, 1, 0, 0], dtype=bool)
S = np.array([8.0, 7, 6, 5, 4, 3, 2, 1])


def test_fpr_at_tpr_takes_the_first_point_strictly_above():
    assert fpr_at_tpr(Y, S, tpr=0.75) == 0.5  # tpr 0.75 itself is not enough
    assert fpr_at_tpr(Y, S, tpr=0.5) == 0.25
    assert fpr_at_tpr(Y, S, tpr=0.2) == 0.0
    assert fpr_at_tpr(Y, -S, tpr=0.75) == 1.0  # reversed predictor


def test_tpr_at_fpr_and_auc_by_hand():
    assert tpr_at_fpr(Y, S, fpr=0.25) == 0.75
    assert tpr_at_fpr(Y, S, fpr=0.01) == 0.25
    assert auc(Y, S) == pytest.approx(12 / 16)  # positive/negative pairs ranked right: 4 + 3 + 3 + 2
    numbers = evaluate(Y, S)
    assert numbers == {"fpr_at_tpr": 0.5, "auc": 0.75, "tpr_at_fpr_1pct": 0.25, "tpr_at_fpr_0.1pct": 0.25}


def test_non_finite_scores_are_dropped():
    s = S.copy()
    s[1] = np.nan  # the negative at 7 disappears: the point (.25, .75) becomes (0, .75)
    assert fpr_at_tpr(Y, s, tpr=0.5) == 0.0
    with pytest.raises(ValueError, match="both positive and negative"):
        fpr_at_tpr(np.ones(3, dtype=bool), np.arange(3.0))


@pytest.mark.parametrize(
    ("losses", "expected"),
    [
        ([5.060, 0.313, 0.117, 0.0216, 0.0232, 0.00324], 2),  # ARC, docs/method.md §6.1: 0.4 epoch
        ([3.754, 0.475, 0.181, 0.0552, 0.0162, 0.00981], 2),  # ETHICS: 0.4
        ([5.321, 0.0462, 0.00966, 0.00279, 0.00495, 0.00634], 1),  # MMLU-Mistral: 0.2
        ([6.000, 0.424, 0.0820, 0.0432, 0.0334, 0.0577], 2),  # MMLU-Llama: 0.4
        ([5.152, 0.0318, 0.00719, 0.00375, 0.00375, 0.00743], 1),  # MMLU-Gemma: 0.2
    ],
)
def test_prediction_checkpoint_reproduces_the_papers_choices(losses, expected):
    assert prediction_checkpoint(np.array(losses), 0.05) == (expected, True)


def test_prediction_checkpoint_fallback():
    assert prediction_checkpoint(np.array([1.0, 0.5, 0.3, 0.3, 0.4]), 0.05) == (2, False)
    assert prediction_checkpoint(np.array([1.0, 0.5, 0.3]), 0.4) == (2, True)


def test_off_the_shelf_point():
    is_memorized = np.array([1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    psmi_values = np.array([-0.3, -0.1, 0.2, -0.5, 0.1, 0.3, 0.0, 0.4])  # 0.0 is not < 0
    assert off_the_shelf(is_memorized, psmi_values) == (0.2, pytest.approx(2 / 3))


def test_memorized_rules():
    llr = np.array([5.0, 1.0, 3.0, 3.0, -2.0, 0.0, 7.0, 2.0, 4.0, 6.0])
    np.testing.assert_array_equal(np.flatnonzero(memorized(llr, fraction=0.2)), [6, 9])  # quantile .8 = 6
    np.testing.assert_array_equal(np.flatnonzero(memorized(llr, rule="threshold", threshold=4)), [0, 6, 8, 9])
    with pytest.raises(ValueError, match="unknown memorization rule"):
        memorized(llr, rule="median")


def test_best_layer():
    noise = np.array([3.0, 1, 2, 8, 5, 4, 7, 6])
    fprs = [fpr_at_tpr(Y, noise), fpr_at_tpr(Y, S), fpr_at_tpr(Y, -S)]
    assert fprs[1:] == [0.5, 1.0] and fprs[0] > 0.5
    assert best_layer(fprs) == 1
    assert best_layer([0.3, None, 0.2, 0.2, np.nan]) == 2  # the first of ties; layers without a number skipped
    assert best_layer([None, np.nan]) is None


def test_memorized_threshold_is_what_memorized_uses():
    llr = np.arange(20.0)
    assert memorized_threshold(llr, fraction=0.1) == np.quantile(llr, 0.9)
    assert memorized_threshold(llr, rule="threshold", threshold=4.0) == 4.0
    np.testing.assert_array_equal(memorized(llr, fraction=0.1), llr >= np.quantile(llr, 0.9))


@pytest.mark.parametrize("seed", range(5))
def test_roc_is_sklearns_roc_curve(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(300) < 0.2
    s = np.round(rng.normal(size=300) + y, 1)  # many ties
    s[:5] = -0.0
    s[5:10] = 0.0
    curve = roc(y, s)
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_array_equal(curve.fpr, fpr)
    np.testing.assert_array_equal(curve.tpr, tpr)
    np.testing.assert_array_equal(curve.thresholds, thresholds)
    assert curve.auc() == pytest.approx(roc_auc_score(y, s), rel=1e-12)


def test_average_ranks_share_ties():
    from memaudit.metrics import average_ranks

    assert average_ranks(np.array([10.0, 30.0, 20.0, 30.0])).tolist() == [1.0, 3.5, 2.0, 3.5]


def test_spearman_by_hand_and_against_scipy():
    from memaudit.metrics import spearman

    # ranks x = 1,2,3,4; ranks y = 1,3,2,4: d² = 0+1+1+0 = 2, rho = 1 - 6·2 / (4·15) = 0.8
    assert spearman(np.array([1.0, 2.0, 3.0, 4.0]), np.array([5.0, 7.0, 6.0, 9.0])) == pytest.approx(0.8)
    assert spearman(np.arange(5.0), -(np.arange(5.0) ** 3)) == pytest.approx(-1.0)
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    x = rng.integers(0, 6, 200).astype(float)  # many ties
    y = x + rng.normal(size=200)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        ([1.0, 2.0], [1.0], "same length"),
        ([1.0, np.nan], [1.0, 2.0], "finite"),
        ([1.0, 1.0], [1.0, 2.0], "constant"),
    ],
)
def test_spearman_refuses_bad_vectors(x, y, message):
    from memaudit.metrics import spearman

    with pytest.raises(ValueError, match=message):
        spearman(np.array(x), np.array(y))
