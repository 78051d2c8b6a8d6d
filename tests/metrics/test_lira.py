import numpy as np
import pytest
from scipy import stats as st

from memaudit.metrics import lira, lira_loo


def two_point_shadows(mu_in, sd_in, mu_out, sd_out):
    """Four shadows per sample whose IN values are μ_in ± σ_in and OUT values μ_out ± σ_out (ddof-0 moments)."""
    mu_in, sd_in, mu_out, sd_out = map(np.asarray, (mu_in, sd_in, mu_out, sd_out))
    values = np.stack([mu_in - sd_in, mu_in + sd_in, mu_out - sd_out, mu_out + sd_out])
    member = np.zeros_like(values, dtype=bool)
    member[:2] = True
    return values, member


def test_online_lira_is_the_gaussian_log_likelihood_ratio():
    mu_in, sd_in, mu_out, sd_out = [3.0, 1.0, 0.5], [1.0, 0.5, 2.0], [0.0, 2.0, 0.5], [2.0, 0.25, 1.0]
    values, member = two_point_shadows(mu_in, sd_in, mu_out, sd_out)
    x = np.array([2.0, -1.0, 0.7])
    expected = st.norm.logpdf(x, mu_in, sd_in) - st.norm.logpdf(x, mu_out, sd_out)
    np.testing.assert_allclose(lira(x, values, member), expected, rtol=1e-12)


def test_online_lira_recovers_known_gaussians_from_many_shadows():
    rng = np.random.default_rng(0)
    s, n = 4000, 5
    member = rng.random((s, n)) < 0.5
    shadows = np.where(member, rng.normal(2.0, 0.5, (s, n)), rng.normal(-1.0, 1.5, (s, n)))
    x = np.array([-3.0, -1.0, 0.5, 2.0, 3.0])
    expected = st.norm.logpdf(x, 2.0, 0.5) - st.norm.logpdf(x, -1.0, 1.5)
    np.testing.assert_allclose(lira(x, shadows, member), expected, atol=0.25)


def test_global_variance_uses_pooled_within_sample_variances():
    # sample 0: IN {0, 2} (ss 2), OUT {-1, -1} (ss 0); sample 1: IN {5, 5} (ss 0), OUT {0, 4} (ss 8)
    values = np.array([[0.0, 5.0], [2.0, 5.0], [-1.0, 0.0], [-1.0, 4.0]])
    member = np.array([[1, 1], [1, 1], [0, 0], [0, 0]], dtype=bool)
    var_in, var_out = 2.0 / 4, 8.0 / 4
    x = np.array([1.5, 4.0])
    expected = st.norm.logpdf(x, [1.0, 5.0], np.sqrt(var_in)) - st.norm.logpdf(x, [-1.0, 2.0], np.sqrt(var_out))
    np.testing.assert_allclose(lira(x, values, member, global_variance=True), expected, rtol=1e-12)


def test_offline_lira_is_the_one_sided_log_odds():
    values, member = two_point_shadows([9.0, 9.0], [1.0, 1.0], [1.0, -2.0], [2.0, 0.5])
    x = np.array([4.0, -2.5])
    t = (x - np.array([1.0, -2.0])) / np.array([2.0, 0.5])
    expected = st.norm.logcdf(t) - st.norm.logsf(t)
    np.testing.assert_allclose(lira(x, values, member, online=False), expected, rtol=1e-12)
    assert lira(np.array([1.0, -2.0]), values, member, online=False) == pytest.approx([0.0, 0.0])
    # far in the tail the log-odds stays finite (then clipped)
    assert lira(np.array([1e6, -1e6]), values, member, online=False).tolist() == [100.0, -100.0]


