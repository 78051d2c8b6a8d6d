"""The score stage: forward values of one shadow at every checkpoint, and P-SMI of its members (METHOD §4, §5.2).

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

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from memaudit.config import ExperimentConfig
from memaudit.errors import MemauditError
from memaudit.forward import answer_forward, autocast, encode_frame, member_mask
from memaudit.models import apply_lora, load_adapter_weights, load_base_model, load_tokenizer, resolve_device
from memaudit.pool import train_pool, validate_pool
from memaudit.schedule import ADAPTER_DIR, checkpoint_schedule, complete_checkpoints
from memaudit.scorefile import write_scores


def _scheduled_checkpoints(
    cfg: ExperimentConfig, n_members: int, checkpoints_dir: Path
) -> list[tuple[int, float, Path]]:
    """(step, epoch, folder) of every scheduled checkpoint; all must be complete in ``checkpoints_dir``."""
    t, c = cfg.training, cfg.checkpoints
    schedule = checkpoint_schedule(
        n_members, t.batch_size, t.grad_accum, t.epochs, c.per_epoch_in_first, c.every_epochs
    )
    done = complete_checkpoints(checkpoints_dir)
    missing = [step for step, _ in schedule if step not in done]
    if missing:
        shown = ", ".join(f"ckpt-{s}" for s in missing[:4]) + (" …" if len(missing) > 4 else "")
        raise MemauditError(
            f"{checkpoints_dir} lacks {len(missing)} of {len(schedule)} complete checkpoints ({shown})",
            "run (or resume) memaudit stage finetune for this shadow with the same config",
        )
    return [(step, epoch, done[step]) for step, epoch in schedule]


def _member_statistics(
    hidden: torch.Tensor, labels: np.ndarray, cfg: ExperimentConfig, device: torch.device
) -> np.ndarray:
    """P-SMI, its std over directions and the Mahalanobis score of each member, per layer: [3, L, n]."""
    from memaudit.metrics import mahalanobis, psmi

    s = cfg.scoring
    out = np.empty((3, hidden.shape[0], hidden.shape[1]), dtype=np.float64)
    for i, features in enumerate(hidden):
        mean, std = psmi(
            features, labels, n_directions=s.psmi_directions, seed=s.psmi_seed, device=device, return_std=True
        )
        out[0, i], out[1, i] = mean, std
        out[2, i] = mahalanobis(features, n_components=cfg.scoring.mahalanobis_components, device=device)
    return out


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
    n_train, n_test = len(train), len(test)
    checkpoints = _scheduled_checkpoints(cfg, int(member.sum()), Path(checkpoints_dir))
    dev = resolve_device(device)

    tokenizer = load_tokenizer(cfg.model, base_model)
    enc = encode_frame(tokenizer, pd.concat([train, test], ignore_index=True), cfg.training.max_len)
    option_ids = torch.as_tensor(enc.option_ids)
    answer_ids = torch.as_tensor(enc.labels)
    model = apply_lora(load_base_model(cfg.model, base_model, dev), cfg.lora, cfg.lora.seed + shadow)
    model.eval()

    layers = list(cfg.model.layers)
    store_hidden = cfg.scoring.store_hidden and bool(layers)
    kept = np.arange(n_train) if store_hidden else np.flatnonzero(member)  # rows whose hidden states are kept
    slot = np.full(n_train + n_test, -1, dtype=np.int64)
    slot[kept] = np.arange(len(kept))
    member_slots = slot[np.flatnonzero(member)]
    lengths = np.array([len(r) for r in enc.input_ids])
    order = np.argsort(lengths, kind="stable")
    bs = cfg.scoring.batch_size
    batches = [order[i : i + bs] for i in range(0, len(order), bs)]

    n_ckpt, n_layers, k = len(checkpoints), len(layers), option_ids.shape[1]
    logits_all = np.empty((n_ckpt, n_train + n_test, k), dtype=np.float32)
    loss_all = np.empty((n_ckpt, n_train + n_test), dtype=np.float32)
    stats = np.full((3, n_ckpt, n_layers, n_train), np.nan, dtype=np.float32)
    hidden_store: np.ndarray | None = None
    member_labels = enc.labels[np.flatnonzero(member)]
    bar = tqdm(total=n_ckpt * len(order), desc=f"score shadow {shadow}", unit="sample", disable=not progress)
    with bar, torch.inference_mode():
        for c, (_, _, folder) in enumerate(checkpoints):
            load_adapter_weights(model, folder / ADAPTER_DIR, cfg.lora)
            hidden: torch.Tensor | None = None
            for batch in batches:
                with autocast(cfg.model, dev):
                    logits, states = answer_forward(
                        model, [enc.input_ids[i] for i in batch], tokenizer.pad_token_id, dev, layers
                    )
                logits = logits.float()
                ids = option_ids[batch].to(dev)
                chosen = logits.gather(1, ids.clamp(min=0)).masked_fill(ids < 0, float("-inf"))
                loss = F.cross_entropy(logits, answer_ids[batch].to(dev), reduction="none")
                logits_all[c, batch] = chosen.cpu().numpy()
                loss_all[c, batch] = loss.cpu().numpy()
                rows = slot[batch] >= 0
                if layers and rows.any():
                    if hidden is None:
                        hidden = torch.empty(
                            (n_layers, len(kept), states[0].shape[-1]), dtype=torch.float32, device=dev
                        )
                    targets = torch.as_tensor(slot[batch][rows], device=dev)
                    for i, state in enumerate(states):
                        hidden[i, targets] = state[torch.as_tensor(rows, device=dev)].float()
                bar.update(len(batch))
            if hidden is not None:
                stats[:, c][..., np.flatnonzero(member)] = _member_statistics(
                    hidden[:, member_slots], member_labels, cfg, dev
                )
                if store_hidden:
                    if hidden_store is None:
                        hidden_store = np.empty((n_ckpt, *hidden.shape), dtype=np.float16)
                    hidden_store[c] = hidden.cpu().numpy().astype(np.float16)

    arrays: dict[str, np.ndarray] = {
        "global_index": train["global_index"].to_numpy(),
        "member": member,
        "label_index": train["label_index"].to_numpy(),
        "checkpoints": np.array([s for s, _, _ in checkpoints], dtype=np.int64),
        "epochs": np.array([e for _, e, _ in checkpoints], dtype=np.float64),
        "option_logits": logits_all[:, :n_train],
        "loss": loss_all[:, :n_train],
        "layers": np.array(layers, dtype=np.int64),
        "psmi": stats[0],
        "psmi_std": stats[1],
        "mahalanobis": stats[2],
        "shadow": np.int64(shadow),
        "test_global_index": test["global_index"].to_numpy(),
        "test_label_index": test["label_index"].to_numpy(),
        "test_option_logits": logits_all[:, n_train:],
        "test_loss": loss_all[:, n_train:],
    }
    if hidden_store is not None:
        arrays["hidden"] = hidden_store
    return write_scores(output_path, **arrays)
