"""The synthetic multiple-choice dataset of the demo and the tests.

Each item is a short bag of words: made-up keywords, each belonging to one of ``n_categories`` categories
(``animal``, ``fruit``, ...), mixed with category-neutral filler words. The options are category names and the
answer is the category of the keywords: a rule a small model learns, so it generalises to held-out items and a
*random* label can only be memorised. Difficulty varies:

- keyword frequencies follow a Zipf law (``keyword_zipf``) within each category, so rare keywords are seen by a
  model only a few times (the long tail where clean samples get memorised too); ``keyword_rank`` records the rank
  (0 = most frequent) of the item's most frequent answer keyword;
- a ``hard_fraction`` of the items (``hard`` = True) hold two keywords of the answer category and one competing
  keyword of another category: the majority wins.

Options are the category names in category order (all of them when ``n_options == n_categories``, the default;
otherwise the answer and ``n_options - 1`` other categories), labelled ``A``, ``B``, ... and formatted by the pool
builder with the ARC/MMLU templates; label noise comes from the pool builder too. Everything is deterministic
from ``SyntheticConfig.seed``: the vocabulary, the pool items and the pre-training corpus use disjoint
``RandomState`` streams.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np
import pandas as pd

from memaudit.config import ExperimentConfig, SyntheticConfig
from memaudit.data.templates import MCQ_TEMPLATES, format_mcq
from memaudit.errors import MemauditError

CATEGORY_NAMES = (
    "animal",
    "fruit",
    "metal",
    "color",
    "tool",
    "planet",
    "river",
    "city",
    "dance",
    "spice",
    "stone",
    "cloud",
    "flower",
    "bird",
    "fish",
    "tree",
)
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_STREAM_ITEMS, _STREAM_CORPUS, _STREAM_VOCAB = 0, 1, 2


@dataclass(frozen=True)
class _World:
    keywords: list[list[str]]  # [category][rank]
    fillers: list[str]
    keyword_p: np.ndarray  # Zipf probabilities over ranks


def _check(cfg: SyntheticConfig) -> None:
    if cfg.n_categories > len(CATEGORY_NAMES):
        raise MemauditError(
            f"synthetic n_categories {cfg.n_categories} exceeds the {len(CATEGORY_NAMES)} category names",
            f"use n_categories <= {len(CATEGORY_NAMES)}",
        )
    if cfg.n_options > cfg.n_categories:
        raise MemauditError(
            f"synthetic n_options {cfg.n_options} exceeds n_categories {cfg.n_categories}",
            "use n_options <= n_categories",
        )
    if cfg.min_length > cfg.max_length:
        raise MemauditError(
            f"synthetic min_length {cfg.min_length} exceeds max_length {cfg.max_length}", "use min_length <= max_length"
        )


def _world(cfg: SyntheticConfig) -> _World:
    """The made-up vocabulary: lowercase pseudo-words, distinct from every template and category word."""
    _check(cfg)
    rng = np.random.RandomState([cfg.seed, _STREAM_VOCAB])
    reserved = {w.lower() for t in MCQ_TEMPLATES for w in _words(t)} | set(CATEGORY_NAMES)
    needed = cfg.n_categories * cfg.words_per_category + cfg.n_filler_words
    words: list[str] = []
    seen = set(reserved)
    while len(words) < needed:
        n_syllables = 2 + rng.randint(2)
        word = "".join(_CONSONANTS[rng.randint(len(_CONSONANTS))] + _VOWELS[rng.randint(5)] for _ in range(n_syllables))
        if rng.random() < 0.5:
            word += _CONSONANTS[rng.randint(len(_CONSONANTS))]
        if word not in seen:
            seen.add(word)
            words.append(word)
    w = cfg.words_per_category
    keywords = [words[c * w : (c + 1) * w] for c in range(cfg.n_categories)]
    ranks = np.arange(1, w + 1, dtype=np.float64)
    p = ranks ** (-cfg.keyword_zipf)
    return _World(keywords, words[cfg.n_categories * w :], p / p.sum())


def _words(text: str) -> list[str]:
    return "".join(
        ch if ch.isalnum() else " " for ch in text.replace("{question}", " ").replace("{options_}", " ")
    ).split()


def _item(
    rng: np.random.RandomState,
    world: _World,
    cfg: SyntheticConfig,
    force_keyword: tuple[int, int] | None = None,
    force_filler: int | None = None,
) -> dict:
    n_cat, w = cfg.n_categories, cfg.words_per_category
    gold = rng.randint(n_cat)
    rank = rng.choice(w, p=world.keyword_p)
    if force_keyword is not None:
        gold, rank = force_keyword
    keywords = [(gold, rank)]
    hard = bool(rng.random() < cfg.hard_fraction)
    if hard:
        keywords.append((gold, rng.choice(w, p=world.keyword_p)))
        keywords.append(((gold + 1 + rng.randint(n_cat - 1)) % n_cat, rng.choice(w, p=world.keyword_p)))
    n_words = rng.randint(cfg.min_length, cfg.max_length + 1)
    fillers = list(rng.randint(len(world.fillers), size=max(0, n_words - len(keywords))))
    if force_filler is not None:
        fillers = [force_filler, *fillers[1:]]
    tokens = [world.keywords[c][r] for c, r in keywords] + [world.fillers[f] for f in fillers]
    tokens = [tokens[i] for i in rng.permutation(len(tokens))]
    if cfg.n_options == n_cat:
        cats = list(range(n_cat))
    else:
        others = [c for c in range(n_cat) if c != gold]
        cats = sorted([gold, *rng.choice(others, cfg.n_options - 1, replace=False).tolist()])
    return {
        "text": " ".join(tokens) + "?",
        "option_labels": list(string.ascii_uppercase[: cfg.n_options]),
        "option_texts": [CATEGORY_NAMES[c] for c in cats],
        "gold_index": cats.index(gold),
        "hard": hard,
        "keyword_rank": int(min(r for c, r in keywords if c == gold)),
    }


def generate_items(cfg: SyntheticConfig) -> pd.DataFrame:
    """``cfg.n_samples`` raw items (the columns of :data:`memaudit.data.sources.RAW_COLUMNS` plus ``hard`` and
    ``keyword_rank``), the train_hf part of the synthetic pool."""
    world = _world(cfg)
    rng = np.random.RandomState([cfg.seed, _STREAM_ITEMS])
    rows = []
    for i in range(cfg.n_samples):
        row = _item(rng, world, cfg)
        row["source_id"] = f"synthetic-{cfg.seed}-{i}"
        row["source_split"] = "generated"
        rows.append(row)
    return pd.DataFrame(rows)


def pretraining_corpus(cfg: SyntheticConfig, n_texts: int, seed: int) -> list[str]:
    """``n_texts`` full texts (prompt + gold answer) of fresh items, from a stream disjoint from the pool's.

    For pre-training the tiny demo model and training its word tokenizer: the first texts cycle through every
    template, keyword and filler word, so the vocabulary covers every word a pool prompt can contain. The answer
    is the gold option's label (``cfg.corpus_answer == "label"``: the model then already answers in the pool's
    format at checkpoint 0) or its text, the category name (``"text"``: the model knows the categories but not
    the answer-letter format, like the paper's pre-trained LLMs, whose checkpoint-0 answer loss is 4–6;
    fine-tuning learns the format within the first epoch, which is what the c_pred rule detects).
    """
    world = _world(cfg)
    n_keywords = cfg.n_categories * cfg.words_per_category
    needed = max(len(MCQ_TEMPLATES), n_keywords, len(world.fillers))
    if n_texts < needed:
        raise MemauditError(
            f"a pre-training corpus of {n_texts} texts cannot cover the {needed} synthetic words and templates",
            f"ask for at least {needed} texts",
        )
    rng = np.random.RandomState([cfg.seed, _STREAM_CORPUS, seed])
    texts = []
    for i in range(n_texts):
        force_keyword = (i % cfg.n_categories, i // cfg.n_categories) if i < n_keywords else None
        force_filler = i if i < len(world.fillers) else None
        item = _item(rng, world, cfg, force_keyword, force_filler)
        prompt = format_mcq(item["text"], item["option_labels"], item["option_texts"], i % len(MCQ_TEMPLATES))
        answers = item["option_labels"] if cfg.corpus_answer == "label" else item["option_texts"]
        texts.append(prompt + answers[item["gold_index"]])
    return texts


def tiny_model_corpus(cfg: ExperimentConfig, pool) -> list[str]:
    """Text the locally built tiny model is pre-trained on (and its tokenizer learns): fresh synthetic items
    (``model.tiny.pretrain_texts`` of them, from a stream disjoint from the pool's) for the synthetic dataset;
    otherwise the pool's prompts with their true labels (vocabulary coverage)."""
    if cfg.dataset.synthetic is not None:
        return pretraining_corpus(
            cfg.dataset.synthetic, n_texts=cfg.model.tiny.pretrain_texts, seed=cfg.model.tiny.seed
        )
    return [p + opts[g] for p, opts, g in zip(pool["prompt"], pool["options"], pool["gold_index"], strict=True)]
