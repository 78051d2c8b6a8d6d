"""RMIA's speed: memaudit's sort-and-search against a vectorised brute force, and the shadow curve's cost.

On random probabilities for 30,000 samples × 99 reference models (the population half of them, ``--samples``,
``--models``): ``memaudit.metrics.rmia`` (one sort of the population's log ratios, a binary search per sample,
O((N + Z) log Z)) against a vectorised brute force that compares every sample with every population sample
(N × Z ratios, in row blocks to bound memory), online and offline; the two must agree exactly. Then the shadow
curve (every attack, k = 1, 2, 4, … 99, 5 draws) on a synthetic population of the same size, against the
aggregate's leave-one-out LiRA of all models (the reference measured in the same run).

    .venv/bin/python benchmarks/rmia.py                         # ~2 min on 2 cores
    .venv/bin/python benchmarks/rmia.py --samples 3000 --models 20

Writes benchmarks/results/rmia.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from memaudit.config import load_config
from memaudit.metrics import lira_loo, rmia
from memaudit.stages.population import Population
from memaudit.stages.shadow_curve import CurveInputs, shadow_curve

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 256  # rows of the brute force's N × Z comparison at a time


def brute_force(target_p, reference_p, member, population, gamma=1.0, offline_a=None) -> np.ndarray:
    """Every sample against every population sample: ratio(x) / ratio(z) >= gamma, counted."""
    if offline_a is None:
        pr = reference_p.mean(axis=0)
    else:
        out = ~member
        pr = ((1 + offline_a) * (reference_p * out).sum(axis=0) / out.sum(axis=0) + (1 - offline_a)) / 2
    ratio = target_p / pr
    z = ratio[population]
    counts = np.concatenate(
        [((ratio[i : i + BLOCK, None] / z[None, :]) >= gamma).sum(axis=1) for i in range(0, ratio.size, BLOCK)]
    )
    return counts / population.size


def timed(call, repeat: int = 3) -> tuple[float, object]:
    """Best wall time of ``repeat`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = call()
        best = min(best, time.perf_counter() - start)
    return best, result


def attack_speed(n: int, m: int) -> dict:
    rng = np.random.default_rng(0)
    member = rng.random((m, n)) < 0.5
    member[0] = False  # every sample has an OUT model
    reference_p = rng.uniform(1e-4, 1.0, (m, n))
    target_p = rng.uniform(1e-4, 1.0, n)
    population = np.flatnonzero(rng.random(n) < 0.5)
    rows = {}
    for mode, a in (("online", None), ("offline", 0.3)):
        args = (target_p, reference_p, member, population)
        fast_s, fast = timed(lambda args=args, a=a: rmia(*args, offline_a=a))
        brute_s, brute = timed(lambda args=args, a=a: brute_force(*args, offline_a=a), repeat=1)
        assert np.array_equal(fast, brute), "memaudit's RMIA and the brute force disagree"
        rows[mode] = {"memaudit_s": fast_s, "brute_force_s": brute_s, "speedup": brute_s / fast_s}
        print(f"rmia {mode}: {fast_s:.3f} s, brute force {brute_s:.1f} s ({brute_s / fast_s:.0f}×)", flush=True)
    return rows


def curve_speed(n: int, m: int) -> dict:
    """The shadow curve on a synthetic population of m models, against leave-one-out LiRA of the same arrays."""
    rng = np.random.default_rng(1)
    member = rng.random((m, n)) < 0.5
    gap = rng.normal(0, 1, (m, n)) + 2.0 * member * (rng.random(n) < 0.1)
    p = 1 / (1 + np.exp(-gap))
    pop = Population(ids=list(range(m)), target={}, c_pred=0, c_pred_rule="forced", medians=np.zeros(1),
                     with_mahalanobis=False, member=member, final_gap=gap, early_gap=gap, final_p=p,
                     stored=np.zeros((m, 1, n), np.float32))  # fmt: skip
    cfg = load_config(overrides=[f"shadows.n_shadows={m}", "evaluation.lira_mode=global"])
    members = member[0]
    reference = gap[0, members]
    flags = reference >= np.quantile(reference, 0.9)
    inputs = CurveInputs(flags, reference, -gap[0, members])
    curve_s, (frame, _) = timed(lambda: shadow_curve(cfg, pop, inputs, 0.3), repeat=1)
    loo_s, _ = timed(lambda: lira_loo(gap, member, global_variance=True), repeat=1)
    print(f"shadow curve: {curve_s:.1f} s for {len(frame)} rows; leave-one-out LiRA {loo_s:.1f} s", flush=True)
    return {"rows": len(frame), "curve_s": curve_s, "lira_loo_s": loo_s, "curve_over_lira_loo": curve_s / loo_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=30_000)
    parser.add_argument("--models", type=int, default=99)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/rmia.json")
    args = parser.parse_args(argv)
    result = {
        "machine": f"{os.cpu_count()} CPU cores, Python {sys.version.split()[0]}",
        "samples": args.samples,
        "models": args.models,
        "rmia": attack_speed(args.samples, args.models),
        "shadow_curve": curve_speed(args.samples, args.models + 1),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# RMIA speed (benchmarks/rmia.py): {args.samples} samples × {args.models} models", "",
             result["machine"], "", "| mode | memaudit s | brute force s | speed-up |",
             "|---|---:|---:|---:|"]  # fmt: skip
    for mode, row in result["rmia"].items():
        lines.append(f"| {mode} | {row['memaudit_s']:.3f} | {row['brute_force_s']:.1f} | {row['speedup']:.0f}× |")
    c = result["shadow_curve"]
    lines += ["", f"Shadow curve ({c['rows']} rows): {c['curve_s']:.1f} s; leave-one-out LiRA of the same population "
              f"{c['lira_loo_s']:.1f} s (ratio {c['curve_over_lira_loo']:.2f})", ""]  # fmt: skip
    args.results.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
