"""audit-model (docs/design.md §2.8): a LoRA adapter trained outside memaudit, on the run's base model and pool,
scored against the run's stored shadow population.

- The statistic is the logit gap of the inserted label at the answer position (docs/method.md §5.4), from the same
  forward pass, encoding and batches as the score stage (:func:`model_statistic`): for a shadow's own final
  adapter it equals that shadow's stored final gap.
- The score is LiRA against the run's reference shadows: the complete shadows but the target, the population of
  the run's ground truth, so the user's model takes the target's place. Online (the run's ``evaluation.lira_mode``,
  per-sample or global variances) when the user's members are known, offline (OUT shadows only) when not.
- Memorized: score ≥ the run's memorized threshold, i.e. :func:`memaudit.metrics.memorized_threshold` of the
  target's own scores on its members in the same mode (the fixed value under rule ``threshold``); only members
  can be memorized when the members are known.

Outputs (:func:`write_model_audit`): ``model_audit.parquet`` (one row per train-pool sample), ``model_audit.json``
(the facts) and ``model_audit.md`` (a short report section).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from memaudit.config import ExperimentConfig
from memaudit.data.poolfile import train_pool, validate_pool
from memaudit.errors import MemauditError
from memaudit.metrics import lira, logit_gap, memorized_threshold
from memaudit.model.adapter import load_adapter
from memaudit.model.forward import forward_batches
from memaudit.model.loading import load_base_model, load_tokenizer, resolve_device
from memaudit.model.tokenization import encode_frame
from memaudit.store.atomic import atomic_path, write_bytes

TABLE, FACTS, REPORT = "model_audit.parquet", "model_audit.json", "model_audit.md"
ONLINE, OFFLINE = "online", "offline"
TOP = 10  # samples listed in the report section
_PROMPT_CHARS = 70
_ID_COLUMN = "id"


def read_member_ids(path: str | Path) -> list[str]:
    """The ids of a member file: a CSV or parquet file with an ``id`` column, else text with one id per line."""
    path = Path(path)
    if not path.is_file():
        raise MemauditError(f"member file {path} not found", "pass a file listing your model's training samples")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".parquet", ".pq"):
        try:
            frame = pd.read_csv(path, dtype=str) if suffix == ".csv" else pd.read_parquet(path)
        except (ValueError, OSError, pd.errors.ParserError) as exc:
            raise MemauditError(
                f"member file {path} is unreadable ({type(exc).__name__})", "check its format"
            ) from None
        if _ID_COLUMN not in frame.columns:
            raise MemauditError(f"member file {path} has no {_ID_COLUMN!r} column", "name the id column 'id'")
        ids = [str(v).strip() for v in frame[_ID_COLUMN].dropna()]
    else:
        try:
            ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        except UnicodeDecodeError:
            raise MemauditError(f"cannot read member file {path} as UTF-8", "save it as UTF-8") from None
    ids = [i for i in ids if i]
    if not ids:
        raise MemauditError(f"member file {path} lists no ids", "list one sample id per line (or an 'id' column)")
    return ids


def member_mask_from_ids(train: pd.DataFrame, ids: list[str], where: str) -> np.ndarray:
    """bool [N] over the train pool: the rows an id names, by ``source_id`` or, failing that, by ``global_index``."""
    source = train["source_id"].astype(str).to_numpy()
    by_index = {str(g): k for k, g in enumerate(train["global_index"].to_numpy())}
    by_source: dict[str, list[int]] = {}
    for k, s in enumerate(source):
        by_source.setdefault(s, []).append(k)
    mask = np.zeros(len(train), dtype=bool)
    for sample in ids:
        rows = by_source.get(sample) or ([by_index[sample]] if sample in by_index else [])
        if not rows:
            raise MemauditError(
                f"member id {sample!r} in {where} is not a sample of the run's train pool",
                "list the pool's source_id or global_index values of train rows (pool.parquet of the run)",
            )
        mask[rows] = True
    return mask


def model_statistic(
    cfg: ExperimentConfig,
    pool_df: pd.DataFrame,
    base_model: str | Path | None,
    adapter_dir: str | Path,
    *,
    device: str = "auto",
    progress: bool = True,
) -> np.ndarray:
    """The adapter's logit gap on every train-pool sample, float64 [N]: the base model with the adapter loaded, the
    whole pool (train then test rows) encoded and batched as the score stage does, so the numbers are the same."""
    pool_df = validate_pool(pool_df)
    train = train_pool(pool_df)
    rows = pd.concat([train, pool_df[pool_df["split"] == "test"]], ignore_index=True)
    dev = resolve_device(device)
    tokenizer = load_tokenizer(cfg.model, base_model)
    enc = encode_frame(tokenizer, rows, cfg.training.max_len)
    model = load_adapter(load_base_model(cfg.model, base_model, dev), adapter_dir)
    option_ids = torch.as_tensor(enc.option_ids)
    logits = np.empty(option_ids.shape, dtype=np.float32)
    batches = forward_batches(model, enc.input_ids, tokenizer.pad_token_id, dev, cfg.model, cfg.scoring.batch_size)
    with tqdm(total=len(enc), desc="score adapter", unit="sample", disable=not progress) as bar, torch.inference_mode():
        for batch, full, _ in batches:
            ids = option_ids[batch].to(dev)
            logits[batch] = full.gather(1, ids.clamp(min=0)).masked_fill(ids < 0, float("-inf")).cpu().numpy()
            bar.update(len(batch))
    try:
        return logit_gap(logits[: len(train)], train["label_index"].to_numpy())
    except ValueError as exc:
        raise MemauditError(
            f"the adapter's outputs cannot be scored ({exc})", "check that its training did not diverge"
        ) from None


def audit_scores(
    cfg: ExperimentConfig, final_gap: np.ndarray, member: np.ndarray, statistic: np.ndarray, members: np.ndarray | None
) -> tuple[np.ndarray, float, str]:
    """(LiRA score [N], the run's memorized threshold, mode) of ``statistic`` against the reference shadows: rows
    1.. of ``final_gap``/``member`` [M, N] (row 0 is the run's target, which sets the threshold)."""
    ev = cfg.evaluation
    online = members is not None and ev.lira_mode != OFFLINE
    kwargs = {"online": online, "global_variance": ev.lira_mode == "global", "clip": ev.lira_clip}
    try:
        score = lira(statistic, final_gap[1:], member[1:], **kwargs)
        target = lira(final_gap[0], final_gap[1:], member[1:], **kwargs)
        threshold = memorized_threshold(
            target[member[0]], rule=ev.memorized_rule, fraction=ev.memorized_fraction, threshold=ev.memorized_threshold
        )
    except ValueError as exc:
        raise MemauditError(f"audit-model: {exc}", "check the run's score files and the adapter's outputs") from None
    return score, threshold, ONLINE if online else OFFLINE


def audit_frame(
    cfg: ExperimentConfig,
    train: pd.DataFrame,
    final_gap: np.ndarray,
    member: np.ndarray,
    statistic: np.ndarray,
    members: np.ndarray | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per train-pool sample (global_index, id, label_index, label_status, statistic, score, memorized and,
    when ``members`` is given, member) and the facts of the audit (mode, threshold, counts)."""
    statistic = np.asarray(statistic, dtype=np.float64)
    score, threshold, mode = audit_scores(cfg, final_gap, member, statistic, members)
    flags = score >= threshold if members is None else (score >= threshold) & members
    frame = pd.DataFrame(
        {
            "global_index": train["global_index"].to_numpy(),
            _ID_COLUMN: train["source_id"].astype(str).to_numpy(),
            "label_index": train["label_index"].to_numpy(),
            "label_status": train["label_status"].to_numpy(),
            "statistic": statistic,
            "score": score,
            "memorized": flags,
        }
    )
    if members is not None:
        frame["member"] = members
    facts = {
        "mode": mode,
        "lira_mode": cfg.evaluation.lira_mode,
        "memorized_rule": cfg.evaluation.memorized_rule,
        "threshold": threshold,
        "n_samples": len(frame),
        "n_members": None if members is None else int(members.sum()),
        "n_memorized": int(flags.sum()),
        "n_reference_shadows": int(final_gap.shape[0] - 1),
    }
    return frame, facts


def _short(prompt: str) -> str:
    text = " ".join(str(prompt).split()).replace("|", "\\|")
    return text if len(text) <= _PROMPT_CHARS else text[: _PROMPT_CHARS - 1] + "…"


_READING = {
    ONLINE: "the log-likelihood ratio of your model's logit gap under the shadows that trained on the sample "
    "against those that did not",
    OFFLINE: "the log-odds that your model's logit gap lies above those of the shadows that did not train on the "
    "sample (your members are unknown, so every sample can be flagged)",
}


def report_section(frame: pd.DataFrame, facts: dict[str, Any], prompts: list[str]) -> str:
    """The Markdown section: counts, the ``TOP`` highest-scored samples (members only when known), how to read it.
    ``facts`` holds :func:`audit_frame`'s facts and the task's (adapter, fingerprint, base_model)."""
    known = facts["n_members"] is not None
    lines = [
        "## Model audit",
        "",
        f"Adapter `{facts['adapter']}` against run `{facts['fingerprint']}` (base model {facts['base_model']}): "
        f"{facts['mode']} LiRA against {facts['n_reference_shadows']} reference shadows.",
        "",
        f"- samples scored: {facts['n_samples']}" + (f"; your members: {facts['n_members']}" if known else ""),
        f"- memorized: {facts['n_memorized']} (score ≥ {facts['threshold']:.3f}, the run's memorized threshold)",
        "",
        "| rank | id | global_index | score | memorized | prompt |",
        "|---:|---|---:|---:|:---:|---|",
    ]
    ranked = frame[frame["member"]] if known else frame
    top = ranked.sort_values("score", ascending=False, kind="stable").head(TOP)
    for rank, (k, row) in enumerate(top.iterrows(), start=1):
        mark = "yes" if row["memorized"] else ""
        shown = f"{row['id']} | {row['global_index']} | {row['score']:.2f} | {mark} | {_short(prompts[k])}"
        lines.append(f"| {rank} | {shown} |")
    lines += [
        "",
        f"How to read it: a sample's score is {_READING[facts['mode']]}; higher means your model treats it the way "
        "models trained on it do. The threshold is the one the run's own audit applies to its target, in the same "
        "mode, so your flags are on the run's scale.",
    ]
    return "\n".join(lines) + "\n"


def write_model_audit(out: str | Path, frame: pd.DataFrame, facts: dict[str, Any], prompts: list[str]) -> Path:
    """Write the table, the facts and the report section into ``out`` (each file atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / TABLE) as tmp:
        frame.to_parquet(tmp, index=False)
    write_bytes(out / FACTS, (json.dumps(facts, indent=2) + "\n").encode())
    write_bytes(out / REPORT, report_section(frame, facts, prompts).encode())
    return out
