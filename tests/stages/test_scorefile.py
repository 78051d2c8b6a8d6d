import numpy as np
import pytest

from memaudit.errors import MemauditError
from memaudit.stages.scorefile import PER_CHECKPOINT, read_score_rows, read_scores, shadow_id
from memaudit.testing import write_synthetic_scores


@pytest.fixture(scope="module")
def score_file(tmp_path_factory):
    return write_synthetic_scores(tmp_path_factory.mktemp("rows"), n_models=1, n_samples=60, n_checkpoints=7).paths[0]


def test_rows_equal_the_full_read(score_file):
    full = read_scores(score_file, keys=("mahalanobis", "test_loss"))
    rows = read_score_rows(score_file, [3, 6], keys=("mahalanobis", "test_loss"))
    assert set(rows) == set(full)
    for key, value in rows.items():
        expected = full[key][[3, 6]] if key in PER_CHECKPOINT else full[key]
        np.testing.assert_array_equal(value, expected)
        assert value.dtype == expected.dtype and not isinstance(value, np.memmap)


def test_compressed_members_are_read_whole(score_file, tmp_path):
    full = read_scores(score_file)
    packed = tmp_path / "packed.npz"
    np.savez_compressed(packed, **full)
    rows = read_score_rows(packed, [0])
    np.testing.assert_array_equal(rows["psmi"], full["psmi"][[0]])


def test_corrupted_or_inconsistent_files(score_file, tmp_path):
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(score_file.read_bytes()[:-3000])
    with pytest.raises(MemauditError, match="corrupted"):
        read_score_rows(truncated, [0])
    with pytest.raises(MemauditError, match="not found"):
        read_score_rows(tmp_path / "missing.npz", [0])
    full = read_scores(score_file)
    full["loss"] = full["loss"][:, :10]
    odd = tmp_path / "odd.npz"
    np.savez(odd, **full)
    with pytest.raises(MemauditError, match="loss has shape"):
        read_score_rows(odd, [0])


def test_shadow_id(score_file, tmp_path):
    assert shadow_id(score_file) == 0
    arrays = dict(np.load(score_file))
    del arrays["shadow"]
    (tmp_path / "shadows" / "7").mkdir(parents=True)
    np.savez(tmp_path / "shadows" / "7" / "scores.npz", **arrays)
    assert shadow_id(tmp_path / "shadows" / "7" / "scores.npz") == 7
    np.savez(tmp_path / "shadow-12.npz", **arrays)
    assert shadow_id(tmp_path / "shadow-12.npz") == 12
    np.savez(tmp_path / "shadows" / "scores.npz", **arrays)
    with pytest.raises(MemauditError, match="names no shadow id"):
        shadow_id(tmp_path / "shadows" / "scores.npz")
    with pytest.raises(MemauditError, match="not found"):
        shadow_id(tmp_path / "nope.npz")
