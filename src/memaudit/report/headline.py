"""The headline of one audit: the few numbers a person compares audits on, under short names.

One definition serves MLflow (the parent run's metrics and description), the KFP UI (the aggregate task's metrics,
the plot task's Markdown) and ``memaudit compare`` (the cross-setup table read back from those metrics):

* :func:`headline_metrics`: ``<kind>_fpr`` / ``<kind>_auc`` of each predictor of the paper's comparison on the
  target, ``<kind>_fpr_all`` / ``<kind>_auc_all`` their mean over all models as the target, and the run's facts
  (:data:`FACTS`); values that do not exist (a predictor with no number) are left out, never logged as null.
* :func:`headline_series`: step-indexed values (the layer or the checkpoint's step as the step).
* :func:`headline_markdown`: the summary table as Markdown.
* :func:`predictor_table`: every predictor's numbers, one row each (per layer included).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import pandas as pd

from memaudit.config.settings import CURVE_ATTACKS
from memaudit.metrics import METRICS, Predictor
from memaudit.report.outputs import AggregateOutputs, kind_name, pretty_name

KINDS = ("psmi", "loss", "logit_gap", "mahalanobis", "early_lira")  # the paper's comparison, in its order
PER_LAYER = ("psmi", "mahalanobis")  # evaluated at the best P-SMI layer in the headline


def _enrichment(s: dict[str, Any]) -> float | None:
    noisy, clean = s["enrichment"]["share_memorized_noisy"], s["enrichment"]["share_memorized_clean"]
    return noisy / clean if noisy is not None and clean else None


def _smallest_k(summary: dict[str, Any], attack: str) -> int | None:
    return summary.get("shadow_curve", {}).get("smallest_k", {}).get(attack)  # absent from older summaries


FACTS: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "ots_fpr": lambda s: s["off_the_shelf"]["fpr"],
    "ots_tpr": lambda s: s["off_the_shelf"]["tpr"],
    "c_pred_step": lambda s: s["c_pred"]["step"],
    "c_pred_epoch": lambda s: s["c_pred"]["epoch"],
    "best_layer": lambda s: s["best_layer"]["layer"],
    "share_memorized": lambda s: s["share_memorized"],
    "n_memorized": lambda s: s["n_memorized"],
    "n_members": lambda s: s["n_members"],
    "n_shadows": lambda s: s["n_shadows_used"],
    "noisy_share_memorized": lambda s: s["enrichment"]["share_memorized_noisy"],
    "clean_share_memorized": lambda s: s["enrichment"]["share_memorized_clean"],
    "noisy_enrichment": _enrichment,  # share memorized among random-label members / among true-label members
    **{f"k90_{attack}": partial(_smallest_k, attack=attack) for attack in CURVE_ATTACKS},  # shadows for 0.9 overlap
}


def _truth(summary: dict[str, Any]) -> str:
    """The ground truth in words (summaries before the ground-truth switch name only the LiRA mode)."""
    return summary["ground_truth"]["label"] if "ground_truth" in summary else f"LiRA {summary['lira_mode']}"


def curve_line(summary: dict[str, Any]) -> str:
    """The shadows each attack needs to recover the all-shadows LiRA set, in words."""
    curve = summary["shadow_curve"]
    needs = ", ".join(f"{a} {'>' + str(max(curve['ks'])) if k is None else k}" for a, k in curve["smallest_k"].items())
    return f"Shadows needed for {curve['goal']:.0%} overlap with the {curve['reference']}: {needs}."


def fpr_key(kind: str, all_models: bool = False) -> str:
    """The metric key of a predictor kind's FPR@TPR on the target (or its mean over all models)."""
    return f"{kind}_fpr" + ("_all" if all_models else "")


def auc_key(kind: str, all_models: bool = False) -> str:
    return f"{kind}_auc" + ("_all" if all_models else "")


def headline_predictor(summary: dict[str, Any], kind: str) -> str:
    """The predictor of ``kind`` in the headline: P-SMI and Mahalanobis at the best P-SMI layer."""
    layer = summary["best_layer"]["layer"]
    return str(Predictor(kind, layer)) if kind in PER_LAYER else kind


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def _predictor_numbers(summary: dict[str, Any], kind: str) -> dict[str, float | None]:
    entry = summary["predictors"].get(headline_predictor(summary, kind))
    own = (entry or {}).get("target") or {}
    spread = (entry or {}).get("all_models") or {}
    mean = {key: (spread.get(key) or {}).get("mean") for key in ("fpr_at_tpr", "auc")}
    return {
        fpr_key(kind): own.get("fpr_at_tpr"),
        auc_key(kind): own.get("auc"),
        fpr_key(kind, True): mean["fpr_at_tpr"],
        auc_key(kind, True): mean["auc"],
    }


