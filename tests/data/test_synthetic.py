"""The synthetic dataset: deterministic, learnable by a simple model, with a hard tail, short prompts."""

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

from memaudit.config import SyntheticConfig, load_config
from memaudit.data.pool import build_pool
from memaudit.data.synthetic import CATEGORY_NAMES, _world, generate_items, pretraining_corpus
from memaudit.data.templates import MCQ_TEMPLATES, format_mcq
from memaudit.errors import MemauditError
from memaudit.model.tiny import build_word_tokenizer
from memaudit.model.tokenization import encode_samples


def words(question):
    return question.rstrip("?").split()


def test_items_are_deterministic_and_seeded():
    cfg = SyntheticConfig(n_samples=200)
    pd.testing.assert_frame_equal(generate_items(cfg), generate_items(cfg))
    other = generate_items(SyntheticConfig(n_samples=200, seed=1))
    assert (other.text != generate_items(cfg).text).all()


def test_items_follow_the_majority_keyword_rule():
    cfg = SyntheticConfig(n_samples=1000)
    items, world = generate_items(cfg), _world(cfg)
    category_of = {w: c for c, ws in enumerate(world.keywords) for w in ws}
    assert not set(category_of) & set(world.fillers)
    for item in items.itertuples():
        assert item.option_labels == ["A", "B", "C", "D"] and item.option_texts == list(CATEGORY_NAMES[:4])
        cats = [category_of[w] for w in words(item.text) if w in category_of]
        assert len(cats) == (3 if item.hard else 1)
        assert (
            max(set(cats), key=cats.count) == item.gold_index and cats.count(item.gold_index) == len(cats) - item.hard
        )
        gold_ranks = [
            world.keywords[item.gold_index].index(w) for w in words(item.text) if category_of.get(w) == item.gold_index
        ]
        assert item.keyword_rank == min(gold_ranks)
        assert cfg.min_length <= len(words(item.text)) <= cfg.max_length
    n = len(items)
    assert abs(items.hard.mean() - 0.25) < 4 * np.sqrt(0.25 * 0.75 / n)
    # Zipf(1) over 64 ranks: rank 0 is the answer keyword of about 1/H_64 = 21 % of the easy items
    easy = items[~items.hard]
    assert abs((easy.keyword_rank == 0).mean() - 1 / np.sum(1 / np.arange(1, 65))) < 0.05


def test_fewer_options_than_categories_keeps_the_answer_among_them():
    items = generate_items(SyntheticConfig(n_samples=200, n_categories=8, n_options=3))
    assert (items.option_labels.map(len) == 3).all()
    assert items.option_texts.map(lambda t: t == sorted(t, key=CATEGORY_NAMES.index)).all()
    assert items.option_texts.map(frozenset).nunique() > 10


def _bag_of_words_accuracy(items, labels, n_train):
    vectorizer = CountVectorizer(token_pattern=r"[a-z]+", lowercase=False)
    x = vectorizer.fit_transform(items.text)
    model = LogisticRegression(C=10, max_iter=2000).fit(x[:n_train], labels[:n_train])
    return model.predict(x[n_train:]) == labels[n_train:]


def test_rule_is_learnable_and_random_labels_are_not():
    items = generate_items(SyntheticConfig())
    gold = items.gold_index.to_numpy()
    assert _bag_of_words_accuracy(items, gold, 1000).mean() > 0.9
    random = np.random.RandomState(0).randint(0, 4, len(items))
    assert _bag_of_words_accuracy(items, random, 1000).mean() < 0.4  # chance 0.25; 0.4 is > 6 sd away


def test_rare_keywords_make_hard_items():
    cfg = SyntheticConfig(n_samples=2000, words_per_category=200, seed=1)
    items, world = generate_items(cfg), _world(cfg)
    category_of = {w: c for c, ws in enumerate(world.keywords) for w in ws}
    correct = _bag_of_words_accuracy(items, items.gold_index.to_numpy(), 1500)
    seen = {w for q in items.text[:1500] for w in words(q)}
    held_out = items.iloc[1500:]
    known = np.array(
        [
            any(w in seen and category_of.get(w) == g for w in words(q))
            for q, g in zip(held_out.text, held_out.gold_index, strict=True)
        ]
    )
    assert (~known).sum() >= 20
    assert correct[known].mean() > 0.85 and correct[~known].mean() < 0.55


