"""`lmtune plan --measure` and `bench/plan.py`: a few real steps of `lmtune train` per
configuration, with what the planner predicted for that run beside what it measured (every
run writes both into summary.json)."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from lmtune.config import Config, config_yaml
from lmtune.plan.planner import method_config

# A short run that still validates once in the middle, so the steps after it hold the copy
# of the best weights as a long run does; validation itself kept short.
MEASURE_STEPS = 16
MEASURE_SETTINGS = [f"train.max_steps={MEASURE_STEPS}",
                    f"train.eval_every={MEASURE_STEPS // 2}", "train.log_every=1",
                    "eval.max_samples=64", "eval.generate_samples=0", "overwrite=true"]


def measure_run(cfg: Config, extra: list[str] = (), threads: int | None = None) -> dict:
    """Train `cfg` for a few steps in a child process; its summary.json's plan check."""
    with tempfile.TemporaryDirectory(prefix="lmtune-plan-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(config_yaml(cfg))
        args = [sys.executable, "-m", "lmtune", "train", "--quiet", str(path),
                f"output_dir={tmp}/run", *MEASURE_SETTINGS, *extra]
        done = subprocess.run(args, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-3:])
            return {"error": f"lmtune train exited {done.returncode}: {tail}"}
        check = json.loads((Path(tmp) / "run" / "summary.json").read_text())["plan"]
        steps = logged_steps(Path(tmp) / "run" / "metrics.jsonl",
                             cfg.train.batch_size * cfg.train.grad_accum)
    # The first step also builds the first shape's kernels and the optimizer's state.
    seconds = sum(steps[1:]) / len(steps[1:])
    p, m = check["predicted"], check["measured"] | {"seconds_per_step": seconds}
    out = {"predicted_peak_mb": p["peak_memory_mb"], "peak_memory_mb": m["peak_memory_mb"],
           "memory_error": p["peak_memory_mb"] / m["peak_memory_mb"] - 1,
           "calibrated": p["calibrated"], "predicted_seconds": p["seconds_per_step"],
           "seconds_per_step": m["seconds_per_step"], "step_seconds": steps}
    if p["seconds_per_step"] is not None:
        out["time_error"] = p["seconds_per_step"] / m["seconds_per_step"] - 1
    return out


def logged_steps(metrics: Path, rows_per_step: int) -> list[float]:
    """The seconds of each training step, in order, from the per-step log rows."""
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    return [rows_per_step / r["samples_per_s"] for r in rows if "samples_per_s" in r]


def measure_rows(cfg: Config, methods: list[str], plan: dict) -> list[dict]:
    rows = []
    for i, name in enumerate(methods, 1):
        print(f"plan: training {name} for {MEASURE_STEPS} steps ({i} of {len(methods)})",
              file=sys.stderr, flush=True)
        rows.append({"method": name, **measure_run(method_config(cfg, name))})
    return rows
