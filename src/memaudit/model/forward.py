"""The forward pass both training and scoring use: logits (and hidden states) at the answer position only.

Batches are left-padded to their longest row with explicit position ids (``tokenization.left_pad``), so the
answer position −3 is the same column for every row and a row's outputs do not depend on its batch-mates.
Only the last three positions go through ``lm_head`` (``logits_to_keep=3``): the full-vocabulary logits of
the other positions are never computed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

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
