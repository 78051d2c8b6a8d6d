"""What verified reuse costs: hashing a sealed shadow (every checkpoint and its scores, as the finetune task does
once per run before skipping it) against the fine-tune and scoring it saves, on a finished local run.

    .venv/bin/python benchmarks/verify.py runs/demo      # a folder written by `memaudit run`
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from memaudit.store import LocalStore
from memaudit.store.layout import TRAIN_LOG

RESULTS = Path(__file__).resolve().parent / "results" / "verify.json"


def main(run: Path) -> dict:
    store = LocalStore(run / "store")
    (fingerprint,) = [p.name for p in (run / "store").iterdir() if (p / "shadows").is_dir()]
    shadows = sorted((run / "store" / fingerprint / "shadows").iterdir(), key=lambda p: int(p.name))
    verify_s, train_s, score_s, n_bytes = 0.0, 0.0, 0.0, 0
    events = [json.loads(line) for line in (run / "progress.jsonl").read_text().splitlines()]
    starts = {(e["stage"], e["shadow"]): e["t"] for e in events if e["event"] == "start"}
    for folder in shadows:
        prefix = f"{fingerprint}/shadows/{folder.name}"
        start = time.perf_counter()
        assert store.damaged(prefix) == []
        verify_s += time.perf_counter() - start
        n_bytes += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        train_s += json.loads((folder / TRAIN_LOG).read_text())["wall_time_s"]
        done = [e for e in events if e["stage"] == "score" and e["shadow"] == int(folder.name) and e["event"] == "done"]
        score_s += done[-1]["t"] - starts[("score", int(folder.name))] if done else 0.0
    result = {
        "shadows": len(shadows),
        "bytes_verified": n_bytes,
        "verify_s": round(verify_s, 3),
        "finetune_s": round(train_s, 1),
        "score_s": round(score_s, 1),
        "verify_share_of_the_work_it_guards": round(verify_s / (train_s + score_s), 5),
    }
    print(json.dumps(result, indent=1))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo"))
