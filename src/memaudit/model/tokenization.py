"""Tokenization with an exact answer position (docs/method.md §1.4, §10.1).

Every sample is encoded as ``[BOS] prompt label EOS`` (the tokenizer's own template, EOS appended when it adds
none), its text truncated on the left so that the whole fits ``max_len`` tokens: BOS stays first, as Hugging Face's
left truncation keeps it, the label token is always at position −2 and the logits that predict it at position −3.
Batches are padded on the left to the longest row (not to ``max_len``: same values, far less compute) with explicit
``position_ids`` counted from each row's first real token, so a sample's outputs do not depend on its batch-mates.
Option token ids are ``encode("\\n\\n" + label)[-1]`` without special tokens (the paper's ``[-2]`` skipped EOS).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from memaudit.errors import MemauditError

ANSWER_POSITION = -3  # logits at this position predict the label
LABEL_POSITION = -2
CHAT_FLAG = "memaudit_chat_template"  # set on a tokenizer by use_chat_template: encode_samples then applies it


@dataclass
class EncodedSamples:
    """Token ids of N samples (ragged) and their option token ids."""

    input_ids: list[np.ndarray]  # int64, each ends with [label, eos]
    option_ids: np.ndarray  # int64 [N, K]; -1 where a sample has fewer than K options
    label_index: np.ndarray  # int64 [N], index of the inserted label among the options
    truncated: np.ndarray  # bool [N], True where left truncation dropped tokens

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def labels(self) -> np.ndarray:
        """Token id of each sample's inserted label."""
        return self.option_ids[np.arange(len(self)), self.label_index]

    def n_tokens(self, rows: Sequence[int] | None = None) -> int:
        rows = range(len(self)) if rows is None else rows
        return int(sum(len(self.input_ids[i]) for i in rows))


def option_token_id(tokenizer, label: str) -> int:
    """The token id of ``label`` as it appears after ``"\\n\\n"`` at the end of a prompt."""
    ids = tokenizer.encode("\n\n" + label, add_special_tokens=False)
    if not ids:
        raise MemauditError(f"option label {label!r} encodes to no token", "use a tokenizer that knows the label")
    return int(ids[-1])


def special_frame(tokenizer) -> tuple[int, int]:
    """How many special tokens the tokenizer's template puts before and after the text (BOS …, … EOS)."""
    probe = "memaudit"
    framed = tokenizer(probe, add_special_tokens=True)["input_ids"]
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    for start in range(len(framed) - len(plain) + 1):
        if framed[start : start + len(plain)] == plain:
            return start, len(framed) - start - len(plain)
    raise MemauditError("the tokenizer's special tokens wrap the text in an unknown way", "use another tokenizer")


def _truncated(ids: list[int], frame: tuple[int, int], eos: int, max_len: int) -> tuple[list[int], bool]:
    """``ids`` (template applied) ending with EOS, its text cut on the left to fit ``max_len``; the template's
    leading special tokens (BOS) stay first, as Hugging Face's left truncation keeps them."""
    n_prefix, n_suffix = frame
    prefix, content, suffix = ids[:n_prefix], ids[n_prefix : len(ids) - n_suffix], ids[len(ids) - n_suffix :]
    if not suffix or suffix[-1] != eos:
        suffix = [*suffix, eos]
    budget = max_len - len(prefix) - len(suffix)
    if budget < 2:
        raise MemauditError(f"max_len {max_len} leaves no room for a prompt and its label", "raise training.max_len")
    cut = len(content) > budget
    return [*prefix, *(content[-budget:] if cut else content), *suffix], cut


def use_chat_template(tokenizer) -> None:
    """Make :func:`encode_samples` wrap every prompt in ``tokenizer``'s chat template (a user turn, then the opening
    of the assistant's reply, where the label goes)."""
    if not getattr(tokenizer, "chat_template", None):
        raise MemauditError("model.chat_template is set but the tokenizer has no chat template", "unset it")
    setattr(tokenizer, CHAT_FLAG, True)


def _chat_prompts(tokenizer, prompts: Sequence[str]) -> list[str]:
    if not getattr(tokenizer, CHAT_FLAG, False):
        return list(prompts)
    turns = [[{"role": "user", "content": p}] for p in prompts]
    return [tokenizer.apply_chat_template(t, tokenize=False, add_generation_prompt=True) for t in turns]


def _option_ids(tokenizer, options: Sequence[Sequence[str]]) -> np.ndarray:
    """Token id of each option label, int64 [N, K]; −1 where a sample has fewer than K options."""
    k = max((len(o) for o in options), default=0)
    cache: dict[str, int] = {}
    option_ids = np.full((len(options), k), -1, dtype=np.int64)
    for i, opts in enumerate(options):
        for j, label in enumerate(opts):
            if label not in cache:
                cache[label] = option_token_id(tokenizer, label)
            option_ids[i, j] = cache[label]
    return option_ids


def encode_samples(
    tokenizer,
    prompts: Sequence[str],
    options: Sequence[Sequence[str]],
    label_index: Sequence[int],
    max_len: int,
) -> EncodedSamples:
    """Encode ``prompt + inserted label`` per sample with the tokenizer's special tokens and EOS last, the text
    left-truncated so that the whole fits ``max_len`` tokens (BOS kept)."""
    if tokenizer.eos_token_id is None:
        raise MemauditError("the tokenizer has no EOS token", "use a tokenizer with an eos_token")
    if max_len < 4:
        raise MemauditError(f"max_len {max_len} is too small", "use max_len >= 4")
    option_ids = _option_ids(tokenizer, options)
    label_index = np.asarray(label_index, dtype=np.int64)
    prompts = _chat_prompts(tokenizer, prompts)
    texts = [p + opts[li] for p, opts, li in zip(prompts, options, label_index, strict=True)]
    frame, eos = special_frame(tokenizer), int(tokenizer.eos_token_id)
    rows: list[np.ndarray] = []
    truncated = np.zeros(len(prompts), dtype=bool)
    for i, ids in enumerate(tokenizer(texts, add_special_tokens=True)["input_ids"]):
        ids, truncated[i] = _truncated(list(ids), frame, eos, max_len)
        row = np.asarray(ids, dtype=np.int64)
        if len(row) < 3 or row[LABEL_POSITION] != option_ids[i, label_index[i]]:
            raise MemauditError(
                f"sample {i}: the label {options[i][label_index[i]]!r} does not tokenize as one final token "
                "after the prompt",
                "end prompts with a newline before the label, or use a tokenizer that splits it",
            )
        rows.append(row)
    return EncodedSamples(rows, option_ids, label_index, truncated)


def left_pad(rows: Sequence[np.ndarray], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad a batch; returns ``input_ids``, ``attention_mask`` and ``position_ids`` (int64 tensors)."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.from_numpy(np.asarray(row, dtype=np.int64))
        mask[i, width - len(row) :] = 1
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids}


def encode_frame(tokenizer, df: pd.DataFrame, max_len: int) -> EncodedSamples:
    """Encode the rows of a pool frame (``prompt`` + inserted label, left-truncated to ``max_len``)."""
    return encode_samples(tokenizer, list(df["prompt"]), list(df["options"]), df["label_index"].to_numpy(), max_len)
