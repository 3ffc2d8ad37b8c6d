"""The out-of-memory guard `lmtune train` runs once the data is tokenized and before the
weights are loaded: a run predicted not to fit stops at once, with the cheapest change that
would fit. `train.memory_guard=false` turns it off.

It predicts with this machine's calibration when `lmtune plan` made one, else from the
parameter count and fixed per-token sizes (`shape.analytic_mb`); it never loads weights and
never starts a measurement."""
from __future__ import annotations

from dataclasses import replace

from lmtune.config import Config
from lmtune.errors import LmtuneError
from lmtune.plan.calibrate import cached
from lmtune.plan.model import Batch, Calibration
from lmtune.plan.planner import RunShape, method_config, predict, run_shape
from lmtune.plan.shape import ModelShape, available_mb, model_shape


def guard(cfg: Config, task, data: dict, model_path: str, label_names: list[str] | None,
          precision: str, world: int) -> dict:
    """The run's predicted peak memory and step time (for summary.json); raises
    LmtuneError (exit 2) when the peak is predicted above the available memory."""
    run = run_shape(cfg, task, data, world, 0.0)
    available = available_mb()
    shape = model_shape(cfg, task, model_path, label_names, precision)
    cal = cached(cfg, model_path, len(label_names or []))
    row = predict(cfg, run, shape, cal, available)
    prediction = {"peak_memory_mb": round(row.peak_memory_mb, 1),
                  "seconds_per_step": row.seconds_per_step, "calibrated": row.calibrated,
                  "available_mb": round(available)}
    if row.fits or not cfg.train.memory_guard:
        return prediction
    longest = max(run.batches, key=lambda b: b.rows * b.width)
    advice = cheapest_fix(cfg, task, run, shape, cal, model_path, label_names, precision,
                          available)
    how = "" if row.calibrated else "; not measured here yet: `lmtune plan` measures it"
    raise LmtuneError(
        f"train: predicted peak memory {row.peak_memory_mb:,.0f} MB is more than the "
        f"{available:,.0f} MB available (method={cfg.method}, batches up to {longest.rows} "
        f"rows x {longest.width} tokens{how}). {advice}. To train anyway: "
        "train.memory_guard=false")


def cheapest_fix(cfg: Config, task, run: RunShape, shape: ModelShape,
                 cal: Calibration | None, model_path: str, label_names, precision: str,
                 available: float) -> str:
    """The first change, in order of what it costs the run, that is predicted to fit:
    smaller micro-batches with accumulation (the same effective batch), a shorter
    train.max_length, LoRA. Gradient checkpointing is named where none of these fits.
    Batch sizes and lengths leave the model and its calibration (`cal`) as they are: both
    are looked up once."""
    tc = cfg.train
    size = tc.batch_size // 2
    while size >= 1:
        small = replace(tc, batch_size=size, grad_accum=tc.grad_accum * tc.batch_size // size)
        c = replace(cfg, train=small)
        if predict(c, _rebatched(run, c, task), shape, cal, available).fits:
            return (f"train.batch_size={size} train.grad_accum={small.grad_accum} keeps the "
                    "effective batch and is predicted to fit")
        size //= 2
    length = tc.max_length // 2
    while length >= 32:
        if predict(cfg, _capped(run, length), shape, cal, available).fits:
            return f"train.max_length={length} is predicted to fit"
        length //= 2
    lora = method_config(cfg, "lora")  # the same run where it is lora already
    lora_shape = model_shape(lora, task, model_path, label_names, precision)
    lora_cal = cached(lora, model_path, len(label_names or []))
    if predict(lora, run, lora_shape, lora_cal, available).fits:
        return "method=lora is predicted to fit"
    return ("no single change is predicted to fit: combine a smaller train.batch_size, "
            "train.gradient_checkpointing=true and a shorter train.max_length, or use a "
            "smaller model")


def _rebatched(run: RunShape, cfg: Config, task) -> RunShape:
    """The same rows in batches of `cfg.train.batch_size` (widths of the longest rows kept)."""
    size = cfg.train.batch_size
    batches = [Batch(min(size, b.rows), b.width, b.trained * min(size, b.rows) // b.rows)
               for b in run.batches]
    return replace(run, batches=batches)


def _capped(run: RunShape, length: int) -> RunShape:
    return replace(run, batches=[Batch(b.rows, min(b.width, length), min(b.trained, b.rows
                                                                         * length))
                                 for b in run.batches])
