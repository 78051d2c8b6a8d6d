"""The early warning against the audit it stands in for, on the demo preset.

Runs (or reuses, with --audit) the demo audit, then ``memaudit predict --members-of 0 --layer-from AUDIT`` (the
target's own half: its predictions must reproduce the audit's P-SMI numbers for the target) and ``memaudit
predict`` (the whole training set, as a user would). Writes benchmarks/results/predict.json and predict.md:
FPR@TPR=0.75 and AUC of P-SMI for the target from the audit and from the prediction, c_pred of both, the training
steps and wall time of each path.

    .venv/bin/python benchmarks/predict.py [--audit runs/demo] [--work /tmp/memaudit-predict-bench]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from memaudit.metrics import evaluate

RESULTS = Path(__file__).parent / "results"
MEMAUDIT = [sys.executable, "-m", "memaudit.cli"]


def _timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _audit(folder: Path) -> tuple[dict, float | None]:
    """The demo audit's summary (run it when ``folder`` holds none) and its wall time when measured here."""
    wall = None
    if not (folder / "summary.json").is_file():
        wall = _timed([*MEMAUDIT, "run", "--preset", "demo", "--no-progress", "--output", str(folder)])
    return json.loads((folder / "summary.json").read_text()), wall


def _target_samples(folder: Path, summary: dict) -> pd.DataFrame:
    efp = summary["evaluation_fingerprint"]
    return pd.read_parquet(folder / "store" / summary["fingerprint"] / "aggregate" / efp / "samples.parquet")


def _prediction_numbers(samples: pd.DataFrame, frame: pd.DataFrame, tpr: float) -> dict:
    members = samples[samples["member"]].set_index("global_index")
    psmi = frame.set_index("global_index")["psmi"].reindex(members.index).to_numpy(dtype=np.float64)
    numbers = evaluate(members["memorized"].to_numpy(dtype=bool), -psmi, tpr=tpr)
    return {k: numbers[k] for k in ("fpr_at_tpr", "auc")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audit", type=Path, default=Path("runs/demo"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/memaudit-predict-bench"))
    args = parser.parse_args()
    summary, audit_wall = _audit(args.audit)
    layer = summary["best_layer"]["layer"]
    runs = {}
    for name, extra in (("members_of_0", ["--members-of", "0", "--layer-from", str(args.audit)]), ("whole_set", [])):
        out = args.work / name
        wall = _timed([*MEMAUDIT, "predict", "--preset", "demo", "--no-progress", "-o", str(out), *extra])
        runs[name] = {"wall_s": wall, **json.loads((out / "predict.json").read_text())}
        runs[name]["frame"] = pd.read_parquet(out / "predictions.parquet")
    samples = _target_samples(args.audit, summary)
    audit_numbers = {k: summary["predictors"][f"psmi_L{layer}"]["target"][k] for k in ("fpr_at_tpr", "auc")}
    predicted = _prediction_numbers(samples, runs["members_of_0"].pop("frame"), summary["tpr_target"])
    runs["whole_set"].pop("frame")
    result = {
        "preset": "demo",
        "layer": layer,
        "audit": {"psmi_target": audit_numbers, "c_pred": summary["c_pred"]["step"], "wall_s": audit_wall},
        "predict_members_of_0": {"psmi_target": predicted, **_facts(runs["members_of_0"])},
        "predict_whole_set": _facts(runs["whole_set"]),
        "abs_difference": {k: abs(predicted[k] - audit_numbers[k]) for k in audit_numbers},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "predict.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "predict.md").write_text(_markdown(result))
    print(_markdown(result))


def _facts(run: dict) -> dict:
    keys = ("wall_s", "train_steps", "audit_train_steps", "cost_ratio", "n_at_risk", "n_samples")
    return {"c_pred": run["c_pred"]["step"], **{k: run[k] for k in keys}}


def _markdown(r: dict) -> str:
    a, m, w = r["audit"], r["predict_members_of_0"], r["predict_whole_set"]
    wall = f"{a['wall_s']:.0f} s" if a["wall_s"] else "not measured (reused)"
    return "\n".join(
        [
            f"# Early warning vs the audit (demo preset, P-SMI layer {r['layer']})",
            "",
            "| | FPR@TPR=0.75 | AUC | c_pred step | train steps | share of the audit's | wall time |",
            "|---|---|---|---|---|---|---|",
            f"| audit (target 0, 16 shadows) | {a['psmi_target']['fpr_at_tpr']:.4f} | {a['psmi_target']['auc']:.4f} "
            f"| {a['c_pred']} | {m['audit_train_steps']} | 100 % | {wall} |",
            f"| predict --members-of 0 | {m['psmi_target']['fpr_at_tpr']:.4f} | {m['psmi_target']['auc']:.4f} "
            f"| {m['c_pred']} | {m['train_steps']} | {m['cost_ratio']:.2%} | {m['wall_s']:.0f} s |",
            f"| predict (whole set, {w['n_samples']} samples) | — | — | {w['c_pred']} | {w['train_steps']} "
            f"| {w['cost_ratio']:.2%} | {w['wall_s']:.0f} s |",
            "",
            f"At risk (P-SMI < 0): {w['n_at_risk']} of {w['n_samples']} samples on the whole set.",
            "Wall times include building the pool and the tiny base model (cached in each output folder's store).",
            "",
        ]
    )


if __name__ == "__main__":
    main()
