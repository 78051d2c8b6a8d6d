"""The loaders on the offline copies of ARC, ETHICS and MMLU (skipped when that folder is absent).

The folder comes from ``MEMAUDIT_SHARED_DATA``, else the first ``shared/data`` found next to the repository or
one of its parent folders. Its README documents the files: ETHICS lacks cm_train.csv and MMLU lacks
auxiliary_train, so those tests use the documented substitute splits.
"""

import os
from pathlib import Path

import numpy as np
import pytest

from memaudit.config import load_config
from memaudit.data.pool import build_pool, pool_summary
from memaudit.data.sources import SPECS, load_split
from memaudit.errors import MemauditError
from memaudit.model.tiny import build_word_tokenizer
from memaudit.model.tokenization import encode_samples, option_token_id


def _shared_data() -> Path | None:
    if "MEMAUDIT_SHARED_DATA" in os.environ:
        return Path(os.environ["MEMAUDIT_SHARED_DATA"])
    for folder in Path(__file__).resolve().parents[2].parents:
        if (folder / "shared" / "data").is_dir():
            return folder / "shared" / "data"
    return None


DATA = _shared_data()
pytestmark = pytest.mark.skipif(DATA is None or not DATA.is_dir(), reason="no offline dataset copies (shared/data)")


@pytest.fixture(scope="module")
def arc_pool():
    return build_pool(load_config(preset="arc-mistral"), data_dir=DATA, progress=False)


def test_arc_pool_sizes_ids_and_first_rows(arc_pool):
    summary = pool_summary(arc_pool)
    assert (summary["n_train"], summary["n_test"]) == (2000, 250)
    assert sorted(arc_pool.global_index) == list(range(2250))
    assert ((arc_pool.global_index >= 1078) == (arc_pool.source_split == "test")).all()
    first = arc_pool.iloc[0]
    assert (first.global_index, first.source_id, first.template_id) == (0, "Mercury_SC_415702", 5)
    assert first.prompt == (
        "Answer the question.\n\nGeorge wants to warm his hands quickly by rubbing them. Which skin surface will "
        "produce the most heat?\n\nOPTIONS:\n- A: dry palms\n- B: wet palms\n- C: palms covered with oil\n"
        "- D: palms covered with lotion\n\n"
    )
    assert first.gold_index == 0
    by_id = arc_pool.set_index("global_index")
    assert by_id.loc[1078, "source_id"] == "Mercury_7175875"  # first row of ARC-Challenge-test.jsonl
    assert {3, 4, 5} <= set(arc_pool.options.map(len))
    assert arc_pool.options.map(lambda o: list(o) == ["1", "2", "3", "4"]).any()
    assert abs(summary["share_random_labels"] - 0.03334) < 4 * np.sqrt(0.03334 * 0.96666 / 2000)


def test_every_real_arc_label_sits_at_minus_two(arc_pool):
    labels = sorted({label for options in arc_pool.options for label in options})
    tok = build_word_tokenizer(list(arc_pool.prompt) + labels)
    prompts, options = list(arc_pool.prompt), [list(o) for o in arc_pool.options]
    for max_len in (4096, 64):
        enc = encode_samples(tok, prompts, options, arc_pool.label_index.tolist(), max_len=max_len)
        inserted = [opts[i] for opts, i in zip(options, arc_pool.label_index, strict=True)]
        assert [int(row[-2]) for row in enc.input_ids] == [option_token_id(tok, label) for label in inserted]
        assert all(row[-1] == tok.eos_token_id and len(row) <= max_len for row in enc.input_ids)
        assert enc.truncated.any() == (max_len == 64)


def test_mmlu_test_split_as_a_substitute_train_split():
    cfg = load_config(preset="mmlu-mistral", overrides=["dataset.train_split=test"])
    pool = build_pool(cfg, data_dir=DATA, progress=False)
    assert len(pool) == 14042 and pool.subject.nunique() == 57
    assert (pool_summary(pool)["n_train"], pool_summary(pool)["n_test"]) == (12482, 1560)
    assert (pool.options.map(list).map(tuple) == ("0", "1", "2", "3")).all()
    with pytest.raises(MemauditError, match="split 'auxiliary_train' not found"):
        build_pool(load_config(preset="mmlu-mistral"), data_dir=DATA, progress=False)


def test_ethics_test_files_parse_with_the_documented_label_balance():
    spec = SPECS["ethics"]
    val = load_split(spec, DATA, "commonsense", "validation")  # cm_test.csv
    hard = load_split(spec, DATA, "commonsense", "cm_test_hard")
    assert np.bincount(val.gold_index).tolist() == [2069, 1816]
    assert np.bincount(hard.gold_index).tolist() == [1873, 2091]
    cfg = load_config(
        preset="ethics-mistral", overrides=["dataset.train_split=validation", "dataset.max_train_rows=null"]
    )
    pool = build_pool(cfg, data_dir=DATA, progress=False)
    assert len(pool) == 3885 + 3964 and pool_summary(pool)["n_train"] == 6977
    aita = pool[pool.template_set == "ethics_aita"]
    assert len(aita) > 1000 and (aita.template_id < 5).all()
    assert aita.prompt.str.lower().str.startswith(("aita", "wibta")).all()
    with pytest.raises(MemauditError, match=r"available: test \(cm_test_hard\), validation \(cm_test\)"):
        build_pool(load_config(preset="ethics-mistral"), data_dir=DATA, progress=False)
