import numpy as np
import pytest
import torch

from memaudit.errors import MemauditError
from memaudit.model.tiny import build_word_tokenizer
from memaudit.model.tokenization import encode_samples, left_pad, option_token_id

CORPUS = ["Question: which is red?\n\nOPTIONS:\n- A: sky\n- B: apple\n- C: grass\n- D: snow\n\nB 0 1 2 3 E"]


@pytest.fixture(scope="module")
def tok():
    return build_word_tokenizer(CORPUS)


def test_label_at_minus_two_and_eos_last(tok):
    prompt = "Question: which is red?\n\nOPTIONS:\n- A: sky\n- B: apple\n- C: grass\n- D: snow\n\n"
    enc = encode_samples(tok, [prompt, prompt], [list("ABCD"), list("ABCD")], [1, 3], max_len=512)
    for row, li in zip(enc.input_ids, [1, 3], strict=True):
        assert row[-1] == tok.eos_token_id
        assert row[-2] == option_token_id(tok, "ABCD"[li])
        assert row[0] == tok.bos_token_id
        assert tok.convert_ids_to_tokens(int(row[-3])) == "\n"  # the last prompt token predicts the label
    assert not enc.truncated.any()
    np.testing.assert_array_equal(enc.labels, [option_token_id(tok, "B"), option_token_id(tok, "D")])


def _bos_eos_tokenizer():
    """A byte-level BPE fast tokenizer whose template is ``<s> $A </s>``, trained offline on the corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=list(specials.values()), show_progress=False)
    raw.train_from_iterator(CORPUS * 5, trainer=trainer)
    ids = {t: raw.token_to_id(t) for t in ("<s>", "</s>")}
    raw.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=list(ids.items()))
    return PreTrainedTokenizerFast(tokenizer_object=raw, **specials)


PROMPT = "Question: which is red?\n\nOPTIONS:\n- A: sky\n- B: apple\n\n"


@pytest.mark.parametrize("extra", [5, 0, -1, -7])  # short, exact length, one token over, long
def test_left_truncation_matches_hugging_faces_and_keeps_bos(extra):
    tok = _bos_eos_tokenizer()
    tok.truncation_side = "left"
    length = len(tok(PROMPT + "A")["input_ids"])
    max_len = length + extra
    row = encode_samples(tok, [PROMPT], [["A", "B"]], [0], max_len=max_len)
    expected = tok(PROMPT + "A", truncation=True, max_length=max_len)["input_ids"]
    np.testing.assert_array_equal(row.input_ids[0], expected)
    assert row.input_ids[0][0] == tok.bos_token_id and row.input_ids[0][-1] == tok.eos_token_id
    assert row.input_ids[0][-2] == option_token_id(tok, "A")
    assert bool(row.truncated[0]) == (extra < 0) and len(row.input_ids[0]) == min(length, max_len)


def test_left_truncation_with_a_bos_only_template_appends_eos(tok):
    full = encode_samples(tok, [PROMPT], [["A", "B"]], [0], max_len=512).input_ids[0]
    cut = encode_samples(tok, [PROMPT], [["A", "B"]], [0], max_len=6)
    row = cut.input_ids[0]
    assert len(row) == 6 and cut.truncated[0]
    assert row[0] == tok.bos_token_id and row[-1] == tok.eos_token_id and row[-2] == option_token_id(tok, "A")
    np.testing.assert_array_equal(row[1:], full[-5:])  # the content is cut on the left, BOS stays first
    tok.truncation_side = "left"
    np.testing.assert_array_equal(row[:-1], tok(PROMPT + "A", truncation=True, max_length=5)["input_ids"])


def test_option_ids_pad_with_minus_one_for_fewer_options(tok):
    enc = encode_samples(tok, ["which?\n\n", "which?\n\n"], [["0", "1"], list("ABCDE")], [1, 4], max_len=64)
    assert enc.option_ids.shape == (2, 5)
    assert (enc.option_ids[0, 2:] == -1).all()
    assert enc.option_ids[1, 4] == option_token_id(tok, "E")


def test_label_merged_into_prompt_word_is_an_error(tok):
    with pytest.raises(MemauditError, match="does not tokenize as one final token"):
        encode_samples(tok, ["which is re"], [["A", "d"]], [1], max_len=64)


def test_left_pad_positions_start_at_each_rows_first_token():
    batch = left_pad([np.array([5, 6, 7]), np.array([8, 9, 10, 11, 12])], pad_id=0)
    assert batch["input_ids"].tolist() == [[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]]
    assert batch["attention_mask"].tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert batch["position_ids"].tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert batch["input_ids"].dtype == torch.long
