"""Where does a step-time prediction miss? For one configuration of `bench/plan.py`: the
planner's fitted seconds for each of the run's own batches beside the seconds `lmtune train`
then logs for that step, so a miss shows as either every step off (the machine's speed
moved since the calibration) or some shapes off (the fit).

    .venv/bin/python bench/plan_steps.py "smollm2 full b2 len128"

Uses the calibration `lmtune plan` keeps (run `bench/plan.py --only NAME` first if there is
none). The last line holds the mean of steps 2-16, as `bench/plan.py` counts them.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from plan import CONFIGS, encoded, step_predictions  # noqa: E402


def main() -> None:
    from lmtune.config import load_config
    from lmtune.plan.calibrate import cached
    from lmtune.plan.measure import measure_run

    cfg = load_config(None, dict(CONFIGS)[sys.argv[1]])
    enc = encoded(cfg)
    cal = cached(cfg, enc[2], len(enc[3] or []))
    if cal is None:
        sys.exit(f"no calibration yet: run bench/plan.py --only '{sys.argv[1]}' first")
    batches, predicted = step_predictions(cfg, enc, cal)
    measured = measure_run(cfg)["step_seconds"]
    for i, (b, p, m) in enumerate(zip(batches, predicted, measured), 1):
        print(f"step {i:2d}: {b.rows} rows x {b.width} tokens, {b.trained:4d} trained: "
              f"predicted {p:.3f} s, measured {m:.3f} s, {p / m - 1:+.1%}")
    p, m = sum(predicted[1:len(measured)]), sum(measured[1:])
    print(f"steps 2-{len(measured)}: predicted {p / (len(measured) - 1):.3f} s, measured "
          f"{m / (len(measured) - 1):.3f} s, {p / m - 1:+.1%}")


if __name__ == "__main__":
    main()
