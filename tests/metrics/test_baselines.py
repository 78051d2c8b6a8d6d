import numpy as np
import pytest
import torch
from scipy import stats as st
from sklearn.decomposition import PCA

from memaudit.metrics import attack_success_rate, counterfactual_memorization, logit_gap, mahalanobis


def direct_mahalanobis(x, reference, k):
    """sklearn PCA fitted on the reference, biased covariance of the projected reference, explicit inverse."""
    pca = PCA(n_components=k, svd_solver="full").fit(reference)
    ref = pca.transform(reference)
    inv = np.linalg.inv(np.cov(ref.T, bias=True))
    p = pca.transform(x) - ref.mean(axis=0)
    return np.sqrt(np.einsum("ij,jk,ik->i", p, inv, p))


def correlated(n, d, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(0, 5, d)


def test_mahalanobis_matches_direct_formula():
    x = correlated(200, 12, 0)
    np.testing.assert_allclose(mahalanobis(x, n_components=5), direct_mahalanobis(x, x, 5), rtol=1e-8)
    np.testing.assert_allclose(mahalanobis(x, n_components=12), direct_mahalanobis(x, x, 12), rtol=1e-8)


def test_mahalanobis_against_a_reference_set():
    x, ref = correlated(50, 10, 1), correlated(300, 10, 1)
    np.testing.assert_allclose(mahalanobis(x, n_components=6, reference=ref), direct_mahalanobis(x, ref, 6), rtol=1e-8)


def test_mahalanobis_more_dimensions_than_points():
    x = correlated(30, 80, 2)  # Gram-matrix branch
    np.testing.assert_allclose(mahalanobis(x, n_components=10), direct_mahalanobis(x, x, 10), rtol=1e-7)
    # rank 29 < n_components: the pseudo-inverse drops the null directions, the result stays finite
    full = mahalanobis(torch.tensor(x, dtype=torch.float32), n_components=100)
    assert np.isfinite(full).all()
    np.testing.assert_allclose(full, direct_mahalanobis(x.astype(np.float32), x, 29), rtol=1e-4)


def test_mahalanobis_degenerate_inputs_are_finite():
    np.testing.assert_array_equal(mahalanobis(np.ones((5, 3))), 0.0)
    x = correlated(100, 6, 3)
    x[0] = 1e6
    x[1:10] = x[10]
    assert np.isfinite(mahalanobis(x, n_components=4)).all()
    with pytest.raises(ValueError, match=r"features \(100, 6\) and reference \(4, 2\)"):
        mahalanobis(x, reference=np.ones((4, 2)))


def test_logit_gap_by_hand():
    z = np.array([[2.0, 1.0, -np.inf, 0.5], [0.0, 3.0, 1.0, -np.inf], [1.0, -np.inf, -np.inf, -np.inf]])
    np.testing.assert_array_equal(logit_gap(z, np.array([0, 2, 0])), [1.0, -2.0, 0.0])
    stacked = logit_gap(np.stack([z, z + 1]), np.array([[0, 2, 0], [1, 1, 0]]))
    np.testing.assert_array_equal(stacked, [[1.0, -2.0, 0.0], [-1.0, 2.0, 0.0]])


def test_logit_gap_rejects_bad_labels():
    z = np.array([[2.0, -np.inf]])
    with pytest.raises(ValueError, match="not finite"):
        logit_gap(z, np.array([1]))
    with pytest.raises(ValueError, match="out of range"):
        logit_gap(z, np.array([2]))


def test_counterfactual_memorization_by_hand():
    stats = np.array([[4.0, 1.0, 2.0], [2.0, 3.0, 2.0], [0.0, 5.0, 2.0], [1.0, 0.0, 2.0]])
    member = np.array([[1, 0, 1], [1, 1, 1], [0, 0, 1], [0, 1, 1]], dtype=bool)
    # model 0 counts among the OUT models of sample 1 (the reference's 1..99 asymmetry would drop it)
    expected = [(4 + 2) / 2 - (0 + 1) / 2, (3 + 0) / 2 - (1 + 5) / 2, np.nan]
    np.testing.assert_array_equal(counterfactual_memorization(stats, member), expected)


def test_attack_success_rate_by_hand():
    # sample 0: IN {3, 5} ~ N(4, 1), OUT {0, 2} ~ N(1, 1): threshold 2.5, every model is classified right
    # sample 1: IN {0, 2} ~ N(1, 1), OUT {3, 5} ~ N(4, 1): likewise
    stats = np.array([[3.0, 0.0], [5.0, 2.0], [0.0, 3.0], [2.0, 5.0]])
    member = np.array([[1, 1], [1, 1], [0, 0], [0, 0]], dtype=bool)
    np.testing.assert_array_equal(attack_success_rate(stats, member), [1.0, 1.0])
    # OUT value 2 → 3.9: OUT ~ N(2.95, 0.95), narrow; 3 (IN) now looks OUT and 3.9 (OUT) looks IN: 2 of 4 right
    stats2 = stats.copy()
    stats2[2, 0] = 3.9
    mu_out, sd_out = np.mean([3.9, 2.0]), np.std([3.9, 2.0])
    llr = st.norm.logpdf(stats2[:, 0], 4.0, 1.0) - st.norm.logpdf(stats2[:, 0], mu_out, sd_out)
    expected = np.mean((llr > 0) == member[:, 0])
    assert attack_success_rate(stats2, member)[0] == expected == 0.5
