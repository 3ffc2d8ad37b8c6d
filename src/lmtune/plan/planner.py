"""`lmtune plan`: for each candidate method, the predicted peak memory, seconds per step,
whole-run time and checkpoint size of the configured run on this machine, and which method
to use.

    config → the data, tokenized as training tokenizes it (and cached for it)
           → per method: parameters (meta device), a calibration (measured once, cached)
           → the run's own batches through the fitted model (plan/model.py)
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace

from tqdm.auto import tqdm

from lmtune import runtime
from lmtune.config import Config
from lmtune.data.collate import Encoded
from lmtune.errors import LmtuneError
from lmtune.plan.calibrate import cached, calibrate
from lmtune.plan.probe import memory_mb
from lmtune.plan.model import Batch, Calibration, eval_shapes, train_batches
from lmtune.plan.shape import MB, ModelShape, analytic_mb, available_mb, model_shape


@dataclass
class Row:
    method: str
    trainable_params: int
    peak_memory_mb: float
    seconds_per_step: float | None  # None: not measured on this machine yet
    total_seconds: float | None
    checkpoint_mb: float
    fits: bool
    calibrated: bool


@dataclass
class RunShape:
    """The configured run, counted once for every method: its batches and passes."""

    rows: int  # training rows
    batches: list[Batch]  # the micro-batches of the first epoch (a shorter run: its own)
    steps: int
    validations: int
    checkpoints: int
    val: list[Batch]
    test: list[Batch]
    base_mb: float  # the process once the data is read and tokenized (RSS; GPU: allocated)
    peak_so_far_mb: float  # and its peak until then (reading and tokenizing)
    tokenize_seconds: float
    max_width: int


def run_shape(cfg: Config, task, data: dict[str, Encoded], world: int,
              tokenize_seconds: float) -> RunShape:
    from lmtune.prepare import count_steps

    tc = cfg.train
    batches = train_batches(task, data["train"], tc.batch_size, cfg.seed, tc.group_by_length)
    per_epoch, steps = count_steps(cfg, len(data["train"]), world, note=False)
    if steps < per_epoch:  # a short run meets only its first batches
        batches = batches[:steps * tc.grad_accum * world]
    every = tc.eval_every
    validations = steps // every + (steps % every > 0) if every else math.ceil(steps / per_epoch)
    split = lambda name: eval_shapes(task, data[name], cfg.eval.batch_size) \
        if name in data else []  # noqa: E731
    return RunShape(len(data["train"]), batches, steps, validations,
                    checkpoints(steps, per_epoch, tc.checkpoint_every), split("validation"),
                    split("test"),
                    memory_mb(), runtime.peak_memory_mb(), tokenize_seconds,
                    max(b.width for b in batches))


def first_of_shapes(batches: list[Batch], seconds: list[float]) -> float:
    """The summed `seconds` of each batch shape's first batch, but the run's first batch
    (its first step is not a warm one anyway)."""
    firsts = {}
    for b, s in zip(batches, seconds):
        firsts.setdefault((b.rows, b.width), s)
    return sum(firsts.values()) - seconds[0]


def checkpoints(steps: int, per_epoch: int, every: int) -> int:
    """How many checkpoints a run of `steps` writes: one at each epoch's end and at the last
    step, and one every `every` steps (0: none) where no epoch ends."""
    at = set(range(per_epoch, steps, per_epoch)) | {steps}
    return len(at | set(range(every, steps + 1, every) if every else ()))


def predict(cfg: Config, run: RunShape, shape: ModelShape, cal: Calibration | None,
            available: float) -> Row:
    """One method's row: measured coefficients where a calibration exists, else the
    parameter count with fixed per-token sizes (memory only)."""
    best_mb = 4 * shape.trainable / MB  # the copy of the best weights, kept from validation on
    # A checkpoint copies the trainable weights and serializes each file in memory first
    # (safetensors): twice their size, while the optimizer state and that copy are held.
    save_mb = 8 * shape.trainable / MB
    if cal is not None:
        step_mb = cal.mixing * max(cal.step_mb(b.rows, b.width, b.trained)
                                   for b in run.batches)
        model_mb = cal.model_mb
    else:
        models, steps = zip(*(analytic_mb(shape, b.rows, b.width, b.trained)
                              for b in run.batches))
        model_mb, step_mb = models[0], max(steps)
    # The process as it holds the data and the libraries this method's model needs: those
    # are imported by now (`model_shape` built the model on the meta device), as they are in
    # a training process before its weights load; the probe measures from the same point.
    base_mb = max(run.base_mb, memory_mb())
    peak = max(run.peak_so_far_mb, base_mb + model_mb + best_mb + max(step_mb, save_mb))
    seconds = total = None
    if cal is not None:
        accum = cfg.train.grad_accum
        per_batch = [cal.backward(b.rows, b.width, b.trained) for b in run.batches]
        steps_in_epoch = max(1, math.ceil(len(per_batch) / accum))
        seconds = sum(per_batch) / steps_in_epoch + cal.update_seconds
        # Steps 2-3, the two after each validation but the last, and the first of each
        # batch shape after the first step's are slower (a cold process, new kernels):
        # spread over the run's steps, as its mean step holds them.
        followed = max(0, run.validations - 1) if run.val else 0  # no split: no passes
        cold = (cal.early_seconds + followed * cal.after_validation_seconds
                + cal.new_shape_share * first_of_shapes(run.batches, per_batch))
        seconds += cold / max(1, run.steps - 1)
        passes = sum(cal.forward(b.rows, b.width, b.trained) for b in run.val)
        test = sum(cal.forward(b.rows, b.width, b.trained) for b in run.test)
        total = (cal.start_seconds + run.tokenize_seconds + cal.load_seconds
                 + run.steps * seconds + run.validations * passes + test
                 + run.checkpoints * cal.checkpoint_seconds + cal.save_seconds)
    adapter_mb = 12 * shape.trainable / MB  # weights and AdamW's two moments
    return Row(cfg.method, shape.trainable, peak, seconds, total, adapter_mb,
               peak <= available, cal is not None)


def candidates(cfg: Config) -> list[str]:
    """The methods compared by default: full, the main adapters and the cheap ones, where
    they suit the task."""
    out = []
    for name in ("full", "lora", "dora", "ia3", "freeze", "bitfit"):
        try:
            method_config(cfg, name)
        except LmtuneError:  # the method's own checks refuse this task or model
            continue
        out.append(name)
    return out


def recommend(rows: list[Row], available: float) -> tuple[str | None, str]:
    """The method to use, and why: full fine-tuning where it fits with a fifth of the memory
    to spare (it trains every weight); else the fitting adapter of least memory."""
    fits = [r for r in rows if r.fits]
    if not fits:
        return None, (f"no method fits in {available:,.0f} MB; lower train.batch_size (with "
                      "train.grad_accum to keep the effective batch), set "
                      "train.gradient_checkpointing=true or a shorter train.max_length")
    widest = max(fits, key=lambda r: r.trainable_params)  # trains the most weights
    if widest.peak_memory_mb <= 0.8 * available:
        return widest.method, (f"{widest.method} fits with "
                               f"{available - widest.peak_memory_mb:,.0f} MB to spare and "
                               "trains the most weights")
    best = min(fits, key=lambda r: (r.peak_memory_mb, r.total_seconds or 0))
    return best.method, (f"{best.method} needs the least memory of the methods that fit "
                         f"({best.peak_memory_mb:,.0f} of {available:,.0f} MB)")


def plan_rows(cfg: Config, task, data: dict[str, Encoded], model_path: str,
              label_names: list[str] | None, methods: list[str], measure: bool,
              tokenize_seconds: float, say=print, progress: bool = False) -> dict:
    """The plan as `--json` writes it; `progress`: a bar while a method is measured."""
    precision = runtime.resolve_precision(cfg.train.precision)
    run = run_shape(cfg, task, data, 1, tokenize_seconds)
    available = available_mb()
    rows = []
    for name in methods:
        mcfg = method_config(cfg, name)
        try:
            shape = model_shape(mcfg, task, model_path, label_names, precision)
        except LmtuneError as e:  # the method does not suit this model (bitfit on Llama)
            say(f"plan: {name} left out: {e}")
            continue
        cal = None if measure else cached(mcfg, model_path, len(label_names or []))
        if cal is None:
            model_mb, step = analytic_mb(shape, 2, 128, 128)
            if run.base_mb + model_mb + step > available:  # nothing that could be measured
                say(f"plan: {name}: the model alone needs about {model_mb:,.0f} MB; not "
                    "measured")
            else:
                say(f"plan: measuring {name} on this machine (once; kept for later plans)")
                began = time.perf_counter()
                with tqdm(desc=f"measuring {name}", unit="step", dynamic_ncols=True,
                          mininterval=runtime.bar_interval(),
                          disable=not progress) as bar:
                    cal = calibrate(mcfg, model_path, label_names, shape.total,
                                    shape.positions, bar)
                say(f"plan: measured {name} in {time.perf_counter() - began:.0f} s")
        rows.append(predict(mcfg, run, shape, cal, available))
    if not rows:
        raise LmtuneError("plan: none of the methods suits this model")
    chosen, why = recommend(rows, available)
    return {"hardware": runtime.environment() | {"available_mb": round(available),
                                                  "precision": precision},
            "run": {"steps": run.steps, "validations": run.validations,
                    "checkpoints": run.checkpoints, "train_rows": run.rows,
                    "batch_size": cfg.train.batch_size, "longest_batch_width": run.max_width,
                    "process_mb": round(run.base_mb, 1),
                    "tokenize_seconds": round(run.tokenize_seconds, 2)},
            "rows": [asdict(r) for r in rows], "recommended": chosen, "why": why}


def method_config(cfg: Config, method: str) -> Config:
    """`cfg` with another method (its own default learning rate, the rest kept)."""
    from lmtune.methods import get_method

    if get_method(method) is get_method(cfg.method):  # the run's own settings stay
        return cfg
    train = replace(cfg.train, lr=get_method(method).default_lr)  # unknown: a clear error
    return replace(cfg, method=method, train=train, quantize="none")
