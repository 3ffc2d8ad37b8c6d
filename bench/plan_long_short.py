"""Is a long run slower per step than the short runs `bench/plan.py` measures? The default
job's whole run (560 steps) and a 16-step run of the same configuration, interleaved, each
against the same calibration (the one `lmtune plan` keeps for the default job).

    .venv/bin/python bench/plan_long_short.py            # 3 rounds, about 6 minutes
    .venv/bin/python bench/plan_long_short.py --rounds 5

Per round: the 16-step run's mean step (steps 2-16, as `bench/plan.py` counts them), the
whole run's mean step (its summary.json), the whole run's first 20 steps, and what the
planner predicted for each.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    from lmtune.config import load_config
    from lmtune.plan.measure import logged_steps, measure_run

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    cfg = load_config(None, [])
    print("| round | at | 16 steps: predicted | measured | whole run: predicted | measured "
          "| its first 20 steps | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in range(args.rounds):
        short = measure_run(cfg)
        with tempfile.TemporaryDirectory() as tmp:
            began = time.perf_counter()
            subprocess.run([sys.executable, "-m", "lmtune", "train", "--quiet",
                            f"output_dir={tmp}/run"], check=True, capture_output=True)
            wall = time.perf_counter() - began
            plan = json.loads((Path(tmp) / "run" / "summary.json").read_text())["plan"]
            # The default job logs every 10 steps: each row is a 10-step window's mean.
            windows = logged_steps(Path(tmp) / "run" / "metrics.jsonl",
                                   cfg.train.batch_size)
        print(f"| {r + 1} | {time.strftime('%H:%M:%S')} | {short['predicted_seconds']:.3f} | "
              f"{short['seconds_per_step']:.3f} | {plan['predicted']['seconds_per_step']:.3f} "
              f"| {plan['measured']['seconds_per_step']:.3f} | {sum(windows[:2]) / 2:.3f} | "
              f"{wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()
