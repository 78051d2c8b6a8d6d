"""The forward pass both training and scoring use: logits (and hidden states) at the answer position only.

Batches are left-padded to their longest row with explicit position ids (``tokenization.left_pad``), so the
answer position −3 is the same column for every row and a row's outputs do not depend on its batch-mates.
Only the last three positions go through ``lm_head`` (``logits_to_keep=3``): the full-vocabulary logits of
the other positions are never computed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from memaudit.config import ModelConfig
from memaudit.model.tokenization import ANSWER_POSITION, left_pad


def autocast(model_cfg: ModelConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast (on CUDA or the CPU) when ``model.autocast_bf16``: with fp32 weights, the authors' precision
    (docs/method.md §3.1); a no-op otherwise."""
    if model_cfg.autocast_bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def answer_forward(
    model,
    rows: Sequence[np.ndarray],
    pad_id: int,
    device: torch.device,
    layers: Sequence[int] = (),
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits [B, V] at position −3 and, per requested layer, ``hidden_states[layer][:, -3, :]`` [B, d]."""
    batch = {k: v.to(device) for k, v in left_pad(rows, pad_id).items()}
    want_hidden = len(layers) > 0
    out = model(**batch, logits_to_keep=-ANSWER_POSITION, output_hidden_states=want_hidden, use_cache=False)
    logits = out.logits[:, 0, :]
    hidden = [out.hidden_states[layer][:, ANSWER_POSITION, :] for layer in layers] if want_hidden else []
    return logits, hidden


def length_batches(rows: Sequence[np.ndarray], batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of ``batch_size``, sorted by length (less padding); outputs go back by index."""
    order = np.argsort([len(r) for r in rows], kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def forward_batches(
    model,
    rows: Sequence[np.ndarray],
    pad_id: int,
    device: torch.device,
    model_cfg: ModelConfig,
    batch_size: int,
    layers: Sequence[int] = (),
) -> Iterator[tuple[np.ndarray, torch.Tensor, list[torch.Tensor]]]:
    """(row indices, float logits [B, V], hidden states) of :func:`answer_forward` over ``rows`` in
    :func:`length_batches`."""
    for batch in length_batches(rows, batch_size):
        with autocast(model_cfg, device):
            logits, states = answer_forward(model, [rows[i] for i in batch], pad_id, device, layers)
        yield batch, logits.float(), states