def headline_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of a summary.json under short keys; values that do not exist are left out."""
    values: dict[str, Any] = {}
    for kind in KINDS:
        values |= _predictor_numbers(summary, kind)
    values |= {key: fact(summary) for key, fact in FACTS.items()}
    return {key: v for key, value in values.items() if (v := _finite(value)) is not None}


def headline_series(data: AggregateOutputs) -> dict[str, list[tuple[int, float]]]:
    """Step-indexed metrics: FPR@TPR per layer (step = layer) and per checkpoint (step = training step), and the
    median member loss per checkpoint."""
    series: dict[str, list[tuple[int, float]]] = {}
    for kind in PER_LAYER:
        points = [(layer, (data.target_numbers(str(Predictor(kind, layer))) or {}).get("fpr_at_tpr"))
                  for layer in data.layers(kind)]  # fmt: skip
        series[f"{fpr_key(kind)}_by_layer"] = points
    t = data.timeline
    for kind in ("psmi", "loss", "logit_gap"):
        rows = t[t["predictor"] == headline_predictor(data.summary, kind)].sort_values("checkpoint")
        series[f"{fpr_key(kind)}_by_step"] = list(zip(rows["checkpoint"], rows["fpr_at_tpr"], strict=True))
    steps = t.drop_duplicates("checkpoint").sort_values("checkpoint")
    series["median_member_loss"] = list(zip(steps["checkpoint"], steps["median_member_loss"], strict=True))
    return {
        key: [(int(step), v) for step, value in points if (v := _finite(value)) is not None]
        for key, points in series.items()
        if points
    }


def _cell(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _spread(entry: dict[str, Any], key: str) -> str:
    spread = entry["all_models"].get(key)
    return "n/a" if not spread else f"{spread['mean']:.4f} ± {spread['std']:.4f}"


def headline_markdown(summary: dict[str, Any], title: str = "") -> str:
    """The headline as Markdown: a table of the paper's predictors on the target and over all models, then the
    run's facts."""
    tpr = summary["tpr_target"]
    lines = [f"**{title}**", ""] if title else []
    lines += [
        f"| predictor | FPR@TPR={tpr:g} | AUC | all models: FPR@TPR={tpr:g} | all models: AUC |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind in KINDS:
        name = headline_predictor(summary, kind)
        entry = summary["predictors"].get(name)
        if entry is None:
            continue
        own = entry["target"] or {}
        lines.append(
            f"| {pretty_name(name)} | {_cell(own.get('fpr_at_tpr'))} | {_cell(own.get('auc'), 3)} "
            f"| {_spread(entry, 'fpr_at_tpr')} | {_spread(entry, 'auc')} |"
        )
    m = headline_metrics(summary)
    ots, enrich = summary["off_the_shelf"], m.get("noisy_enrichment")
    lines += [
        "",
        f"c_pred: step {summary['c_pred']['step']} (epoch {summary['c_pred']['epoch']:g}); "
        f"best {kind_name('psmi')} layer {summary['best_layer']['layer']}; "
        f"off the shelf ({kind_name('psmi')} < 0, layer {ots['layer']}): FPR {ots['fpr']:.4f}, TPR {ots['tpr']:.4f}.",
        f"Memorized: {summary['n_memorized']} of {summary['n_members']} target members "
        f"({summary['share_memorized']:.1%}) by {_truth(summary)} over {summary['n_shadows_used']} "
        f"shadows; random-label members are {'n/a' if enrich is None else f'{enrich:.2f}×'} as often memorized as "
        "true-label ones.",
    ]
    if "shadow_curve" in summary:
        lines.append(curve_line(summary))
    return "\n".join(lines) + "\n"


def predictor_table(summary: dict[str, Any]) -> pd.DataFrame:
    """One row per predictor of the summary: its layer, its numbers on the target and their mean and std over all
    models (NaN where none)."""
    rows = []
    for name, entry in summary["predictors"].items():
        p, own = Predictor.parse(name), entry["target"] or {}
        row: dict[str, Any] = {"predictor": name, "kind": p.kind, "layer": math.nan if p.layer is None else p.layer}
        for key in METRICS:
            spread = entry["all_models"].get(key) or {}
            row |= {key: own.get(key, math.nan), f"all_models_{key}_mean": spread.get("mean", math.nan),
                    f"all_models_{key}_std": spread.get("std", math.nan)}  # fmt: skip
        rows.append(row | {"n_models": entry["all_models"]["n_models"]})
    return pd.DataFrame(rows)
