"""The aggregate stage (docs/design.md §2.5): score files of the whole population → ground truth, predictors,
evaluation.

Inputs: one score file per model (:mod:`memaudit.stages.scorefile`), the pool, the config. The target is
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

The files are read by :mod:`memaudit.stages.population`. Outputs in ``output_dir`` (format in
:mod:`memaudit.report.outputs`): ``samples.parquet`` (one row per train-pool sample: raw predictor values at c_pred,
not sign-flipped, plus the target's P-SMI slope against checkpoint 0 and P-SMI std over directions per layer),
``summary.json``, ``roc.parquet`` (target, c_pred), ``timeline.parquet`` (target, every checkpoint) and
``dynamics.parquet`` (every target member at every checkpoint: LiRA, loss, P-SMI at the best layer), each written
atomically.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from memaudit.config import ExperimentConfig
from memaudit.data.poolfile import train_pool, validate_pool
from memaudit.errors import MemauditError
from memaudit.metrics import (
    METRICS,
    Predictor,
    attack_success_rate,
    best_layer,
    counterfactual_memorization,
    evaluate,
    lira,
    lira_loo,
    logit_gap,
    memorized,
    off_the_shelf,
    predictor_names,
    psmi_slope,
    roc,
)
from memaudit.report.outputs import DYNAMICS, ROC, SAMPLES, SHADOW_CURVE, SUMMARY, TIMELINE
from memaudit.stages.population import Population, read_population, stored_values
from memaudit.stages.shadow_curve import (
    attack_scores,
    curve_inputs,
    ground_truth_label,
    resolve_offline_a,
    shadow_curve,
)
from memaudit.store.atomic import atomic_path, write_bytes

_FIX = "check the score files (a diverged shadow gives NaN logits or losses) and re-run the score stage for them"


def _predictor_values(stored: np.ndarray, gap: np.ndarray, early: np.ndarray, n_layers: int) -> list[np.ndarray]:
    """Raw float64 values in the order of :func:`predictor_names` (the logit gap and early LiRA are computed)."""
    values = [*stored.astype(np.float64)]
    return [*values[: n_layers + 1], gap, *values[n_layers + 1 :], early]


def _evaluate_or_none(flags: np.ndarray, name: str, values: np.ndarray, tpr: float) -> dict[str, float] | None:
    """The predictor's numbers, or None when it has no finite value or the flags hold a single class."""
    score = Predictor.parse(name).sign * values
    if not np.isfinite(score).any():
        return None
    try:
        return evaluate(flags, score, tpr=tpr)
    except ValueError:
        return None


def _lira_kwargs(cfg: ExperimentConfig) -> dict[str, Any]:
    mode = cfg.evaluation.lira_mode
    return {"online": mode != "offline", "global_variance": mode == "global", "clip": cfg.evaluation.lira_clip}


def _memorized_flags(cfg: ExperimentConfig, llr: np.ndarray) -> np.ndarray:
    ev = cfg.evaluation
    return memorized(llr, rule=ev.memorized_rule, fraction=ev.memorized_fraction, threshold=ev.memorized_threshold)


@dataclass
class _GroundTruth:
    """The target's scores by the chosen attack (and by LiRA), every model's leave-one-out, and the flags."""

    target_lira: np.ndarray  # [N]
    target_score: np.ndarray  # [N]: the chosen attack's (evaluation.ground_truth)
    loo: np.ndarray  # [M, N]: the chosen attack, each model as the target against the others
    early: np.ndarray  # [M, N]: each model's LiRA at c_pred against the others at their final checkpoint
    flags: np.ndarray  # the target's members: memorized or not
    label: str  # the chosen ground truth in words
    offline_a: float | None  # offline RMIA's a (fitted or set) when an attack uses it


def _uses_offline_rmia(cfg: ExperimentConfig) -> bool:
    ev = cfg.evaluation
    return (ev.ground_truth, ev.rmia_mode) == ("rmia", "offline") or "rmia_offline" in ev.shadow_curve_attacks


