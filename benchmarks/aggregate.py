"""Benchmark of the aggregate stage and of P-SMI (``make bench``; not a test).

1. Writes 100 synthetic score files (30,000 samples, 15 checkpoints, 4 options, 6 layers with P-SMI and
   Mahalanobis: ~30 MB each) to a temporary folder, deleted at the end (in a child process).
2. In this process: a plain per-sample-loop reference of the LiRA numbers the aggregate computes (every model as
   the target against the 99 others, at its final checkpoint and at c_pred, looping over samples the way the
   reference code does), timed on a subset of samples and extrapolated linearly; then the aggregate stage on all
   files. The reference numbers are checked against the aggregate's (its ``samples.parquet`` for the target,
   ``lira_loo`` for every model) to 1e-9.
3. In a child process: P-SMI of 15,000 × 4,096 features, 2,000 directions, on the CPU.

Peak memory is the peak resident set size (VmHWM) of the process doing the work; P-SMI's torch buffers are
invisible to tracemalloc, hence RSS.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LAYERS = (4, 8, 16, 24, 30, 32)


def _peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (VmHWM: unlike ru_maxrss, not inherited from the parent)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_now_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def _child(*args: str) -> dict:
    """Run a phase of this script in a fresh interpreter; it prints one JSON line last."""
    done = subprocess.run([sys.executable, __file__, *args], check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def generate(folder: str, n_models: int, n_samples: int) -> dict:
    from memaudit.data.poolfile import write_pool
    from memaudit.testing import write_synthetic_scores

    synthetic = write_synthetic_scores(
        folder, n_models=n_models, n_samples=n_samples, layers=LAYERS, seed=0, progress=True
    )
    write_pool(synthetic.pool, Path(folder) / "pool.parquet")
    return {"files": len(synthetic.paths)}


def psmi_throughput(n: int, dim: int, directions: int) -> dict:
    from memaudit.metrics import psmi

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, n)
    features = (rng.normal(0, 1, (4, dim))[labels] + rng.normal(0, 1, (n, dim))).astype(np.float32)
    loaded = _peak_rss_mb()
    start = time.perf_counter()
    values = psmi(features, labels, n_directions=directions, seed=0, device="cpu")
    seconds = time.perf_counter() - start
    assert np.isfinite(values).all()
    return {"seconds": seconds, "peak_rss_mb": _peak_rss_mb(), "loaded_rss_mb": loaded}


def reference_lira(final: np.ndarray, early: np.ndarray, member: np.ndarray, samples: np.ndarray, clip=100.0):
    """Online LiRA with per-sample moments of every model m against the others, for its final and its c_pred
    statistic, one (sample, model) pair at a time with plain Python lists."""
    n_models = final.shape[0]
    out_final, out_early = np.empty((n_models, samples.size)), np.empty((n_models, samples.size))
    for col, i in enumerate(samples):
        values, is_in, early_i = final[:, i].tolist(), member[:, i].tolist(), early[:, i].tolist()
        for m in range(n_models):
            ins, outs = [], []
            for s in range(n_models):
                if s != m:
                    (ins if is_in[s] else outs).append(values[s])
            assert len(ins) >= 2 and len(outs) >= 2, "the benchmark population has no degenerate sample"
            mu_in, var_in = np.mean(ins), np.var(ins)
            mu_out, var_out = np.mean(outs), np.var(outs)
            for x, out in ((values[m], out_final), (early_i[m], out_early)):
                llr = 0.5 * ((x - mu_out) ** 2 / var_out - (x - mu_in) ** 2 / var_in + math.log(var_out / var_in))
                out[m, col] = min(max(llr, -clip), clip)
    return out_final, out_early


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--samples", type=int, default=30_000)
    parser.add_argument("--reference-samples", type=int, default=600, help="subset timed for the reference")
    parser.add_argument("--psmi-samples", type=int, default=15_000)
    parser.add_argument("--psmi-dim", type=int, default=4096)
    parser.add_argument("--psmi-directions", type=int, default=2000)
    parser.add_argument("--phase", choices=["generate", "psmi"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "generate":
        print(json.dumps(generate(args.folder, args.models, args.samples)))
        return
    if args.phase == "psmi":
        print(json.dumps(psmi_throughput(args.psmi_samples, args.psmi_dim, args.psmi_directions)))
        return

    import pandas as pd

    from memaudit.config import load_config
    from memaudit.data.poolfile import read_pool
    from memaudit.metrics import lira_loo, logit_gap
    from memaudit.stages.aggregate import aggregate
    from memaudit.stages.scorefile import read_scores

    folder = Path(tempfile.mkdtemp(prefix="memaudit-bench-"))
    try:
        start = time.perf_counter()
        sizes = ["--models", str(args.models), "--samples", str(args.samples)]
        _child("--phase", "generate", "--folder", str(folder), *sizes)
        paths = sorted(folder.glob("shadow-*.npz"), key=lambda p: int(p.stem.split("-")[1]))
        size = sum(p.stat().st_size for p in paths) / len(paths) / 2**20
        print(f"wrote {len(paths)} score files of {size:.1f} MB in {time.perf_counter() - start:.0f} s")

        cfg = load_config()  # paper evaluation: online LiRA, per-sample variances, target 0
        pool = read_pool(folder / "pool.parquet")
        rss_before = _rss_now_mb()
        runs = []
        for _ in range(2):  # the first run also pays one-time imports and first-touch costs
            start = time.perf_counter()
            summary = aggregate(cfg, paths, pool, folder / "out", progress=False)
            runs.append(time.perf_counter() - start)
        agg_s = runs[0]
        agg_rss = _peak_rss_mb()

        # what the reference starts from: every model's final and c_pred logit gaps, and membership
        c = summary["c_pred"]["index"]
        label = read_scores(paths[0])["label_index"]
        final, early, member = [], [], []
        for p in paths:
            arrays = read_scores(p)
            gaps = logit_gap(arrays["option_logits"][[c, -1]], np.broadcast_to(label, (2, label.size)))
            early.append(gaps[0]), final.append(gaps[1]), member.append(arrays["member"])
        final, early, member = np.stack(final), np.stack(early), np.stack(member)
        subset = np.random.default_rng(0).choice(args.samples, args.reference_samples, replace=False)
        start = time.perf_counter()
        ref_final, ref_early = reference_lira(final, early, member, subset)
        ref_subset_s = time.perf_counter() - start
        ref_s = ref_subset_s * args.samples / args.reference_samples

        start = time.perf_counter()
        loo = lira_loo(final, member)
        loo_early = lira_loo(final, member, target_stats=early)
        loo_s = time.perf_counter() - start
        samples = pd.read_parquet(folder / "out" / "samples.parquet")
        errors = {
            "target": np.abs(samples["lira"].to_numpy()[subset] - ref_final[0]).max(),
            "target early": np.abs(samples["early_lira"].to_numpy()[subset] - ref_early[0]).max(),
            "every model": np.abs(loo[:, subset] - ref_final).max(),
            "every model early": np.abs(loo_early[:, subset] - ref_early).max(),
        }
        assert max(errors.values()) <= 1e-9, errors

        psmi = _child(
            "--phase", "psmi", "--psmi-samples", str(args.psmi_samples), "--psmi-dim", str(args.psmi_dim),
            "--psmi-directions", str(args.psmi_directions),
        )  # fmt: skip
        work = args.psmi_samples * args.psmi_directions * args.psmi_dim

        m, n = args.models, args.samples
        print(f"\n== aggregate: {m} score files, {n} samples, 15 checkpoints, 4 options, {len(LAYERS)} layers")
        print("aggregate stage, whole (reads the files, LiRA of the target and of every model left out, final")
        print(f"  and at c_pred, {len(summary['predictors'])} predictors evaluated on every model, timeline, outputs):")
        print(
            f"  {runs[0]:.2f} s (a second run: {runs[1]:.2f} s), peak RSS {agg_rss:,.0f} MB "
            f"({rss_before:,.0f} MB before)"
        )
        print(f"the same LiRA numbers with lira_loo (2 x {m} models x {n} samples): {loo_s:.3f} s")
        print(
            f"per-sample-loop reference of these LiRA numbers: {ref_s:.1f} s (timed on {args.reference_samples} "
            f"samples: {ref_subset_s:.1f} s, extrapolated linearly x{n / args.reference_samples:.0f})"
        )
        print("max |difference| vs the reference: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
        print(
            f"speed-up vs the reference: whole aggregate stage {ref_s / agg_s:.1f}x, LiRA alone {ref_s / loo_s:,.0f}x"
        )
        p_s = psmi["seconds"]
        print(f"\n== P-SMI on CPU: {args.psmi_samples} x {args.psmi_dim} features, {args.psmi_directions} directions")
        print(
            f"{p_s:.1f} s, throughput {work / p_s:.3e} sample*direction*dim/s, peak RSS {psmi['peak_rss_mb']:,.0f} MB"
        )
        print(f"  (features loaded: {psmi['loaded_rss_mb']:,.0f} MB)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
