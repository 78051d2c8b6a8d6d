"""The aggregate stage (DESIGN §2.5): score files of the whole population → ground truth, predictors, evaluation.

Inputs: one score file per model (:mod:`memaudit.scorefile`), the pool, the config. The target is
``cfg.shadows.target``; its id, like every model's, comes from the file's ``shadow`` key (else the last integer
in the file name or its folder, e.g. ``shadows/3/scores.npz`` or ``shadow-3.npz``).

- Ground truth: LiRA of the target's final logit gaps against the other S − 1 models' final gaps
  (``cfg.evaluation.lira_mode``), memorized = top ``memorized_fraction`` of its members (or LLR ≥ threshold).
  Every model in turn gets the same, leave-one-out (:func:`lira_loo`), for the mean ± std over models.
- c_pred: from the target's median member loss (``c_pred_loss_ratio``), unless forced; the same step is used
  for every model.
- Predictors at c_pred, evaluated on each model's own members: −P-SMI per layer, +loss, −logit gap,
  +Mahalanobis per layer (when stored), +early LiRA (the model at c_pred against the others at their final
  checkpoint, as the paper).

Files are read one at a time, the target's whole and only the c_pred and final checkpoints of the others
(:mod:`memaudit.score_rows`); what is kept is, per model, the final and c_pred logit gaps and the raw predictor
values at c_pred (float32), plus the target's arrays: about 4·S·N·(2L + 7) bytes.

Outputs in ``output_dir``: ``samples.parquet`` (one row per train-pool sample: raw predictor values at c_pred,
not sign-flipped, plus the target's P-SMI slope against checkpoint 0 and P-SMI std over directions per layer),
``summary.json``, ``roc.parquet`` (target, c_pred) and ``timeline.parquet`` (target,
every checkpoint), each written atomically.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from memaudit.atomic import atomic_path, write_bytes
from memaudit.config import ExperimentConfig
from memaudit.errors import MemauditError
from memaudit.metrics import (
    attack_success_rate,
    counterfactual_memorization,
    evaluate,
    lira,
    lira_loo,
    logit_gap,
    memorized,
    off_the_shelf,
    prediction_checkpoint,
    psmi_slope,
    roc,
)
from memaudit.pool import train_pool, validate_pool
from memaudit.score_rows import PER_CHECKPOINT, read_score_rows, shadow_id
from memaudit.scorefile import read_scores

SIGNS = {"psmi": -1.0, "loss": 1.0, "logit_gap": -1.0, "mahalanobis": 1.0, "early_lira": 1.0}
_SAME_IN_EVERY_FILE = ("global_index", "label_index", "checkpoints", "layers")


def _predictor_names(layers: np.ndarray, with_mahalanobis: bool) -> list[str]:
    names = [f"psmi_L{layer}" for layer in layers] + ["loss", "logit_gap"]
    return [*names, *([f"mahalanobis_L{layer}" for layer in layers] if with_mahalanobis else []), "early_lira"]


def _stored_values(arrays: dict[str, np.ndarray], c: int, with_mahalanobis: bool) -> np.ndarray:
    """The predictors read from a score file at checkpoint index c, [P_stored, N]: P-SMI per layer, loss,
    Mahalanobis per layer (NaN when this file lacks it)."""
    parts = [arrays["psmi"][c], arrays["loss"][c][None]]
    if with_mahalanobis:
        maha = arrays.get("mahalanobis")
        parts.append(maha[c] if maha is not None else np.full_like(arrays["psmi"][c], np.nan))
    return np.concatenate(parts)


def _predictor_values(stored: np.ndarray, gap: np.ndarray, early: np.ndarray, n_layers: int) -> list[np.ndarray]:
    """Raw float64 values in the order of :func:`_predictor_names` (the logit gap and early LiRA are computed)."""
    values = [*stored.astype(np.float64)]
    return [*values[: n_layers + 1], gap, *values[n_layers + 1 :], early]


def _sign(name: str) -> float:
    return SIGNS[name.rsplit("_L", 1)[0] if "_L" in name else name]


def _evaluate_or_none(flags: np.ndarray, score: np.ndarray, tpr: float) -> dict[str, float] | None:
    """The predictor's numbers, or None when it has no finite value or the flags hold a single class."""
    if not np.isfinite(score).any():
        return None
    try:
        return evaluate(flags, score, tpr=tpr)
    except MemauditError:
        return None