def test_degenerate_sets_follow_the_fallback_rule():
    # sample 0 is OUT for every shadow; sample 1 has one IN value; sample 2 is regular
    values = np.array([[1.0, 4.0, 3.0], [3.0, 0.0, 5.0], [2.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    member = np.array([[0, 1, 1], [0, 0, 1], [0, 0, 0], [0, 0, 0]], dtype=bool)
    x = np.array([1.0, 3.0, 4.0])
    centre = values.mean(axis=0)  # every shadow value of each sample
    mu_in = np.array([np.nan, 4.0, 4.0])
    delta_in = ((4.0 - centre[1]) + 2 * (4.0 - centre[2])) / 3
    mu_in[0] = centre[0] + delta_in
    pooled_in = (0.0 + 2.0) / 3  # sample 1 has ss 0 from its single value, sample 2 has {3, 5}
    var_in = np.array([pooled_in, pooled_in, 1.0])
    mu_out = np.array([1.5, 2 / 3, 1.0])
    var_out = np.array([values[:, 0].var(), values[1:, 1].var(), values[2:, 2].var()])
    expected = st.norm.logpdf(x, mu_in, np.sqrt(var_in)) - st.norm.logpdf(x, mu_out, np.sqrt(var_out))
    np.testing.assert_allclose(lira(x, values, member), expected, rtol=1e-12)


def test_zero_variance_is_floored_and_clipped_never_nan():
    values = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    member = np.array([[1, 1], [1, 1], [0, 0], [0, 0]], dtype=bool)
    scores = lira(np.array([1.0, 0.0]), values, member)
    assert scores.tolist() == [100.0, 0.0]
    assert lira(np.array([0.5, 3.0]), values, member).tolist() == [0.0, 0.0]  # equidistant; identical Gaussians
    assert lira(np.array([-2.0, 0.0]), values, member, clip=7).tolist() == [-7.0, 0.0]
    constant = np.full((3, 4), 2.5)
    out = lira(np.full(4, 2.5), constant, np.eye(3, 4, dtype=bool))
    np.testing.assert_array_equal(out, 0.0)


@pytest.mark.parametrize("online", [True, False])
@pytest.mark.parametrize("global_variance", [True, False])
def test_loo_equals_lira_model_by_model(online, global_variance):
    rng = np.random.default_rng(1)
    m, n = 9, 40
    member = rng.random((m, n)) < 0.5
    member[:, 0] = [True] + [False] * (m - 1)  # sample 0: IN only for model 0 → empty IN for it as target
    member[:, 1] = True  # never OUT
    stats = np.where(member, rng.normal(3, 1, (m, n)), rng.normal(0, 2, (m, n)))
    stats[:, 2] = 1.25  # constant column
    loo = lira_loo(stats, member, online=online, global_variance=global_variance, block=4)
    for k in range(m):
        others = np.delete(np.arange(m), k)
        one = lira(stats[k], stats[others], member[others], online=online, global_variance=global_variance)
        np.testing.assert_allclose(loo[k], one, rtol=1e-9, atol=1e-9)
    assert np.isfinite(loo).all()


def test_loo_with_other_target_statistics():
    rng = np.random.default_rng(2)
    m, n = 6, 30
    member = rng.random((m, n)) < 0.5
    final = np.where(member, rng.normal(2, 1, (m, n)), rng.normal(0, 1, (m, n)))
    early = final * 0.3 + rng.normal(0, 0.1, (m, n))
    loo = lira_loo(final, member, target_stats=early)
    for k in range(m):
        others = np.delete(np.arange(m), k)
        np.testing.assert_allclose(loo[k], lira(early[k], final[others], member[others]), rtol=1e-9, atol=1e-9)


def test_several_targets_at_once():
    rng = np.random.default_rng(3)
    member = rng.random((7, 25)) < 0.5
    shadows = np.where(member, rng.normal(2, 1, (7, 25)), rng.normal(0, 1, (7, 25)))
    targets = rng.normal(1, 2, (4, 25))
    together = lira(targets, shadows, member, global_variance=True)
    for row, x in zip(together, targets, strict=True):
        np.testing.assert_allclose(row, lira(x, shadows, member, global_variance=True), rtol=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        lira(np.zeros(2), np.array([[np.nan, 1.0]]), np.ones((1, 2), dtype=bool))
    with pytest.raises(ValueError, match="shape"):
        lira(np.zeros(3), np.zeros((2, 2)), np.ones((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="at least 2 models"):
        lira_loo(np.zeros((1, 2)), np.ones((1, 2), dtype=bool))
