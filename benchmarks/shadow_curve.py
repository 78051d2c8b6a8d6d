"""The shadow curve of a finished audit, as a committed table: how much of the all-shadows LiRA memorized set each
attack recovers with k shadows.

Reads the newest aggregate of a `memaudit run` output folder (``store/<fp>/aggregate-v<N>/<evaluation fp>/``):
``shadow_curve.parquet`` and ``summary.json``. Writes, per attack and k, the mean ± std over draws of the overlap,
the Spearman correlation with the all-shadows LiRA, P-SMI's FPR@TPR against the attack's set and the share of
members the k shadows cannot score.

    .venv/bin/memaudit run --preset demo --output runs/demo
    .venv/bin/python benchmarks/shadow_curve.py runs/demo --name demo     # benchmarks/results/shadow-curve-demo.*
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("overlap", "spearman", "psmi_fpr_at_tpr", "undefined_share")


def newest_aggregate(run: Path) -> Path:
    """The most recently written aggregate folder of the run's store."""
    found = sorted(run.glob("store/*/aggregate-v*/*/shadow_curve.parquet"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"shadow_curve: no aggregate with shadow_curve.parquet under {run}/store; run the audit first")
    return found[-1].parent


def table(curve: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over the draws, one row per (attack, k)."""
    stats = curve.groupby(["attack", "k"])[list(COLUMNS)].agg(["mean", "std"]).fillna(0.0)
    stats.columns = [f"{name}_{stat}" for name, stat in stats.columns]
    return stats.reset_index()


def markdown(name: str, summary: dict, rows: pd.DataFrame) -> str:
    facts = summary["shadow_curve"]
    lines = [f"# Shadow curve: {name} (benchmarks/shadow_curve.py)", "",
             f"Reference: {facts['reference']}; {facts['draws']} draws per k; ground truth of the audit: "
             f"{summary['ground_truth']['label']}; offline RMIA a = {facts['offline_a']:g}.", "",
             f"Smallest k reaching {facts['goal']:.0%} overlap: "
             + ", ".join(f"{a} {k if k is not None else 'none'}" for a, k in facts["smallest_k"].items()), "",
             "| attack | k | overlap | Spearman | P-SMI FPR@TPR | undefined share |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows.itertuples():
        cells = " | ".join(f"{getattr(r, c + '_mean'):.3f} ± {getattr(r, c + '_std'):.3f}" for c in COLUMNS)
        lines.append(f"| {r.attack} | {r.k} | {cells} |")
    if facts["skipped"]:
        lines += ["", "Skipped: " + "; ".join(facts["skipped"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="output folder of a finished memaudit run")
    parser.add_argument("--name", default="demo", help="results/shadow-curve-<name>.json and .md")
    args = parser.parse_args(argv)
    folder = newest_aggregate(args.run)
    summary = json.loads((folder / "summary.json").read_text())
    rows = table(pd.read_parquet(folder / "shadow_curve.parquet"))
    out = ROOT / "benchmarks/results" / f"shadow-curve-{args.name}"
    payload = {"aggregate": str(folder.relative_to(args.run)), "shadow_curve": summary["shadow_curve"],
               "ground_truth": summary["ground_truth"], "rows": rows.to_dict(orient="records")}  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(args.name, summary, rows))
    print(markdown(args.name, summary, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
