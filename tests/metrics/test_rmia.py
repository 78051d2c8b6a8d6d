"""RMIA against hand-computed values, a brute-force loop, and bad arrays."""

import numpy as np
import pytest

from memaudit.metrics import auc, fit_offline_a, option_probability, rmia
from memaudit.metrics.rmia import A_GRID

TARGET = np.array([0.8, 0.4, 0.2])
REFERENCE = np.array([[0.4, 0.4, 0.4], [0.4, 0.4, 0.2]])
MEMBER = np.array([[True, False, False], [False, False, True]])


def test_online_hand_computed():
    # Pr(x) = [0.4, 0.4, 0.3]; ratios [2, 1, 2/3]; population {1, 2} has ratios {1, 2/3}
    assert rmia(TARGET, REFERENCE, MEMBER, np.array([1, 2])).tolist() == [1.0, 1.0, 0.5]
    # gamma 1.6: x0 beats 1 (×2) and 2/3 (×3); x1 beats 2/3 only ×1.5; x2 beats nothing
    assert rmia(TARGET, REFERENCE, MEMBER, np.array([1, 2]), gamma=1.6).tolist() == [1.0, 0.0, 0.0]


def test_offline_hand_computed():
    # OUT means: x0 {0.4}, x1 {0.4, 0.4}, x2 {0.4}; Pr = ((1.5)(0.4) + 0.5) / 2 = 0.55 for all: ratios ∝ target_p
    scores = rmia(TARGET, REFERENCE, MEMBER, np.array([1, 2]), offline_a=0.5)
    assert scores.tolist() == [1.0, 1.0, 0.5]
    # a = 0: Pr = (mean_out + 1) / 2 = 0.7 everywhere, same order; a = 1: Pr = mean_out
    assert rmia(TARGET, REFERENCE, MEMBER, np.array([0]), offline_a=1.0).tolist() == [1.0, 0.0, 0.0]


def brute_force(target_p, reference_p, member, population, gamma, offline_a):
    n = target_p.size
    pr = np.empty(n)
    for x in range(n):
        if offline_a is None:
            pr[x] = reference_p[:, x].mean()
        else:
            out = reference_p[~member[:, x], x]
            pr[x] = ((1 + offline_a) * out.mean() + (1 - offline_a)) / 2
    scores = np.empty(n)
    for x in range(n):
        wins = sum((target_p[x] / pr[x]) / (target_p[z] / pr[z]) >= gamma for z in population)
        scores[x] = wins / len(population)
    return scores


@pytest.mark.parametrize("offline_a", [None, 0.3, 1.0])
@pytest.mark.parametrize("gamma", [1.0, 0.5, 2.0])
def test_matches_a_brute_force_loop(offline_a, gamma):
    rng = np.random.default_rng(7)
    m, n = 6, 150
    reference_p = rng.uniform(0.01, 1.0, (m, n))
    member = rng.random((m, n)) < 0.5
    member[0] = False  # every sample has an OUT model
    target_p = rng.uniform(0.01, 1.0, n)
    population = rng.choice(n, 60, replace=False)
    fast = rmia(target_p, reference_p, member, population, gamma=gamma, offline_a=offline_a)
    assert np.array_equal(fast, brute_force(target_p, reference_p, member, population, gamma, offline_a))


def test_option_probability_is_the_softmax_of_the_labelled_option():
    logits = np.array([[2.0, 0.0, -np.inf], [0.0, 0.0, 0.0]])
    p = option_probability(logits, np.array([0, 2]))
    assert p[0] == pytest.approx(np.exp(2) / (np.exp(2) + 1)) and p[1] == pytest.approx(1 / 3)
    assert option_probability(np.array([[0.0, 2000.0]]), np.array([0]))[0] > 0  # floored, never 0


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((TARGET[:2], REFERENCE, MEMBER, np.array([1])), {}, "must be \\[N\\], \\[M, N\\]"),
        ((TARGET, REFERENCE, MEMBER[:1], np.array([1])), {}, "must be \\[N\\], \\[M, N\\]"),
        ((TARGET, REFERENCE, np.ones((2, 3), bool), np.array([1])), {"offline_a": 0.5}, "no OUT reference model"),
        ((np.array([0.8, 0.0, 0.2]), REFERENCE, MEMBER, np.array([1])), {}, "outside \\(0, 1\\]"),
        ((TARGET, REFERENCE * 3, MEMBER, np.array([1])), {}, "outside \\(0, 1\\]"),
        ((TARGET, REFERENCE, MEMBER, np.array([3])), {}, "population indices"),
        ((TARGET, REFERENCE, MEMBER, np.array([], int)), {}, "non-empty"),
        ((TARGET, REFERENCE, MEMBER, np.array([1])), {"gamma": 0.0}, "gamma must be > 0"),
        ((TARGET, REFERENCE, MEMBER, np.array([1])), {"offline_a": 1.5}, "offline_a must lie in"),
    ],
)
def test_bad_arrays_raise_a_clear_value_error(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        rmia(*args, **kwargs)


def test_fit_offline_a_picks_the_grid_point_of_the_best_auc():
    rng = np.random.default_rng(3)
    m, n = 4, 400
    member = rng.random((m, n)) < 0.5
    hardness = rng.uniform(0.05, 0.95, n)  # per-sample difficulty that a good Pr(x) cancels out
    reference_p = np.clip(hardness + 0.25 * member + rng.normal(0, 0.03, (m, n)), 0.01, 1.0)
    a = fit_offline_a(reference_p, member)
    usable = ~member[1]
    is_member = member[0, usable]
    population = np.flatnonzero(~is_member)

    def auc_of(value):
        scores = brute_force(
            reference_p[0, usable], reference_p[1:2, usable], member[1:2, usable], population, 1.0, value
        )
        return auc(is_member, scores)

    assert a in A_GRID
    assert auc_of(a) >= max(auc_of(b) for b in (0.0, 0.5, 1.0)) - 1e-12
    with pytest.raises(ValueError, match="two different reference models"):
        fit_offline_a(reference_p, member, pair=(1, 1))