def test_pretraining_corpus_is_fresh_deterministic_and_covers_every_prompt_word():
    cfg = SyntheticConfig()
    corpus = pretraining_corpus(cfg, 300, seed=0)
    assert corpus == pretraining_corpus(cfg, 300, seed=0) and corpus != pretraining_corpus(cfg, 300, seed=1)
    answers = [text.rsplit("\n\n", 1)[1] for text in corpus]
    assert len(corpus) == 300 and set(answers) == set(CATEGORY_NAMES[: cfg.n_categories])  # answered with the text
    labelled = pretraining_corpus(cfg.model_copy(update={"corpus_answer": "label"}), 300, seed=0)
    for text, other, answer in zip(corpus, labelled, answers, strict=True):  # same items, answered with the letter
        letter = other.rsplit("\n\n", 1)[1]
        assert other.removesuffix(letter) == text.removesuffix(answer) and f"- {letter}: {answer}" in text
    pool = build_pool(load_config(preset="demo"), progress=False)
    pool_questions = set(generate_items(cfg).text)
    corpus_lines = {line.removeprefix("Question: ").removeprefix("Q: ") for text in corpus for line in text.split("\n")}
    assert sum(line.endswith("?") for line in corpus_lines) > 250  # the questions were found
    assert len(corpus_lines & pool_questions) == 0  # a disjoint stream: no pool item is in the corpus
    tok = build_word_tokenizer(corpus)
    unk = tok.unk_token_id
    ids = tok(list(pool.prompt) + [p + o for p, o in zip(pool.prompt, pool.options.map(lambda o: o[0]), strict=True)])[
        "input_ids"
    ]
    assert not any(unk in row for row in ids)
    with pytest.raises(MemauditError, match="cannot cover"):
        pretraining_corpus(cfg, 100, seed=0)


def test_demo_prompts_fit_max_len_with_every_template():
    cfg = load_config(preset="demo")
    syn = cfg.dataset.synthetic
    tok = build_word_tokenizer(pretraining_corpus(syn, 300, seed=0))
    items = generate_items(syn)
    longest = max(items.text, key=lambda q: len(tok.tokenize(q)))
    prompts = [
        format_mcq(longest, ["A", "B", "C", "D"], list(CATEGORY_NAMES[:4]), t) for t in range(len(MCQ_TEMPLATES))
    ]
    enc = encode_samples(tok, prompts, [list("ABCD")] * len(prompts), [3] * len(prompts), max_len=10_000)
    assert max(len(row) for row in enc.input_ids) <= cfg.training.max_len
    pool = build_pool(cfg, progress=False)
    enc = encode_samples(tok, list(pool.prompt), list(pool.options), pool.label_index.tolist(), cfg.training.max_len)
    assert not enc.truncated.any()
    assert all(row[-2] == label for row, label in zip(enc.input_ids, enc.labels, strict=True))


def test_synthetic_pool_uses_the_pool_mechanisms():
    pool = build_pool(load_config(preset="demo", overrides=["dataset.label_noise=0.3"]), progress=False)
    assert (pool.template_set == "mcq").all() and pool.template_id.nunique() == 10
    train = pool[pool.split == "train"]
    assert abs((train.label_status == 0).mean() - 0.3) < 4 * np.sqrt(0.21 / len(train))
    assert pool.source_id.str.startswith("synthetic-0-").all()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"n_options": 5}, "exceeds n_categories"), ({"min_length": 6, "max_length": 5}, "exceeds max_length")],
)
def test_bad_synthetic_settings(overrides, message):
    with pytest.raises(MemauditError, match=message):
        generate_items(SyntheticConfig(n_samples=20, **overrides))