def _lira_kwargs(cfg: ExperimentConfig) -> dict[str, Any]:
    mode = cfg.evaluation.lira_mode
    return {"online": mode != "offline", "global_variance": mode == "global", "clip": cfg.evaluation.lira_clip}


def _memorized_flags(cfg: ExperimentConfig, llr: np.ndarray) -> np.ndarray:
    ev = cfg.evaluation
    return memorized(llr, rule=ev.memorized_rule, fraction=ev.memorized_fraction, threshold=ev.memorized_threshold)


def _choose_c_pred(cfg: ExperimentConfig, target: dict[str, np.ndarray]) -> tuple[int, str, np.ndarray]:
    """(checkpoint index, how it was chosen, median member loss per checkpoint) from the target's arrays."""
    medians = np.median(target["loss"][:, target["member"]].astype(np.float64), axis=1)
    forced = cfg.evaluation.c_pred
    if forced is not None:
        hits = np.flatnonzero(target["checkpoints"] == forced)
        if not hits.size:
            raise MemauditError(
                f"evaluation.c_pred {forced} is not a stored checkpoint ({target['checkpoints'].tolist()})",
                "set it to one of them, or unset it for the automatic choice",
            )
        return int(hits[0]), "forced", medians
    index, found = prediction_checkpoint(medians, cfg.evaluation.c_pred_loss_ratio)
    return index, "auto" if found else "fallback_lowest_median_loss", medians


def _check_same(name: str, value: np.ndarray, reference: np.ndarray, path: Path) -> None:
    if value.shape != reference.shape or not np.array_equal(value, reference):
        raise MemauditError(
            f"score file {path} has a different {name} than the target's score file",
            "aggregate score files of one run only (same pool, same checkpoint schedule, same layers)",
        )


def _read_population(cfg: ExperimentConfig, paths: list[Path], progress: bool) -> dict[str, Any]:
    """One pass over the files, target first: gaps, membership and predictor values at c_pred of every model."""
    ids = [shadow_id(p) for p in paths]
    if len(set(ids)) != len(ids):
        raise MemauditError(f"score files repeat shadow ids ({sorted(ids)})", "pass each shadow's file once")
    if cfg.shadows.target not in ids:
        raise MemauditError(
            f"no score file for the target shadow {cfg.shadows.target} (got {sorted(ids)})",
            "pass the target's score file or set shadows.target",
        )
    order = sorted(range(len(paths)), key=lambda k: (ids[k] != cfg.shadows.target, ids[k]))
    target = read_scores(paths[order[0]], keys=("mahalanobis", "psmi_std", "test_loss"))
    c_pred, how, medians = _choose_c_pred(cfg, target)
    with_maha = "mahalanobis" in target
    n_models, n = len(paths), target["global_index"].shape[0]
    n_stored = target["layers"].shape[0] * (2 if with_maha else 1) + 1
    pop = {
        "ids": [ids[k] for k in order],
        "target": target,
        "c_pred": c_pred,
        "c_pred_rule": how,
        "medians": medians,
        "with_mahalanobis": with_maha,
        "member": np.zeros((n_models, n), dtype=bool),
        "final_gap": np.zeros((n_models, n)),
        "early_gap": np.zeros((n_models, n)),
        "stored": np.zeros((n_models, n_stored, n), dtype=np.float32),
    }
    rows = [c_pred, target["checkpoints"].shape[0] - 1]

    def load(row: int, k: int) -> None:  # fills row `row` of the population arrays from file k
        if row == 0:
            arrays = {key: value[rows] if key in PER_CHECKPOINT else value for key, value in target.items()}
        else:
            arrays = read_score_rows(paths[k], rows, keys=("mahalanobis",))
        for name in _SAME_IN_EVERY_FILE:
            _check_same(name, arrays[name], target[name], paths[k])
        gaps = logit_gap(arrays["option_logits"], np.broadcast_to(arrays["label_index"], (2, n)))
        pop["early_gap"][row], pop["final_gap"][row] = gaps
        pop["member"][row] = arrays["member"]
        pop["stored"][row] = _stored_values(arrays, 0, with_maha)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # file reads and numpy release the GIL
        jobs = [pool.submit(load, row, k) for row, k in enumerate(order)]
        for job in tqdm(jobs, desc="score files", disable=not progress):
            job.result()
    return pop


