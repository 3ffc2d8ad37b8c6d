"""How close is `lmtune plan` to what `lmtune train` then measures? For each configuration:
the planner's prediction (its calibration measured on small shapes of its own, once per
model and method) beside a real run of `lmtune train` (16 steps, one validation in the
middle), and the same prediction without a calibration (weights, optimizer state and fixed
per-token sizes: what estimators that do not measure give).

    .venv/bin/python bench/plan.py              # every configuration below
    .venv/bin/python bench/plan.py --only minilm
    .venv/bin/python bench/plan.py --fresh      # each calibration measured just before its run
    .venv/bin/python bench/plan.py --default-job    # the whole default job, about 12 min
    .venv/bin/python bench/plan.py --only "minilm full b32" --repeat 6   # the host's noise

The configurations differ from the calibration shapes (widths 16-256, at most 32 MiniLM rows
or 4 SmolLM2 rows, synthetic tokens) in batch size, data lengths and method. Peak memory is
the training process's peak RSS (CPU); seconds per step is one optimizer step of training,
validation excluded, as metrics.jsonl measures it (the mean of steps 2-16). The last column
splits that error into the steps before validation and after it: far apart, the machine's
speed changed during the run (its per-batch predictions leave out the planner's extra for
the cold steps after the start and after validation, which the main column holds). The last
line holds the mean absolute errors as key=value pairs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

MINILM = ["task=classify", "model=minilm", "data.train=rotten_tomatoes"]
SMOLLM2 = ["task=sft", "model=smollm2", "data.train=aclsum", "data.drop_unlearnable=true",
           "lora.dropout=0.05"]
CONFIGS = [
    ("minilm full b32", MINILM + ["method=full"]),
    ("minilm full b16", MINILM + ["method=full", "train.batch_size=16"]),
    ("minilm full b64", MINILM + ["method=full", "train.batch_size=64"]),
    ("minilm full b32 len32", MINILM + ["method=full", "train.max_length=32"]),
    ("minilm lora b32", MINILM + ["method=lora"]),
    ("minilm lora b64", MINILM + ["method=lora", "train.batch_size=64"]),
    ("minilm freeze b32", MINILM + ["method=freeze"]),
    ("minilm bitfit b32", MINILM + ["method=bitfit"]),
    ("minilm ia3 b16", MINILM + ["method=ia3", "train.batch_size=16"]),
    ("smollm2 lora b2 len256", SMOLLM2 + ["method=lora", "train.batch_size=2",
                                          "train.max_length=256"]),
    ("smollm2 lora b4 len128", SMOLLM2 + ["method=lora", "train.batch_size=4",
                                          "train.max_length=128"]),
    ("smollm2 full b2 len128", SMOLLM2 + ["method=full", "train.batch_size=2",
                                          "train.max_length=128"]),
]


def encoded(cfg):
    """The configuration's task, its training data tokenized as `lmtune train` does, the
    model's directory and the label names."""
    from lmtune.models.load import load_model_config, load_tokenizer, resolve_model
    from lmtune.prepare import encode_or_cached
    from lmtune.tasks import get_task

    task = get_task(cfg.task).for_run(cfg)
    raw = task.read(cfg)
    path = resolve_model(cfg.model, cfg.cache_dir)
    data, _, _ = encode_or_cached(cfg, task, raw, load_tokenizer(path, False),
                                  load_model_config(path, False), path)
    return task, data, str(path), task.label_names(raw)


def uncalibrated_peak(cfg, enc) -> float:
    """The same prediction with no calibration (plan/shape.analytic_mb); `enc`: `encoded`."""
    from lmtune.plan.planner import predict, run_shape
    from lmtune.plan.shape import available_mb, model_shape
    from lmtune.runtime import resolve_precision

    task, data, path, labels = enc
    shape = model_shape(cfg, task, path, labels, resolve_precision(cfg.train.precision))
    return predict(cfg, run_shape(cfg, task, data, 1, 0.0), shape, None,
                   available_mb()).peak_memory_mb


def step_predictions(cfg, enc, cal) -> tuple[list, list[float]]:
    """The run's own steps (one micro-batch each) and the planner's seconds for each, in
    order, from the calibration `cal`; `enc`: `encoded`."""
    from lmtune.plan.model import train_batches

    assert cfg.train.grad_accum == 1, "a step's log row cannot be split by micro-batch"
    task, data, _, _ = enc
    batches = train_batches(task, data["train"], cfg.train.batch_size, cfg.seed,
                            cfg.train.group_by_length)
    return batches, [cal.backward(b.rows, b.width, b.trained) + cal.update_seconds
                     for b in batches]


def halves(predicted: list[float], measured: list[float]) -> str:
    """The time error over steps 2-8 and over 9-16 (validation runs between them): apart
    by much more than the whole run's error, the machine's speed moved during the run."""
    def err(a, b):
        return sum(predicted[a:b]) / sum(measured[a:b]) - 1

    return f"{err(1, 8):+.1%} / {err(8, len(measured)):+.1%}"


