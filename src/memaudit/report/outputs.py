"""The aggregate stage's outputs, as a format: their file names, what they must hold, and the checked reader.

One aggregate output folder holds ``summary.json`` (the headline numbers), ``samples.parquet`` (one row per train-pool
sample, with its prompt and trained label), ``roc.parquet`` (the target's ROC curves), ``timeline.parquet`` (every
predictor at every checkpoint), ``dynamics.parquet`` (every target member at every checkpoint) and
``shadow_curve.parquet`` (the memorized set recovered with fewer shadows, per attack);
:mod:`memaudit.stages.aggregate` writes them. :func:`load_aggregate` checks them on load (present, readable, the
expected keys and columns, consistent with each other and with the config's evaluation fingerprint); any problem is
a :class:`MemauditError` that names the file and says to re-run the aggregate stage. :func:`format_summary` is the
plain-text table the CLI prints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from memaudit.config import ExperimentConfig
from memaudit.errors import MemauditError
from memaudit.metrics import Predictor, memorized_threshold

SUMMARY = "summary.json"
SAMPLES = "samples.parquet"
ROC = "roc.parquet"
TIMELINE = "timeline.parquet"
DYNAMICS = "dynamics.parquet"
SHADOW_CURVE = "shadow_curve.parquet"
_DISPLAY = {
    "psmi": "P-SMI",
    "mahalanobis": "Mahalanobis",
    "loss": "Loss",
    "logit_gap": "Logit gap",
    "early_lira": "Early LiRA",
}
OUTPUT_FILES = (SUMMARY, SAMPLES, ROC, TIMELINE, DYNAMICS, SHADOW_CURVE)  # what one aggregate writes
_FIX = "re-run the aggregate stage (memaudit stage aggregate) into that folder"
_SUMMARY_KEYS = (
    "fingerprint",
    "evaluation_fingerprint",
    "target",
    "n_shadows_used",
    "n_members",
    "n_memorized",
    "share_memorized",
    "memorized_rule",
    "lira_mode",
    "ground_truth",
    "shadow_curve",
    "enrichment",
    "c_pred",
    "best_layer",
    "off_the_shelf",
    "tpr_target",
    "predictors",
)
_COLUMNS = {
    SAMPLES: (
        "global_index",
        "prompt",
        "label",
        "member",
        "lira",
        "ground_truth",
        "memorized",
        "label_randomized",
        "label_wrong",
        "loss",
        "logit_gap",
        "counterfactual",
    ),
    ROC: ("predictor", "fpr", "tpr", "threshold"),
    TIMELINE: ("checkpoint", "epoch", "median_member_loss", "median_test_loss", "predictor", "fpr_at_tpr"),
    DYNAMICS: ("checkpoint", "epoch", "sample", "lira", "loss", "psmi"),
    SHADOW_CURVE: ("attack", "k", "draw", "overlap", "spearman", "psmi_fpr_at_tpr", "undefined_share"),
}


@dataclass(frozen=True)
class AggregateOutputs:
    """The aggregate stage's six outputs, checked, plus the memorized threshold of the config's rule."""

    summary: dict[str, Any]
    samples: pd.DataFrame
    roc: pd.DataFrame
    timeline: pd.DataFrame
    dynamics: pd.DataFrame
    shadow_curve: pd.DataFrame
    memorized_threshold: float
    c_pred_level: float | None  # median member loss under which c_pred is chosen (None when c_pred was forced)
    shadow_cost: tuple[str, float] | None = None  # (device, device-hours of one shadow) for the shadow curve

    @property
    def tpr_target(self) -> float:
        return float(self.summary["tpr_target"])

    def target_numbers(self, predictor: str) -> dict[str, float] | None:
        """FPR@TPR, AUC, TPR@FPR of ``predictor`` on the target (None when it had no finite value)."""
        return self.summary["predictors"][predictor]["target"]

    def layers(self, family: str) -> list[int]:
        """The layers of ``family`` ('psmi' or 'mahalanobis') in the summary, in stored order."""
        parsed = [Predictor.parse(name) for name in self.summary["predictors"]]
        return [p.layer for p in parsed if p.kind == family and p.layer is not None]

    def headline(self) -> list[str]:
        """The predictors of the paper's comparison, as evaluated: P-SMI at its best layer, loss, logit gap,
        Mahalanobis at that same layer (the paper's appendix table), early LiRA (those with numbers on the target)."""
        layer = self.summary["best_layer"]["layer"]
        names = [str(Predictor("psmi", layer)), "loss", "logit_gap", str(Predictor("mahalanobis", layer)), "early_lira"]
        return [n for n in names if n in self.summary["predictors"] and self.target_numbers(n)]


def kind_name(kind: str) -> str:
    """Display name of a predictor kind: ``psmi`` → ``P-SMI``."""
    return _DISPLAY.get(kind, kind)


def pretty_name(predictor: str) -> str:
    """Display name: ``psmi_L29`` → ``P-SMI (layer 29)``."""
    p = Predictor.parse(predictor)
    return kind_name(p.kind) if p.layer is None else f"{kind_name(p.kind)} (layer {p.layer})"


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise MemauditError(f"aggregate output {path} not found", _FIX)
    try:
        table = pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise MemauditError(f"aggregate output {path} is corrupted ({type(exc).__name__})", _FIX) from None
    missing = [c for c in _COLUMNS[path.name] if c not in table.columns]
    if missing:
        raise MemauditError(f"aggregate output {path} lacks column(s) {', '.join(missing)}", _FIX)
    return table


def _read_summary(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MemauditError(f"aggregate output {path} not found", _FIX)
    try:
        summary = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MemauditError(f"aggregate output {path} is corrupted ({type(exc).__name__})", _FIX) from None
    missing = [k for k in _SUMMARY_KEYS if k not in summary] if isinstance(summary, dict) else list(_SUMMARY_KEYS)
    if missing:
        raise MemauditError(f"aggregate output {path} lacks {', '.join(missing)}", _FIX)
    entries = summary["predictors"]
    malformed = not isinstance(entries, dict) or any(
        not isinstance(e, dict) or "target" not in e or "all_models" not in e for e in entries.values()
    )
    if malformed or summary["best_layer"].get("predictor") not in entries:
        raise MemauditError(f"aggregate output {path} has malformed predictor entries", _FIX)
    return summary


def _threshold(cfg: ExperimentConfig, samples: pd.DataFrame, where: Path) -> float:
    """The ground-truth score from which a target member counts as memorized, by the config's rule, checked against
    the stored flags."""
    members = samples["member"].to_numpy(dtype=bool)
    llr = samples["ground_truth"].to_numpy(dtype=np.float64)[members]
    ev = cfg.evaluation
    value = memorized_threshold(
        llr, rule=ev.memorized_rule, fraction=ev.memorized_fraction, threshold=ev.memorized_threshold
    )
    if not np.array_equal(llr >= value, samples["memorized"].to_numpy(dtype=bool)[members]):
        raise MemauditError(f"{where}'s memorized flags do not follow the config's memorization rule", _FIX)
    return value


def load_aggregate(cfg: ExperimentConfig, aggregate_dir: str | Path) -> AggregateOutputs:
    """Read and check the aggregate stage's outputs for the config ``cfg``."""
    folder = Path(aggregate_dir)
    if not folder.is_dir():
        raise MemauditError(f"aggregate folder {folder} not found", "run the aggregate stage first")
    summary = _read_summary(folder / SUMMARY)
    if summary["evaluation_fingerprint"] != cfg.evaluation_fingerprint():
        raise MemauditError(
            f"{folder / SUMMARY} was computed for evaluation fingerprint {summary['evaluation_fingerprint']}, "
            f"the config gives {cfg.evaluation_fingerprint()}",
            "pass the run's config, or " + _FIX,
        )
    samples, curves, timeline, dynamics, shadow_curve = (_read_table(folder / name) for name in _COLUMNS)
    members, flags = samples["member"].to_numpy(dtype=bool), samples["memorized"].to_numpy(dtype=bool)
    if int(members.sum()) != summary["n_members"] or int(flags.sum()) != summary["n_memorized"]:
        raise MemauditError(f"{folder}'s samples.parquet and summary.json come from different runs", _FIX)
    best = summary["best_layer"]["predictor"]
    if best not in samples.columns:
        raise MemauditError(f"aggregate output {folder / SAMPLES} lacks column {best}", _FIX)
    unknown = sorted(set(curves["predictor"]) - set(summary["predictors"]))
    if unknown:
        raise MemauditError(f"{folder / ROC} has predictors {unknown} absent from summary.json", _FIX)
    threshold = _threshold(cfg, samples, folder / SAMPLES)
    c = summary["c_pred"]
    level = None if c["rule"] == "forced" else cfg.evaluation.c_pred_loss_ratio * c["median_member_loss"][0]
    if not set(dynamics["sample"]) == set(np.flatnonzero(members)):
        raise MemauditError(f"{folder / DYNAMICS} and samples.parquet come from different runs", _FIX)
    return AggregateOutputs(summary, samples, curves, timeline, dynamics, shadow_curve, threshold, level)


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
        f"({summary['share_memorized']:.1%}), {summary['n_shadows_used']} shadows, {summary['ground_truth']['label']}"
        + (f"; missing shadows {summary['missing_shadows']}" if summary.get("missing_shadows") else ""),
    ]
    return "\n".join(lines)