def _per_model(cfg: ExperimentConfig, pop: dict[str, Any], loo: np.ndarray, early: np.ndarray) -> dict[str, Any]:
    """Mean ± std over all models (each as the target) of every predictor's numbers (models on parallel threads:
    the work is numpy sorting, which releases the GIL)."""
    layers = pop["target"]["layers"]
    names = _predictor_names(layers, pop["with_mahalanobis"])

    def one_model(m: int) -> list[dict[str, float] | None]:
        members = pop["member"][m]
        flags = _memorized_flags(cfg, loo[m, members])
        scores = _predictor_values(
            pop["stored"][m][:, members], pop["early_gap"][m, members], early[m, members], len(layers)
        )
        return [
            _evaluate_or_none(flags, _sign(name) * values, cfg.evaluation.tpr_target)
            for name, values in zip(names, scores, strict=True)
        ]

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        per_model = list(pool.map(one_model, range(loo.shape[0])))
    out: dict[str, Any] = {}
    for i, name in enumerate(names):
        rows = [numbers[i] for numbers in per_model if numbers[i] is not None]
        out[name] = {"n_models": len(rows)}
        for key in ("fpr_at_tpr", "auc", "tpr_at_fpr_1pct", "tpr_at_fpr_0.1pct"):
            values = np.array([r[key] for r in rows])
            out[name][key] = {"mean": float(values.mean()), "std": float(values.std())} if rows else None
    return out


def _timeline(cfg: ExperimentConfig, pop: dict[str, Any], others: np.ndarray, flags: np.ndarray) -> pd.DataFrame:
    """FPR@TPR and AUC of every predictor of the target at every checkpoint."""
    t = pop["target"]
    members, label = t["member"], t["label_index"]
    names = _predictor_names(t["layers"], pop["with_mahalanobis"])
    gaps = logit_gap(t["option_logits"], np.broadcast_to(label, t["option_logits"].shape[:2]))
    early = lira(gaps, pop["final_gap"][others], pop["member"][others], **_lira_kwargs(cfg))
    rows = []
    for c in range(t["checkpoints"].shape[0]):
        stored = _stored_values(t, c, pop["with_mahalanobis"])
        values = _predictor_values(stored, gaps[c], early[c], t["layers"].shape[0])
        for name, v in zip(names, values, strict=True):
            numbers = _evaluate_or_none(flags, _sign(name) * v[members], cfg.evaluation.tpr_target) or {}
            rows.append(
                {
                    "checkpoint": int(t["checkpoints"][c]),
                    "epoch": float(t["epochs"][c]),
                    "median_member_loss": float(pop["medians"][c]),
                    "median_test_loss": float(np.median(t["test_loss"][c])) if "test_loss" in t else math.nan,
                    "predictor": name,
                    "fpr_at_tpr": numbers.get("fpr_at_tpr", math.nan),
                    "auc": numbers.get("auc", math.nan),
                }
            )
    return pd.DataFrame(rows)


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _share(flags: np.ndarray, where: np.ndarray) -> float | None:
    return float(flags[where].mean()) if where.any() else None


def _enrichment(flags: np.ndarray, noisy: np.ndarray, wrong: np.ndarray) -> dict[str, Any]:
    """Share of memorized members among randomized labels, kept labels and truly wrong labels."""
    return {
        "share_memorized_noisy": _share(flags, noisy),
        "share_memorized_clean": _share(flags, ~noisy),
        "share_memorized_wrong": _share(flags, wrong),
        "n_noisy_members": int(noisy.sum()),
        "n_wrong_members": int(wrong.sum()),
    }


