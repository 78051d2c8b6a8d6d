"""The score stage: forward values of one shadow at every checkpoint, and P-SMI of its members
(docs/method.md §4, §5.2).

The base model is loaded once and wrapped in LoRA once; each checkpoint's adapter weights are then loaded into
that same model in place. Every train-pool row and every test row goes through the model once per checkpoint,
in batches of ``scoring.batch_size`` sorted by length (less padding), and the results are put back in pool
order. Per checkpoint it records the option logits at position −3 (absent options −inf), the answer-token
loss over the full vocabulary, and — on the configured layers — ``hidden_states[ℓ][:, -3, :]`` of the members,
from which P-SMI (labels = inserted label token), its std over directions and the Mahalanobis score are
computed right away, on the same device, so hidden states are only kept when ``scoring.store_hidden``.
The Mahalanobis PCA size is ``scoring.mahalanobis_components`` (part of the fingerprint, like every scoring
setting that changes the score file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from memaudit.config import ExperimentConfig
from memaudit.data.poolfile import train_pool, validate_pool
from memaudit.data.splits import member_mask
from memaudit.errors import MemauditError
from memaudit.metrics import mahalanobis, psmi
from memaudit.model.forward import forward_batches
from memaudit.model.loading import load_base_model, load_tokenizer, num_layers, resolve_device, resolve_layers
from memaudit.model.lora import apply_lora, load_adapter_weights
from memaudit.model.tokenization import EncodedSamples, encode_frame
from memaudit.stages.checkpoints import complete_checkpoints, verify_checkpoint
from memaudit.stages.schedule import schedule_for
from memaudit.stages.scorefile import write_scores
from memaudit.store.layout import ADAPTER_DIR


def _scheduled_checkpoints(
    cfg: ExperimentConfig, n_members: int, checkpoints_dir: Path
) -> list[tuple[int, float, Path]]:
    """(step, epoch, folder) of every scheduled checkpoint; all must be complete and intact in ``checkpoints_dir``."""
    schedule = schedule_for(cfg, n_members)
    done = complete_checkpoints(checkpoints_dir)
    missing = [step for step, _ in schedule if step not in done]
    if missing:
        shown = ", ".join(f"ckpt-{s}" for s in missing[:4]) + (" …" if len(missing) > 4 else "")
        raise MemauditError(
            f"{checkpoints_dir} lacks {len(missing)} of {len(schedule)} complete checkpoints ({shown})",
            "run (or resume) memaudit stage finetune for this shadow with the same config",
        )
    for step, _ in schedule:
        verify_checkpoint(done[step])
    return [(step, epoch, done[step]) for step, epoch in schedule]


def _member_statistics(
    hidden: torch.Tensor, labels: np.ndarray, cfg: ExperimentConfig, device: torch.device
) -> np.ndarray:
    """P-SMI, its std over directions and the Mahalanobis score of each member, per layer: [3, L, n]."""
    s = cfg.scoring
    out = np.empty((3, hidden.shape[0], hidden.shape[1]), dtype=np.float64)
    try:
        for i, features in enumerate(hidden):
            mean, std = psmi(
                features, labels, n_directions=s.psmi_directions, seed=s.psmi_seed, device=device, return_std=True
            )
            out[0, i], out[1, i] = mean, std
            out[2, i] = mahalanobis(features, n_components=s.mahalanobis_components, device=device)
    except ValueError as exc:
        raise MemauditError(
            f"P-SMI/Mahalanobis of the members failed: {exc}",
            "check that the shadow trained without diverging and has at least 2 members per label",
        ) from None
    return out


@dataclass
class _Outputs:
    """What scoring fills in, checkpoint by checkpoint (train rows first, then test rows)."""

    logits: np.ndarray  # float32 [C, N + T, K]
    loss: np.ndarray  # float32 [C, N + T]
    stats: np.ndarray  # float32 [3, C, L, N]: P-SMI, its std, Mahalanobis (members only, NaN elsewhere)
    hidden: np.ndarray | None = None  # float16 [C, L, kept, d] when scoring.store_hidden


class _Scorer:
    """The model, the encoded pool and the bookkeeping of which rows' hidden states are kept."""

    def __init__(self, cfg: ExperimentConfig, model, enc: EncodedSamples, pad_id: int, member: np.ndarray, dev):
        self.cfg, self.model, self.enc, self.pad_id, self.dev = cfg, model, enc, pad_id, dev
        self.layers = resolve_layers(cfg.model.layers, num_layers(model), cfg.model.name)
        self.store_hidden = cfg.scoring.store_hidden and bool(self.layers)
        n_train = len(member)
        self.members = np.flatnonzero(member)
        kept = np.arange(n_train) if self.store_hidden else self.members  # rows whose hidden states are kept
        self.slot = np.full(len(enc), -1, dtype=np.int64)
        self.slot[kept] = np.arange(len(kept))
        self.n_kept = len(kept)
        self.option_ids, self.answer_ids = torch.as_tensor(enc.option_ids), torch.as_tensor(enc.labels)

    def checkpoint(self, c: int, out: _Outputs, bar) -> None:
        """Forward the whole pool with the loaded adapter; fill row ``c`` of ``out``."""
        hidden: torch.Tensor | None = None
        batches = forward_batches(
            self.model,
            self.enc.input_ids,
            self.pad_id,
            self.dev,
            self.cfg.model,
            self.cfg.scoring.batch_size,
            self.layers,
        )
        for batch, logits, states in batches:
            ids = self.option_ids[batch].to(self.dev)
            out.logits[c, batch] = logits.gather(1, ids.clamp(min=0)).masked_fill(ids < 0, float("-inf")).cpu().numpy()
            loss = F.cross_entropy(logits, self.answer_ids[batch].to(self.dev), reduction="none")
            out.loss[c, batch] = loss.cpu().numpy()
            hidden = self._keep_hidden(hidden, batch, states)
            bar.update(len(batch))
        if hidden is not None:
            self._statistics(c, hidden, out)

    def _keep_hidden(self, hidden: torch.Tensor | None, batch: np.ndarray, states: list[torch.Tensor]):
        rows = self.slot[batch] >= 0
        if not self.layers or not rows.any():
            return hidden
        if hidden is None:
            shape = (len(self.layers), self.n_kept, states[0].shape[-1])
            hidden = torch.empty(shape, dtype=torch.float32, device=self.dev)
        targets = torch.as_tensor(self.slot[batch][rows], device=self.dev)
        for i, state in enumerate(states):
            hidden[i, targets] = state[torch.as_tensor(rows, device=self.dev)].float()
        return hidden

    def _statistics(self, c: int, hidden: torch.Tensor, out: _Outputs) -> None:
        labels = self.enc.labels[self.members]
        out.stats[:, c][..., self.members] = _member_statistics(
            hidden[:, self.slot[self.members]], labels, self.cfg, self.dev
        )
        if self.store_hidden:
            if out.hidden is None:
                out.hidden = np.empty((out.logits.shape[0], *hidden.shape), dtype=np.float16)
            out.hidden[c] = hidden.cpu().numpy().astype(np.float16)


