"""How an audit's time grows with its shadows and its pool, measured on the demo model against the cost model.

Runs `memaudit run --preset demo` with 4, 8, 16 and 32 shadows (pool of 1,200 rows), then 300 and 4,800 rows (4
shadows), all with ``training.epochs`` set to ``--epochs`` (2 by default, to keep the table minutes long) and one
shared cache folder. For each run: the wall time, the shadows' task time (fine-tune + scoring work, from the
progress events) and what ``memaudit estimate --device cpu`` predicts for that work (``memaudit.cost``). The
slopes (seconds per shadow, seconds per pool row) of a least-squares line through the measured task times are
checked against the estimate's slopes: within 25 % passes.

    .venv/bin/python benchmarks/scaling.py                  # ~10 min on 2 cores
    .venv/bin/python benchmarks/scaling.py --shadows 4,8 --pools 300

Writes benchmarks/results/scaling.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_profile import ROOT, work_times

from memaudit.cli.options import resolve_config
from memaudit.cost.estimate import estimate

TOLERANCE = 0.25
DEFAULT_POOL = 1200  # the demo's dataset.synthetic.n_samples


def settings(shadows: int, pool: int, epochs: int) -> list[str]:
    return [f"shadows.n_shadows={shadows}", f"dataset.synthetic.n_samples={pool}", f"training.epochs={epochs}"]


def measure(shadows: int, pool: int, epochs: int, tmp: Path) -> dict:
    """One run: wall time, measured shadow work and the cost model's prediction of it."""
    overrides = settings(shadows, pool, epochs)
    output = tmp / f"s{shadows}-p{pool}"
    command = [str(ROOT / ".venv/bin/memaudit"), "run", "--preset", "demo", "--output", str(output), "--no-progress"]
    for item in overrides:
        command += ["--set", item]
    started = time.monotonic()
    env = {**os.environ, "MEMAUDIT_CACHE_DIR": str(tmp / "cache")}
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.monotonic() - started
    stages = work_times(output / "progress.jsonl")
    predicted = estimate(resolve_config("demo", None, overrides), "cpu")
    row = {"shadows": shadows, "pool": pool, "wall_s": wall,
           "measured_s": stages["finetune"]["work_s"] + stages["score"]["work_s"],
           "predicted_s": predicted.train_s + predicted.score_s}  # fmt: skip
    print(f"{shadows} shadows, pool {pool}: wall {wall:.0f} s, shadow work {row['measured_s']:.0f} s "
          f"(cost model {row['predicted_s']:.0f} s)", flush=True)  # fmt: skip
    return row


def slope(rows: list[dict], key: str, value: str) -> float:
    """Least-squares slope of ``value`` against ``key`` over ``rows``."""
    x = np.array([r[key] for r in rows], dtype=np.float64)
    y = np.array([r[value] for r in rows], dtype=np.float64)
    return float(np.polyfit(x, y, 1)[0])


def compare(rows: list[dict], key: str) -> dict:
    """Measured and predicted slope along ``key`` and whether they agree within the tolerance."""
    measured, predicted = slope(rows, key, "measured_s"), slope(rows, key, "predicted_s")
    ratio = measured / predicted
    return {"measured": measured, "predicted": predicted, "ratio": ratio, "within_25pct": abs(ratio - 1) <= TOLERANCE}


def markdown(result: dict) -> str:
    head = f"{result['machine']}, training.epochs={result['epochs']}"
    lines = ["# Scaling on the demo model (benchmarks/scaling.py)", "", head,
             "", "| shadows | pool rows | wall s | shadow work s (measured) | cost model s | measured / model |",
             "|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in result["rows"]:
        lines.append(f"| {r['shadows']} | {r['pool']} | {r['wall_s']:.0f} | {r['measured_s']:.1f} "
                     f"| {r['predicted_s']:.1f} | {r['measured_s'] / r['predicted_s']:.2f} |")  # fmt: skip
    lines += ["", "| slope | measured | cost model | ratio | within 25 % |", "|---|---:|---:|---:|---|"]
    for name, s in result["slopes"].items():
        lines.append(
            f"| {name} | {s['measured']:.3f} | {s['predicted']:.3f} | {s['ratio']:.2f} | {s['within_25pct']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shadows", default="4,8,16,32", help="shadow counts at the default pool")
    parser.add_argument("--pools", default="300,4800", help="pool rows at the fewest shadows (plus 1,200)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/scaling.json")
    args = parser.parse_args(argv)
    counts = sorted(int(s) for s in args.shadows.split(","))
    pools = sorted({int(p) for p in args.pools.split(",")} | {DEFAULT_POOL})
    with tempfile.TemporaryDirectory(prefix="memaudit-scaling-") as tmp:
        by_shadows = [measure(k, DEFAULT_POOL, args.epochs, Path(tmp)) for k in counts]
        at_default = by_shadows[0]
        by_pool = [at_default if p == DEFAULT_POOL else measure(counts[0], p, args.epochs, Path(tmp)) for p in pools]
    result = {
        "machine": f"{os.cpu_count()} CPU cores, Python {sys.version.split()[0]}",
        "epochs": args.epochs,
        "rows": by_shadows + [r for r in by_pool if r is not at_default],
        "slopes": {
            "seconds per shadow": compare(by_shadows, "shadows"),
            "seconds per pool row": compare(by_pool, "pool"),
        },
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1) + "\n")
    args.results.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