def _evaluate_target(
    names: list[str], member_values: list[np.ndarray], flags: np.ndarray, tpr: float
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Every predictor's numbers on the target's members, and their ROC curves in long format."""
    numbers, curves = {}, []
    for name, v in zip(names, member_values, strict=True):
        score = _sign(name) * v
        numbers[name] = _evaluate_or_none(flags, score, tpr)
        if numbers[name] is not None:
            curve = roc(flags, score)
            frame = {"predictor": name, "fpr": curve.fpr, "tpr": curve.tpr, "threshold": curve.thresholds}
            curves.append(pd.DataFrame(frame))
    return numbers, pd.concat(curves, ignore_index=True)


def aggregate(
    cfg: ExperimentConfig,
    score_paths: list[str | Path],
    pool_df: pd.DataFrame,
    output_dir: str | Path,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the aggregate stage; writes the four outputs into ``output_dir`` and returns the summary."""
    paths = [Path(p) for p in score_paths]
    if len(paths) < 2:
        raise MemauditError(f"aggregate needs at least 2 score files, got {len(paths)}", "score more shadows")
    train = train_pool(validate_pool(pool_df))
    pop = _read_population(cfg, paths, progress)
    t = pop["target"]
    if not np.array_equal(train["global_index"].to_numpy(), t["global_index"]):
        raise MemauditError("the score files' global_index differs from the pool's train rows", "pass this run's pool")
    if not np.array_equal(train["label_index"].to_numpy(), t["label_index"]):
        raise MemauditError("the score files' label_index differs from the pool's", "pass this run's pool")
    kwargs, ev = _lira_kwargs(cfg), cfg.evaluation
    final, member, others = pop["final_gap"], pop["member"], np.arange(1, len(paths))
    target_lira = lira(final[0], final[others], member[others], **kwargs)
    with ThreadPoolExecutor(max_workers=2) as pool:  # every model as the target, at the final checkpoint and c_pred
        loo_job = pool.submit(lira_loo, final, member, **kwargs)
        early_job = pool.submit(lira_loo, final, member, target_stats=pop["early_gap"], **kwargs)
        loo, early = loo_job.result(), early_job.result()
    members = t["member"]
    flags = _memorized_flags(cfg, target_lira[members])
    if flags.all() or not flags.any():
        raise MemauditError(
            f"the rule {ev.memorized_rule!r} marks {int(flags.sum())} of {flags.size} target members memorized",
            "change evaluation.memorized_threshold / memorized_fraction",
        )
    mem_all = np.zeros_like(members)
    mem_all[members] = flags

    names = _predictor_names(t["layers"], pop["with_mahalanobis"])
    values = _predictor_values(pop["stored"][0], pop["early_gap"][0], early[0], t["layers"].shape[0])
    samples = pd.DataFrame({"global_index": t["global_index"]})
    samples["label_randomized"] = train["label_status"].to_numpy() == 0
    samples["label_wrong"] = train["label_index"].to_numpy() != train["gold_index"].to_numpy()
    samples["member"], samples["lira"], samples["memorized"] = members, target_lira, mem_all
    for name, v in zip(names, values, strict=True):
        samples[name] = v
    slope = psmi_slope(t["psmi"][[0, pop["c_pred"]]])[1]  # P-SMI(c_pred) − P-SMI(checkpoint 0), members only
    for i, layer in enumerate(t["layers"]):
        samples[f"psmi_slope_L{layer}"] = slope[i]
        if "psmi_std" in t:
            samples[f"psmi_std_L{layer}"] = t["psmi_std"][pop["c_pred"], i]
    samples["counterfactual"] = counterfactual_memorization(final, member)
    samples["asr"] = attack_success_rate(final, member, global_variance=ev.lira_mode == "global")

    target_numbers, curves = _evaluate_target(names, [v[members] for v in values], flags, ev.tpr_target)
    layers = [int(layer) for layer in t["layers"]]
    psmi_fprs = [(target_numbers[f"psmi_L{layer}"] or {}).get("fpr_at_tpr", math.inf) for layer in layers]
    best = int(np.argmin(psmi_fprs))
    last = int(np.argmax(layers))
    ots_fpr, ots_tpr = off_the_shelf(flags, values[last][members])
    c = pop["c_pred"]
    all_models = _per_model(cfg, pop, loo, early)
    summary: dict[str, Any] = {
        "fingerprint": cfg.fingerprint(),
        "evaluation_fingerprint": cfg.evaluation_fingerprint(),
        "target": cfg.shadows.target,
        "n_models": len(paths),
        "n_shadows_used": len(paths) - 1,
        "shadow_ids": pop["ids"],
        "lira_mode": ev.lira_mode,
        "memorized_rule": ev.memorized_rule,
        "n_samples": int(members.size),
        "n_members": int(members.sum()),
        "n_memorized": int(flags.sum()),
        "share_memorized": float(flags.mean()),
        "memorized_min_lira": float(target_lira[members][flags].min()),
        "enrichment": _enrichment(
            flags, samples["label_randomized"].to_numpy()[members], samples["label_wrong"].to_numpy()[members]
        ),
        "c_pred": {
            "index": c,
            "step": int(t["checkpoints"][c]),
            "epoch": float(t["epochs"][c]),
            "rule": pop["c_pred_rule"],
            "median_member_loss": [float(x) for x in pop["medians"]],
        },
        "best_layer": {
            "layer": layers[best],
            "predictor": f"psmi_L{layers[best]}",
            "fpr_at_tpr": _finite_or_none(psmi_fprs[best]),
        },
        "off_the_shelf": {"layer": layers[last], "fpr": ots_fpr, "tpr": ots_tpr},
        "tpr_target": ev.tpr_target,
        "predictors": {
            name: {"sign": _sign(name), "target": target_numbers[name], "all_models": all_models[name]}
            for name in names
        },
    }
    timeline = _timeline(cfg, pop, others, flags)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "samples.parquet") as tmp:
        samples.to_parquet(tmp, index=False)
    with atomic_path(out / "roc.parquet") as tmp:
        curves.to_parquet(tmp, index=False)
    with atomic_path(out / "timeline.parquet") as tmp:
        timeline.to_parquet(tmp, index=False)
    write_bytes(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text table of the summary: one line per predictor, then the headline facts."""
    tpr = summary["tpr_target"]
    head = f"{'predictor':<18}{f'FPR@TPR={tpr:g}':>14}{'AUC':>8}{'TPR@1%':>8}{'TPR@0.1%':>10}   all models FPR@TPR"
    lines = [head, "-" * len(head)]
    for name, entry in summary["predictors"].items():
        own, pop = entry["target"], entry["all_models"]["fpr_at_tpr"]
        cells = (
            f"{own['fpr_at_tpr']:>14.4f}{own['auc']:>8.3f}{own['tpr_at_fpr_1pct']:>8.3f}{own['tpr_at_fpr_0.1pct']:>10.3f}"
            if own
            else f"{'n/a':>40}"
        )
        spread = f"{pop['mean']:.4f} ± {pop['std']:.4f} (n={entry['all_models']['n_models']})" if pop else "n/a"
        lines.append(f"{name:<18}{cells}   {spread}")
    c, ots, best = summary["c_pred"], summary["off_the_shelf"], summary["best_layer"]
    lines += [
        f"c_pred: step {c['step']} (epoch {c['epoch']:g}, {c['rule']}); best P-SMI layer {best['layer']}",
        f"off-the-shelf (layer {ots['layer']}, P-SMI < 0): FPR {ots['fpr']:.4f}, TPR {ots['tpr']:.4f}",
        f"memorized: {summary['n_memorized']} of {summary['n_members']} target members "
        f"({summary['share_memorized']:.1%}), {summary['n_shadows_used']} shadows, LiRA {summary['lira_mode']}",
    ]
    return "\n".join(lines)
