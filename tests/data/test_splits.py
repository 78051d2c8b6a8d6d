import numpy as np
import pytest

from memaudit.data.poolfile import train_pool, write_pool
from memaudit.data.splits import membership_matrix, read_membership, shadow_members, write_membership
from memaudit.errors import MemauditError
from memaudit.testing import write_synthetic_scores


def test_paper_rows_are_the_reference_split_ids():
    member = membership_matrix(6, 101)
    assert member.shape == (6, 101) and member.dtype == np.bool_
    assert (member.sum(axis=1) == 50).all()
    for s in range(6):
        expected = np.zeros(101, dtype=bool)
        expected[np.random.RandomState(s).choice(101, 50, replace=False)] = True
        np.testing.assert_array_equal(member[s], expected)


def test_paper_is_reproducible_and_rows_differ():
    a, b = membership_matrix(8, 400), membership_matrix(8, 400)
    np.testing.assert_array_equal(a, b)
    assert len({row.tobytes() for row in a}) == 8
    # 'paper' seeds model s with s: the seed argument does not change it (documented)
    np.testing.assert_array_equal(a, membership_matrix(8, 400, seed=5))
    # a prefix of the population is the smaller population
    np.testing.assert_array_equal(a[:3], membership_matrix(3, 400))


def test_paper_memberships_per_sample_are_about_half():
    member = membership_matrix(100, 2000)
    per_sample = member.sum(axis=0)
    assert abs(per_sample.mean() - 50) < 1e-9  # exactly N/2 per model, N even
    assert 4.0 < per_sample.std() < 6.0  # Binomial(100, 1/2): std 5


@pytest.mark.parametrize("n_samples", [200, 201])
def test_balanced_gives_every_sample_exactly_half_the_models(n_samples):
    member = membership_matrix(10, n_samples, scheme="balanced", seed=3)
    assert (member.sum(axis=0) == 5).all()
    per_model = member.sum(axis=1)
    if n_samples % 2 == 0:
        assert (per_model == n_samples // 2).all()
    else:
        assert sorted(per_model.tolist()) == [100] * 5 + [101] * 5


def test_balanced_is_seeded():
    a = membership_matrix(4, 300, scheme="balanced", seed=1)
    np.testing.assert_array_equal(a, membership_matrix(4, 300, scheme="balanced", seed=1))
    assert (a != membership_matrix(4, 300, scheme="balanced", seed=2)).any()
    # pairs of models overlap on about half of their members, not systematically
    overlap = (a[0] & a[1]).sum() / a[0].sum()
    assert 0.3 < overlap < 0.7


def test_bad_schemes_and_sizes():
    with pytest.raises(MemauditError, match="even number of models"):
        membership_matrix(5, 100, scheme="balanced")
    with pytest.raises(MemauditError, match="unknown membership scheme"):
        membership_matrix(4, 100, scheme="random")
    with pytest.raises(MemauditError, match="at least 1 model and 2 samples"):
        membership_matrix(4, 1)


def test_write_read_round_trip_is_atomic(tmp_path):
    member = membership_matrix(4, 50)
    path = write_membership(member, tmp_path / "sub" / "member.npy")
    np.testing.assert_array_equal(read_membership(path, n_samples=50), member)
    assert sorted(p.name for p in path.parent.iterdir()) == ["member.npy"]  # no temp file left
    write_membership(member, path)  # identical rewrite is fine
    np.testing.assert_array_equal(read_membership(path), member)


def test_read_rejects_missing_corrupt_and_mismatched_files(tmp_path):
    with pytest.raises(MemauditError, match="not found"):
        read_membership(tmp_path / "none.npy")
    good = write_membership(membership_matrix(2, 10), tmp_path / "m.npy")
    broken = tmp_path / "broken.npy"
    broken.write_bytes(good.read_bytes()[:60])
    with pytest.raises(MemauditError, match=r"not a readable \.npy"):
        read_membership(broken)
    floats = tmp_path / "floats.npy"
    np.save(floats, np.zeros((2, 10)))
    with pytest.raises(MemauditError, match="expected a 2-D bool matrix"):
        read_membership(floats)
    with pytest.raises(MemauditError, match="covers 10 samples but the pool has 12"):
        read_membership(good, n_samples=12)
    with pytest.raises(MemauditError, match="2-D bool array"):
        write_membership(np.zeros((2, 3)), tmp_path / "x.npy")
    assert not (tmp_path / "x.npy").exists()


def test_shadow_members_reads_one_row_checked_against_the_pool(tmp_path):
    synthetic = write_synthetic_scores(tmp_path / "scores", n_models=3, n_samples=40, n_checkpoints=2)
    pool_path = write_pool(synthetic.pool, tmp_path / "pool.parquet")
    member_path = write_membership(synthetic.member, tmp_path / "member.npy")
    pool, member = shadow_members(pool_path, member_path, 2)
    assert len(train_pool(pool)) == 40
    np.testing.assert_array_equal(member, synthetic.member[2])
    with pytest.raises(MemauditError, match=r"shadow 3 out of range 0\.\.2"):
        shadow_members(pool_path, member_path, 3)
    write_membership(synthetic.member[:, :30], tmp_path / "short.npy")
    with pytest.raises(MemauditError, match="covers 30 samples but the pool has 40"):
        shadow_members(pool_path, tmp_path / "short.npy", 0)