def default_job() -> None:
    """The whole default job's time, predicted by `lmtune plan` and measured by running
    `lmtune train` (wall clock of the command, Python's start included)."""
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        plan = Path(tmp) / "plan.json"
        subprocess.run([sys.executable, "-m", "lmtune", "plan", "--methods", "full",
                        "--json", str(plan)], check=True, capture_output=True)
        predicted = json.loads(plan.read_text())["rows"][0]["total_seconds"]
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lmtune", "train", "--quiet",
                        f"output_dir={tmp}/run"], check=True, capture_output=True)
        measured = time.perf_counter() - began
    print(f"| the default job (`lmtune train`), whole run | {predicted:,.0f} s predicted | "
          f"{measured:,.0f} s measured | {predicted / measured - 1:+.1%} |")
    print(f"default_job_predicted={predicted:.1f} default_job_measured={measured:.1f}")


def repeated(name: str, runs: int) -> None:
    """One configuration, one fresh calibration, then `runs` runs of `lmtune train` back to
    back: how far the same run's measured step time moves between minutes on this host,
    the floor under any prediction's error."""
    from lmtune.config import load_config
    from lmtune.plan.calibrate import calibration_path
    from lmtune.plan.command import make_plan
    from lmtune.plan.measure import measure_run

    cfg = load_config(None, dict(CONFIGS)[name] + ["output_dir=runs/bench-plan"])
    enc = encoded(cfg)
    calibration_path(cfg, enc[2], len(enc[3] or [])).unlink(missing_ok=True)
    make_plan(cfg, [cfg.method])
    print("| configuration | run | at | s/step predicted | measured | error |")
    print("|---|---|---|---|---|---|")
    measured = []
    for i in range(runs):
        m = measure_run(cfg)
        if "error" in m:
            sys.exit(f"{name}: {m['error']}")
        measured.append(m["seconds_per_step"])
        print(f"| {name} | run {i + 1} | {time.strftime('%H:%M:%S')} | "
              f"{m['predicted_seconds']:.3f} | {m['seconds_per_step']:.3f} | "
              f"{m['time_error']:+.1%} |", flush=True)
    print(f"runs={runs} slowest_over_fastest={max(measured) / min(measured) - 1:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", help="run the configurations whose name holds this")
    ap.add_argument("--default-job", action="store_true", help="instead: the default job's "
                    "whole time, predicted and measured")
    ap.add_argument("--fresh", action="store_true", help="measure each configuration's "
                    "calibration again just before its run (the two minutes apart, so the "
                    "host's drift in speed between them is small)")
    ap.add_argument("--repeat", metavar="N", type=int, help="with --only: one calibration, "
                    "then N runs of the first matching configuration back to back (how much "
                    "the host's speed alone moves a measurement)")
    args = ap.parse_args()
    if args.default_job:
        return default_job()
    if args.repeat:
        names = [n for n, _ in CONFIGS if args.only and args.only in n]
        if not names:
            ap.error("--repeat needs --only with part of a configuration's name")
        return repeated(names[0], args.repeat)
    from lmtune.config import load_config
    from lmtune.plan.calibrate import cached, calibration_path
    from lmtune.plan.command import make_plan
    from lmtune.plan.measure import measure_run
    from lmtune.runtime import environment

    env = environment()
    print(f"host: {env['cpu']}, {env['cores']} cores, bf16={env['bf16']}; torch "
          f"{env['torch']}, transformers {env['transformers']}; {time.strftime('%Y-%m-%d %H:%M')}")
    print("| configuration | peak MB predicted | measured | error | uncalibrated | error | "
          "s/step predicted | measured | error | steps 2-8 / 9-16 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    mem, sec, raw = [], [], []
    for name, overrides in CONFIGS:
        if args.only and args.only not in name:
            continue
        cfg = load_config(None, overrides + ["output_dir=runs/bench-plan"])
        enc = encoded(cfg)
        labels = len(enc[3] or [])
        if args.fresh:
            calibration_path(cfg, enc[2], labels).unlink(missing_ok=True)
        make_plan(cfg, [cfg.method])  # calibrates once per model and method
        m = measure_run(cfg)
        if "error" in m:
            sys.exit(f"{name}: {m['error']}")
        flat = uncalibrated_peak(cfg, enc)
        predicted = step_predictions(cfg, enc, cached(cfg, enc[2], labels))[1]
        flat_err = flat / m["peak_memory_mb"] - 1
        mem.append(abs(m["memory_error"]))
        sec.append(abs(m["time_error"]))
        raw.append(abs(flat_err))
        print(f"| {name} | {m['predicted_peak_mb']:,.0f} | {m['peak_memory_mb']:,.0f} | "
              f"{m['memory_error']:+.1%} | {flat:,.0f} | {flat_err:+.1%} | "
              f"{m['predicted_seconds']:.3f} | {m['seconds_per_step']:.3f} | "
              f"{m['time_error']:+.1%} | "
              f"{halves(predicted, m['step_seconds'])} |", flush=True)
    print(f"memory_mae={statistics.mean(mem):.3f} memory_max={max(mem):.3f} "
          f"time_mae={statistics.mean(sec):.3f} time_max={max(sec):.3f} "
          f"uncalibrated_memory_mae={statistics.mean(raw):.3f} rows={len(mem)}")


if __name__ == "__main__":
    main()
