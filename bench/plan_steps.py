"""Where does a step-time prediction miss? For one configuration of `bench/plan.py`: the
planner's fitted seconds for each of the run's own batches beside the seconds `lmtune train`
then logs for that step, so a miss shows as either every step off (the machine's speed
moved since the calibration) or some shapes off (the fit).

    .venv/bin/python bench/plan_steps.py "smollm2 full b2 len128"

Uses the calibration `lmtune plan` keeps (run `bench/plan.py --only NAME` first if there is
none). The last line holds the mean of steps 2-16, as `bench/plan.py` counts them.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from plan import CONFIGS  # noqa: E402


def main() -> None:
    from lmtune.config import load_config
    from lmtune.models.load import load_model_config, load_tokenizer, resolve_model
    from lmtune.plan.calibrate import cached
    from lmtune.plan.measure import MEASURE_SETTINGS
    from lmtune.plan.model import train_batches
    from lmtune.prepare import encode_or_cached
    from lmtune.tasks import get_task

    overrides = dict(CONFIGS)[sys.argv[1]]
    cfg = load_config(None, overrides)
    task = get_task(cfg.task).for_run(cfg)
    raw = task.read(cfg)
    path = resolve_model(cfg.model, cfg.cache_dir)
    data, _, _ = encode_or_cached(cfg, task, raw, load_tokenizer(path, False),
                                  load_model_config(path, False), path)
    cal = cached(cfg, str(path), len(task.label_names(raw) or []))
    if cal is None:
        sys.exit(f"no calibration yet: run bench/plan.py --only '{sys.argv[1]}' first")
    if cfg.train.grad_accum != 1:
        sys.exit("one micro-batch a step only: a step's log row cannot be split by micro-batch")
    per_step = cfg.train.batch_size
    batches = train_batches(task, data["train"], per_step, cfg.seed, cfg.train.group_by_length)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "lmtune", "train", "--quiet", *overrides,
                        f"output_dir={tmp}/run", *MEASURE_SETTINGS], check=True,
                       capture_output=True)
        rows = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text()
                .splitlines()]
    predicted, measured = [], []
    for r in (r for r in rows if "samples_per_s" in r):
        b = batches[r["step"] - 1]
        p = cal.backward(b.rows, b.width, b.trained) + cal.update_seconds
        m = per_step / r["samples_per_s"]
        print(f"step {r['step']:2d}: {b.rows} rows x {b.width} tokens, {b.trained:4d} trained: "
              f"predicted {p:.3f} s, measured {m:.3f} s, {p / m - 1:+.1%}")
        if r["step"] > 1:
            predicted.append(p)
            measured.append(m)
    p, m = sum(predicted) / len(predicted), sum(measured) / len(measured)
    print(f"steps 2-{len(predicted) + 1}: predicted {p:.3f} s, measured {m:.3f} s, {p / m - 1:+.1%}")


if __name__ == "__main__":
    main()
