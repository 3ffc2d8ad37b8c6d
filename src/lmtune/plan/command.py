"""`lmtune plan [CONFIG] [key=value ...] [--methods a,b] [--json FILE] [--measure]`."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from lmtune.config import Config


def add_plan_command(sub, fmt) -> None:
    p = sub.add_parser("plan", help="which method, and will it fit: predicted memory and time "
                       "of a run for each method, measured on this machine", formatter_class=fmt,
                       description="Predict peak memory, seconds per step and the whole run's "
                       "time for each method, before training. Takes the config `lmtune train` "
                       "takes. Examples:\n  lmtune plan\n  lmtune plan configs/sft_aclsum.yaml "
                       "--methods lora,full --json plan.json")
    p.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value]",
                   help="the config `lmtune train` would take")
    p.add_argument("--methods", help="comma-separated methods to compare (default: full, lora, "
                   "dora, ia3, freeze, bitfit where they suit the task)")
    p.add_argument("--json", dest="json_path", help="write the plan to this file")
    p.add_argument("--measure", action="store_true", help="measure every method again (the "
                   "short calibration), then train a few real steps of each and print "
                   "predicted and measured side by side")


def cmd_plan(args, cfg: Config) -> int:
    from lmtune.plan.measure import measure_rows
    from lmtune.plan.planner import candidates, method_config
    from lmtune.rundir import atomic_write_json

    methods = args.methods.split(",") if args.methods else candidates(cfg)
    for name in methods:
        method_config(cfg, name)  # an unknown or unsuitable method stops here
    plan = make_plan(cfg, methods, args.measure, progress=True)
    print(format_plan(plan))
    if args.measure:
        plan["measured"] = measure_rows(cfg, methods, plan)
        print(format_measured(plan))
    if args.json_path:
        atomic_write_json(Path(args.json_path), plan)
        print(f"wrote {args.json_path}")
    return 0


def make_plan(cfg: Config, methods: list[str], measure: bool = False,
              progress: bool = False) -> dict:
    """Read and tokenize the data as `lmtune train` would (kept in the tokenized-data cache
    for it), then plan each method (`progress`: a bar while one is measured)."""
    from lmtune.models.load import load_model_config, load_tokenizer, resolve_model
    from lmtune.plan.planner import plan_rows
    from lmtune.prepare import encode_or_cached, fit_positions, sample_validation
    from lmtune.tasks import get_task

    began = time.perf_counter()
    task = get_task(cfg.task).for_run(cfg)
    raw = task.read(cfg)
    model_path = resolve_model(cfg.model, cfg.cache_dir)
    fit_positions(cfg, model_path)
    tokenizer = load_tokenizer(model_path, cfg.trust_remote_code)
    config = load_model_config(model_path, cfg.trust_remote_code)
    data, _, _ = encode_or_cached(cfg, task, raw, tokenizer, config, model_path)
    if cfg.data.cache:  # the run itself reads the cache entry made here: time that instead
        read = time.perf_counter()
        task.read(cfg)
        data, _, _ = encode_or_cached(cfg, task, raw, tokenizer, config, model_path)
        seconds = time.perf_counter() - read
    else:
        seconds = time.perf_counter() - began
    data = sample_validation(data, cfg.eval.max_samples, cfg.seed)
    say = lambda line: print(line, file=sys.stderr)  # noqa: E731
    return plan_rows(cfg, task, data, model_path, task.label_names(raw), methods, measure,
                     seconds, say, progress)


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_plan(plan: dict) -> str:
    hw, run = plan["hardware"], plan["run"]
    head = (f"{hw['cpu']}, {hw['cores']} cores, {hw['precision']}; {hw['available_mb']:,} MB "
            f"available\n{run['train_rows']:,} training rows, {run['steps']} steps of "
            f"{run['batch_size']}, {run['validations']} validation passes, "
            f"{run['checkpoints']} checkpoints; longest batch "
            f"{run['longest_batch_width']} tokens wide\n")
    cols = ("method", "trainable", "peak MB", "s/step", "total", "checkpoint MB", "fits")
    lines = [cols]
    for r in plan["rows"]:
        total = r["total_seconds"]
        lines.append((r["method"], f"{r['trainable_params']:,}",
                      _num(r["peak_memory_mb"], ",.0f") + ("" if r["calibrated"] else "*"),
                      _num(r["seconds_per_step"], ".3f"),
                      "-" if total is None else f"{total / 60:.1f} min",
                      _num(r["checkpoint_mb"], ",.1f"), "yes" if r["fits"] else "NO"))
    widths = [max(len(str(x[i])) for x in lines) for i in range(len(cols))]
    table = "\n".join("  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in lines)
    notes = "\n* not measured: weights and optimizer state plus fixed per-token sizes" \
        if any(not r["calibrated"] for r in plan["rows"]) else ""
    pick = plan["recommended"] or "none"
    return f"{head}\n{table}{notes}\n\nrecommended: {pick}: {plan['why']}"


def format_measured(plan: dict) -> str:
    lines = ["", "predicted vs measured (a few real steps of `lmtune train`):"]
    for m in plan["measured"]:
        if "error" in m:
            lines.append(f"  {m['method']}: {m['error']}")
            continue
        lines.append(f"  {m['method']:<8} peak {m['predicted_peak_mb']:,.0f} vs "
                     f"{m['peak_memory_mb']:,.0f} MB ({m['memory_error']:+.0%}); step "
                     f"{m['predicted_seconds']:.3f} vs {m['seconds_per_step']:.3f} s "
                     f"({m['time_error']:+.0%})")
    return "\n".join(lines)