def _rmia_truth(cfg: ExperimentConfig, pop: Population, offline_a: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The target's RMIA scores and every model's against the others (``evaluation.rmia_mode``)."""
    attack, rows = f"rmia_{cfg.evaluation.rmia_mode}", np.arange(len(pop.ids))
    loo = np.stack([attack_scores(cfg, pop, attack, m, np.delete(rows, m), offline_a) for m in rows])
    return loo[0], loo


def _ground_truth(cfg: ExperimentConfig, pop: Population) -> _GroundTruth:
    kwargs, ev = _lira_kwargs(cfg), cfg.evaluation
    final, member, others = pop.final_gap, pop.member, np.arange(1, len(pop.ids))
    target_lira = lira(final[0], final[others], member[others], **kwargs)
    with ThreadPoolExecutor(max_workers=2) as pool:  # every model as the target, at the final checkpoint and c_pred
        loo_job = pool.submit(lira_loo, final, member, **kwargs)
        early_job = pool.submit(lira_loo, final, member, target_stats=pop.early_gap, **kwargs)
        loo, early = loo_job.result(), early_job.result()
    offline_a = resolve_offline_a(cfg, pop) if _uses_offline_rmia(cfg) else None
    score = target_lira
    if ev.ground_truth == "rmia":
        score, loo = _rmia_truth(cfg, pop, offline_a)
    flags = _memorized_flags(cfg, score[member[0]])
    if flags.all() or not flags.any():
        raise MemauditError(
            f"the rule {ev.memorized_rule!r} marks {int(flags.sum())} of {flags.size} target members memorized",
            "change evaluation.memorized_threshold / memorized_fraction",
        )
    return _GroundTruth(target_lira, score, loo, early, flags, ground_truth_label(cfg, offline_a), offline_a)


def _per_model(cfg: ExperimentConfig, pop: Population, truth: _GroundTruth) -> dict[str, Any]:
    """Mean ± std over all models (each as the target) of every predictor's numbers (models on parallel threads:
    the work is numpy sorting, which releases the GIL)."""
    names = predictor_names(list(pop.layers), pop.with_mahalanobis)

    def one_model(m: int) -> list[dict[str, float] | None]:
        members = pop.member[m]
        flags = _memorized_flags(cfg, truth.loo[m, members])
        scores = _predictor_values(
            pop.stored[m][:, members], pop.early_gap[m, members], truth.early[m, members], len(pop.layers)
        )
        tpr = cfg.evaluation.tpr_target
        return [_evaluate_or_none(flags, name, values, tpr) for name, values in zip(names, scores, strict=True)]

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        per_model = list(pool.map(one_model, range(truth.loo.shape[0])))
    out: dict[str, Any] = {}
    for i, name in enumerate(names):
        rows = [numbers[i] for numbers in per_model if numbers[i] is not None]
        out[name] = {"n_models": len(rows)}
        for key in METRICS:
            values = np.array([r[key] for r in rows])
            out[name][key] = {"mean": float(values.mean()), "std": float(values.std())} if rows else None
    return out


def _target_by_checkpoint(cfg: ExperimentConfig, pop: Population) -> tuple[np.ndarray, np.ndarray]:
    """The target's logit gaps [C, N] and its LiRA at every checkpoint against the others' final ones [C, N]."""
    t, others = pop.target, np.arange(1, len(pop.ids))
    gaps = logit_gap(t["option_logits"], np.broadcast_to(t["label_index"], t["option_logits"].shape[:2]))
    return gaps, lira(gaps, pop.final_gap[others], pop.member[others], **_lira_kwargs(cfg))


def _timeline(cfg: ExperimentConfig, pop: Population, flags: np.ndarray, gaps, early) -> pd.DataFrame:
    """FPR@TPR and AUC of every predictor of the target at every checkpoint."""
    t, members = pop.target, pop.target["member"]
    names = predictor_names(list(pop.layers), pop.with_mahalanobis)
    rows = []
    for c in range(t["checkpoints"].shape[0]):
        values = _predictor_values(stored_values(t, c, pop.with_mahalanobis), gaps[c], early[c], len(pop.layers))
        for name, v in zip(names, values, strict=True):
            numbers = _evaluate_or_none(flags, name, v[members], cfg.evaluation.tpr_target) or {}
            rows.append(
                {
                    "checkpoint": int(t["checkpoints"][c]),
                    "epoch": float(t["epochs"][c]),
                    "median_member_loss": float(pop.medians[c]),
                    "median_test_loss": float(np.median(t["test_loss"][c])) if "test_loss" in t else math.nan,
                    "predictor": name,
                    "fpr_at_tpr": numbers.get("fpr_at_tpr", math.nan),
                    "auc": numbers.get("auc", math.nan),
                }
            )
    return pd.DataFrame(rows)


def _dynamics(pop: Population, early: np.ndarray, best_layer: int) -> pd.DataFrame:
    """Every target member at every checkpoint: its LiRA (against the others' final checkpoint), loss and P-SMI
    at the best layer."""
    t, members = pop.target, np.flatnonzero(pop.target["member"])
    n_checkpoints, layer = t["checkpoints"].shape[0], list(pop.layers).index(best_layer)
    return pd.DataFrame(
        {
            "checkpoint": np.repeat(t["checkpoints"].astype(np.int64), members.size),
            "epoch": np.repeat(t["epochs"].astype(np.float64), members.size),
            "sample": np.tile(members, n_checkpoints),
            "lira": early[:, members].ravel(),
            "loss": t["loss"][:, members].astype(np.float64).ravel(),
            "psmi": t["psmi"][:, layer, members].astype(np.float64).ravel(),
        }
    )


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
        numbers[name] = _evaluate_or_none(flags, name, v, tpr)
        if numbers[name] is not None:
            curve = roc(flags, Predictor.parse(name).sign * v)
            frame = {"predictor": name, "fpr": curve.fpr, "tpr": curve.tpr, "threshold": curve.thresholds}
            curves.append(pd.DataFrame(frame))
    return numbers, pd.concat(curves, ignore_index=True)


def _samples(
    cfg: ExperimentConfig, train: pd.DataFrame, pop: Population, truth: _GroundTruth, values: list[np.ndarray]
) -> pd.DataFrame:
    """One row per train-pool sample: labels, membership, LiRA, memorized, every predictor's raw value at c_pred."""
    t, members = pop.target, pop.member[0]
    samples = pd.DataFrame({"global_index": t["global_index"], "prompt": train["prompt"].to_numpy()})
    samples["label"] = [options[i] for options, i in zip(train["options"], train["label_index"], strict=True)]
    samples["label_randomized"] = train["label_status"].to_numpy() == 0
    samples["label_wrong"] = train["label_index"].to_numpy() != train["gold_index"].to_numpy()
    mem_all = np.zeros_like(members)
    mem_all[members] = truth.flags
    samples["member"], samples["lira"], samples["memorized"] = members, truth.target_lira, mem_all
    samples["ground_truth"] = truth.target_score
    for name, v in zip(predictor_names(list(pop.layers), pop.with_mahalanobis), values, strict=True):
        samples[name] = v
    slope = psmi_slope(t["psmi"][[0, pop.c_pred]])[1]  # P-SMI(c_pred) − P-SMI(checkpoint 0), members only
    for i, layer in enumerate(pop.layers):
        samples[str(Predictor("psmi_slope", int(layer)))] = slope[i]
        if "psmi_std" in t:
            samples[str(Predictor("psmi_std", int(layer)))] = t["psmi_std"][pop.c_pred, i]
    samples["counterfactual"] = counterfactual_memorization(pop.final_gap, pop.member)
    samples["asr"] = attack_success_rate(
        pop.final_gap, pop.member, global_variance=cfg.evaluation.lira_mode == "global"
    )
    return samples


def off_the_shelf_index(cfg: ExperimentConfig, layers: list[int]) -> int:
    """Index of the off-the-shelf layer: ``evaluation.off_the_shelf_layer``, else the highest computed layer."""
    wanted = cfg.evaluation.off_the_shelf_layer
    if wanted is None:
        return int(np.argmax(layers))
    if wanted not in layers:
        raise MemauditError(
            f"evaluation.off_the_shelf_layer {wanted} is not among the computed layers {layers}",
            "add it to model.layers (and re-score), or unset it to use the last computed layer",
        )
    return layers.index(wanted)


def _layer_facts(cfg: ExperimentConfig, numbers: dict[str, Any], pop: Population, flags: np.ndarray, values):
    """The best P-SMI layer (lowest target FPR@TPR over every computed layer) and the off-the-shelf point."""
    layers = [int(layer) for layer in pop.layers]
    psmi_fprs = [(numbers[str(Predictor("psmi", layer))] or {}).get("fpr_at_tpr") for layer in layers]
    best = best_layer(psmi_fprs)
    best = 0 if best is None else best
    ots = off_the_shelf_index(cfg, layers)
    ots_fpr, ots_tpr = off_the_shelf(flags, values[ots][pop.member[0]])
    fpr = psmi_fprs[best]
    return {
        "best_layer": {
            "layer": layers[best],
            "predictor": str(Predictor("psmi", layers[best])),
            "fpr_at_tpr": float(fpr) if fpr is not None and np.isfinite(fpr) else None,
        },
        "off_the_shelf": {"layer": layers[ots], "fpr": ots_fpr, "tpr": ots_tpr},
    }


def _summary(cfg: ExperimentConfig, pop: Population, truth: _GroundTruth, samples: pd.DataFrame, numbers, values):
    """summary.json: the ground truth's facts, c_pred, best layer, off-the-shelf point, every predictor's numbers."""
    ev, members, t, c = cfg.evaluation, pop.member[0], pop.target, pop.c_pred
    all_models = _per_model(cfg, pop, truth)
    return {
        "fingerprint": cfg.fingerprint(),
        "evaluation_fingerprint": cfg.evaluation_fingerprint(),
        "model": {"name": cfg.model.name, "revision": cfg.model.revision},
        "target": cfg.shadows.target,
        "n_models": len(pop.ids),
        "n_shadows_used": len(pop.ids) - 1,
        "shadow_ids": pop.ids,
        "lira_mode": ev.lira_mode,
        "ground_truth": {"attack": ev.ground_truth, "mode": _mode(cfg), "label": truth.label},
        "memorized_rule": ev.memorized_rule,
        "n_samples": int(members.size),
        "n_members": int(members.sum()),
        "n_memorized": int(truth.flags.sum()),
        "share_memorized": float(truth.flags.mean()),
        "memorized_min_score": float(truth.target_score[members][truth.flags].min()),
        "enrichment": _enrichment(
            truth.flags, samples["label_randomized"].to_numpy()[members], samples["label_wrong"].to_numpy()[members]
        ),
        "c_pred": {
            "index": c,
            "step": int(t["checkpoints"][c]),
            "epoch": float(t["epochs"][c]),
            "rule": pop.c_pred_rule,
            "median_member_loss": [float(x) for x in pop.medians],
        },
        **_layer_facts(cfg, numbers, pop, truth.flags, values),
        "tpr_target": ev.tpr_target,
        "predictors": {
            name: {"sign": Predictor.parse(name).sign, "target": numbers[name], "all_models": all_models[name]}
            for name in numbers
        },
    }


def _mode(cfg: ExperimentConfig) -> str:
    ev = cfg.evaluation
    return ev.lira_mode if ev.ground_truth == "lira" else ev.rmia_mode


def _shadow_curve(cfg: ExperimentConfig, pop: Population, truth: _GroundTruth, best: str, values):
    """shadow_curve.parquet and its summary facts, against the all-shadows LiRA online."""
    others = np.arange(1, len(pop.ids))
    reference = attack_scores(cfg, pop, "lira_online", 0, others, truth.offline_a or 0.0)
    flags = _memorized_flags(cfg, reference[pop.member[0]])
    names = predictor_names(list(pop.layers), pop.with_mahalanobis)
    inputs = curve_inputs(pop, reference, flags, best, values[names.index(best)])
    return shadow_curve(cfg, pop, inputs, truth.offline_a or 0.0)


def _write_outputs(out: Path, frames: dict[str, pd.DataFrame], summary: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        with atomic_path(out / name) as tmp:
            frame.to_parquet(tmp, index=False)
    write_bytes(out / SUMMARY, (json.dumps(summary, indent=2) + "\n").encode())


def _check_pool(train: pd.DataFrame, target: dict[str, np.ndarray]) -> None:
    if not np.array_equal(train["global_index"].to_numpy(), target["global_index"]):
        raise MemauditError("the score files' global_index differs from the pool's train rows", "pass this run's pool")
    if not np.array_equal(train["label_index"].to_numpy(), target["label_index"]):
        raise MemauditError("the score files' label_index differs from the pool's", "pass this run's pool")


def aggregate(
    cfg: ExperimentConfig,
    score_paths: list[str | Path],
    pool_df: pd.DataFrame,
    output_dir: str | Path,
    *,
    progress: bool = True,
    missing: list[int] = (),
) -> dict[str, Any]:
    """Run the aggregate stage; writes the four outputs into ``output_dir`` and returns the summary. ``missing``:
    the shadows that failed and are left out (the summary lists them)."""
    paths = [Path(p) for p in score_paths]
    if len(paths) < 2:
        raise MemauditError(f"aggregate needs at least 2 score files, got {len(paths)}", "score more shadows")
    train = train_pool(validate_pool(pool_df))
    try:
        pop = read_population(cfg, paths, progress)
        _check_pool(train, pop.target)
        truth = _ground_truth(cfg, pop)
        values = _predictor_values(pop.stored[0], pop.early_gap[0], truth.early[0], len(pop.layers))
        names = predictor_names(list(pop.layers), pop.with_mahalanobis)
        members = pop.member[0]
        numbers, curves = _evaluate_target(names, [v[members] for v in values], truth.flags, cfg.evaluation.tpr_target)
        samples = _samples(cfg, train, pop, truth, values)
        summary = {**_summary(cfg, pop, truth, samples, numbers, values), "missing_shadows": sorted(missing)}
        gaps, early = _target_by_checkpoint(cfg, pop)
        timeline = _timeline(cfg, pop, truth.flags, gaps, early)
        dynamics = _dynamics(pop, early, summary["best_layer"]["layer"])
        curve, summary["shadow_curve"] = _shadow_curve(cfg, pop, truth, summary["best_layer"]["predictor"], values)
    except ValueError as exc:  # the metrics refuse arrays they cannot score
        raise MemauditError(f"aggregate: {exc}", _FIX) from None
    frames = {SAMPLES: samples, ROC: curves, TIMELINE: timeline, DYNAMICS: dynamics, SHADOW_CURVE: curve}
    _write_outputs(Path(output_dir), frames, summary)
    return summary