def _score_arrays(
    train: pd.DataFrame, test: pd.DataFrame, member: np.ndarray, shadow: int, checkpoints, scorer: _Scorer, out
) -> dict[str, np.ndarray]:
    """The score file's arrays (``scorefile`` schema) from what scoring filled in."""
    n_train = len(train)
    arrays: dict[str, np.ndarray] = {
        "global_index": train["global_index"].to_numpy(),
        "member": member,
        "label_index": train["label_index"].to_numpy(),
        "checkpoints": np.array([s for s, _, _ in checkpoints], dtype=np.int64),
        "epochs": np.array([e for _, e, _ in checkpoints], dtype=np.float64),
        "option_logits": out.logits[:, :n_train],
        "loss": out.loss[:, :n_train],
        "layers": np.array(scorer.layers, dtype=np.int64),
        "psmi": out.stats[0],
        "psmi_std": out.stats[1],
        "mahalanobis": out.stats[2],
        "shadow": np.int64(shadow),
        "test_global_index": test["global_index"].to_numpy(),
        "test_label_index": test["label_index"].to_numpy(),
        "test_option_logits": out.logits[:, n_train:],
        "test_loss": out.loss[:, n_train:],
    }
    if out.hidden is not None:
        arrays["hidden"] = out.hidden
    return arrays


def score_shadow(
    cfg: ExperimentConfig,
    pool_df: pd.DataFrame,
    member: np.ndarray,
    shadow: int,
    base_model: str | Path | None,
    checkpoints_dir: str | Path,
    output_path: str | Path,
    *,
    device: str = "auto",
    progress: bool = True,
) -> Path:
    """Score shadow ``shadow`` at all its checkpoints and write its score file (``scorefile`` schema)."""
    pool_df = validate_pool(pool_df)
    train = train_pool(pool_df)
    test = pool_df[pool_df["split"] == "test"].reset_index(drop=True)
    member = member_mask(member, len(train))
    checkpoints = _scheduled_checkpoints(cfg, int(member.sum()), Path(checkpoints_dir))
    dev = resolve_device(device)
    tokenizer = load_tokenizer(cfg.model, base_model)
    enc = encode_frame(tokenizer, pd.concat([train, test], ignore_index=True), cfg.training.max_len)
    model = apply_lora(load_base_model(cfg.model, base_model, dev), cfg.lora, cfg.lora.seed + shadow)
    model.eval()
    scorer = _Scorer(cfg, model, enc, tokenizer.pad_token_id, member, dev)
    n_ckpt, n_rows, k = len(checkpoints), len(enc), enc.option_ids.shape[1]
    out = _Outputs(
        logits=np.empty((n_ckpt, n_rows, k), dtype=np.float32),
        loss=np.empty((n_ckpt, n_rows), dtype=np.float32),
        stats=np.full((3, n_ckpt, len(scorer.layers), len(train)), np.nan, dtype=np.float32),
    )
    bar = tqdm(total=n_ckpt * n_rows, desc=f"score shadow {shadow}", unit="sample", disable=not progress)
    with bar, torch.inference_mode():
        for c, (_, _, folder) in enumerate(checkpoints):
            load_adapter_weights(model, folder / ADAPTER_DIR, cfg.lora)
            scorer.checkpoint(c, out, bar)
    return write_scores(output_path, **_score_arrays(train, test, member, shadow, checkpoints, scorer, out))
