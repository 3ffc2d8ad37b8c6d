"""The planner's measurements: a few training steps of the run's own model, method and
precision on synthetic batches of chosen shapes, in a child process.

    python -m lmtune.plan.probe < spec.json > result.json

The child builds the model exactly as `lmtune train` does (`prepare.build_model`), with the
same optimizer, distribution strategy (one process) and task loss, so what it measures is
what training holds: the memory the model and the optimizer's state add, and for each
batch shape the seconds of a step (forward + backward, and the optimizer update apart), of a
forward pass alone (evaluation), and the memory a step adds on top of the rest. Times are
means of a few repeats after a warm-up step, taken in rounds over the shapes, as a run's log
reports the mean of its steps of changing shapes (the fastest repeat would predict a step a
few percent short).

It runs in its own process because peak memory can only be read per process, and so the
planner's own process never holds the weights. Step memory is measured after the timings,
each shape from a trimmed heap (`runtime.release_free_memory`) and a reset peak: then the
memory a step adds is what it allocates, not what earlier shapes left behind. Then the
shapes run mixed, as a run's batches do, for what the heap keeps between them. It also
times the steps a warm process does not show, which a short run's mean step holds: each
shape's first (its kernels are built then), a run's second and third, and the two after a
validation pass (`time_after_validation`). Last, it writes a checkpoint and the model dir
as a run does, timed: with the seconds the process took to reach the model's loading (its
imports and the memory guard), the parts of a run's time that are not steps, evaluation or
tokenizing. It reports its progress on stderr as it goes (`PROGRESS`), for the planner's
progress bar.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import fmean as mean
from types import SimpleNamespace

IMPORTED = time.perf_counter()
# A line on stderr that starts with this is the probe's progress: "total N" once, then "+1"
# after each step, forward pass or save (`calibrate.run_probe` draws them as a bar).
PROGRESS = "lmtune-probe-progress "


def report(what: str) -> None:
    print(f"{PROGRESS}{what}", file=sys.stderr, flush=True)


def rss_mb(field: str = "VmRSS") -> float:
    """The process's resident memory (VmRSS) or its peak since the last reset (VmHWM);
    without Linux's /proc, the peak so far (an upper bound of either)."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    from lmtune.runtime import peak_memory_mb

    return peak_memory_mb()


def process_seconds() -> float:
    """Seconds since this process started (Linux's /proc, to a clock tick); elsewhere since
    this module was imported, which misses the imports before it."""
    try:
        with open("/proc/self/stat", encoding="utf-8") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime", encoding="utf-8") as f:
            return float(f.read().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - IMPORTED


def memory_mb() -> float:
    """What the planner counts: allocated memory on a GPU, else the process's RSS."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.memory_allocated() / 2**20
    return rss_mb()


def reset_peak() -> None:
    """Start the peak again from now: the GPU's peak allocated, or VmHWM from the current
    RSS (Linux: clear_refs 5)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
        f.write("5")


def peak_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return rss_mb("VmHWM")


# The order `mixed_steps` runs the first six shapes in (`probe_points` puts them first).
MIXED = (0, 4, 1, 5, 3, 2, 0, 3, 4, 1, 5, 2)


def mixed_steps(step, points: list[tuple]) -> float:
    """The memory steps of changing shapes add, as a run's length-grouped batches come: the
    heap keeps what one shape freed where the next cannot always reuse it, so a run's peak
    is above its largest single step by a factor this measures."""
    from lmtune import runtime

    order = [points[i] for i in MIXED if i < len(points)]
    runtime.release_free_memory()
    before = memory_mb()
    reset_peak()
    for p in order:
        step(p)
    return peak_mb() - before


class _Probe:
    """The run's model, optimizer and strategy, built as `lmtune train` builds them, and the
    measurements taken of them (`out`, the probe's answer)."""

    def __init__(self, cfg, task, spec: dict, precision: str):
        from lmtune import runtime
        from lmtune.distributed import make_strategy
        from lmtune.methods import get_method
        from lmtune.models.load import load_tokenizer
        from lmtune.optim import build_optimizer
        from lmtune.plan.shape import model_shape
        from lmtune.prepare import build_model

        self.task, self.out = task, {}
        self.autocast = lambda: runtime.autocast(precision)  # the run's mixed precision
        self.tokenizer = load_tokenizer(spec["model_path"], cfg.trust_remote_code)
        # What the model's libraries add is the planner's base (it builds the model on the
        # meta device before predicting, as training does before loading), not the model's.
        model_shape(cfg, task, spec["model_path"], spec["label_names"], precision)
        # A training process gets this far (its imports, the memory guard) before it loads.
        self.out["start_seconds"] = process_seconds()
        self.out["before_model_mb"] = memory_mb()
        began = time.perf_counter()
        kwargs = task.model_kwargs(SimpleNamespace(label_names=spec["label_names"]))
        model = build_model(cfg, task, spec["model_path"], precision, kwargs)
        self.out["load_seconds"] = time.perf_counter() - began
        self.out["loaded_mb"] = memory_mb()  # with what loading left in the heap, as in a run
        runtime.release_free_memory()
        self.loaded_mb = memory_mb()
        method = get_method(cfg.method)
        self.strategy = make_strategy(cfg.train, precision)
        optimizer = build_optimizer(model, cfg.train,
                                    method.lr_scale(cfg) if method.lr_scale else None)
        self.model = self.strategy.wrap(model, optimizer)
        self.model.train()
        self.vocab = self.model.get_input_embeddings().num_embeddings
        self.pad = self.tokenizer.pad_token_id or 0
        self.labels = max(1, len(spec["label_names"] or []))

    def batch(self, b: int, w: int, trained: int):
        rows = self.task.synthetic_rows(b, w, trained, self.vocab, self.labels)
        idx = list(range(b))
        return (self.task.batch(rows, idx, self.pad, self.strategy.device),
                self.task.trained_tokens(rows, idx))

    def step(self, data) -> tuple[float, float]:
        """Seconds of forward + backward, and of the optimizer's update."""
        began = time.perf_counter()
        loss, _ = self.task.loss_and_stats(self.model, data, self.autocast)
        self.strategy.backward(loss)  # the work of a training step, its log figures included
        middle = time.perf_counter()
        self.strategy.step()
        done = time.perf_counter()
        report("+1")
        return middle - began, done - middle

    def forward(self, data) -> float:
        import torch

        began = time.perf_counter()
        self.model.eval()
        with torch.inference_mode():
            self.task.loss_sum(self.model, data, self.autocast)
        self.model.train()
        seconds = time.perf_counter() - began
        report("+1")
        return seconds

    def first_update(self, point: tuple) -> None:
        """The optimizer's state exists from the first update on: what it adds."""
        from lmtune import runtime

        data = self.batch(*point)[0]
        self.step(data)
        runtime.release_free_memory()  # the step's freed memory is not the model's
        self.out["optimizer_mb"] = memory_mb() - self.loaded_mb  # AdamW's moments, kernels
        # A run's second and third steps, still slower than later ones (the process's heap
        # and kernels are not settled yet).
        self.out["early_steps"] = [sum(self.step(data)) for _ in range(2)]

    def time_after_validation(self, points: list[tuple]) -> None:
        """The two steps after a validation pass, and three before it, all of the first
        shape: the pass leaves the process cold (a copy of the trainable weights kept as
        the best ones, forward passes of other shapes, evaluation's heap trims), and the
        steps after it fault their memory back in."""
        from lmtune import runtime

        data = self.batch(*points[0])[0]
        self.out["before_validation_steps"] = [sum(self.step(data)) for _ in range(3)]
        best = self.strategy.trainable_state()  # noqa: F841 - held, as a run holds it
        for p in points[1:3]:
            runtime.release_free_memory()
            self.forward(self.batch(*p)[0])
        self.out["after_validation_steps"] = [sum(self.step(data)) for _ in range(2)]

    def distinct(self, points: list[tuple]) -> list[tuple]:
        """The shapes to time: one that repeats an earlier one is left out (a task without
        a language-model loss trains no fraction of a row, so both fractions are one)."""
        seen, out = set(), []
        for p in points:
            key = (p[0], p[1], self.batch(*p)[1])
            if key not in seen:
                seen.add(key)
                out.append(p)
        return out

    def time_points(self, timed: list[tuple], repeats: int) -> None:
        """Each shape's step, update and forward seconds (means of `repeats` steps and two
        forward passes after a warm-up step), and the warm-up step's own (a shape's first
        step builds its kernels). The repeats go round the shapes, as a run's batches
        change shape every step: a slow spell of a shared host then slows every shape a
        little rather than one shape much, which would bend the fit."""
        self.out["points"], batches = [], []
        for p in timed:
            data, trained = self.batch(*p)
            batches.append(data)
            self.out["points"].append({"rows": p[0], "width": p[1], "trained": trained,
                                       "first_seconds": sum(self.step(data))})
        steps = [[self.step(data) for data in batches] for _ in range(repeats)]
        passes = [[self.forward(data) for data in batches] for _ in range(2)]
        for i, row in enumerate(self.out["points"]):
            row["backward_seconds"] = mean(r[i][0] for r in steps)
            row["update_seconds"] = mean(r[i][1] for r in steps)
            row["forward_seconds"] = mean(r[i] for r in passes)

    def measure_memory(self, timed: list[tuple], points: list[tuple]) -> None:
        """The memory each timed shape's step adds, each from a trimmed heap, then that of
        the shapes mixed."""
        from lmtune import runtime

        for row, p in zip(self.out["points"], timed):
            data = self.batch(*p)[0]
            runtime.release_free_memory()  # what earlier shapes left in the heap goes back
            before = memory_mb()
            reset_peak()
            self.step(data)
            row["step_mb"] = peak_mb() - before
        self.out["mixed_step_mb"] = mixed_steps(lambda p: self.step(self.batch(*p)[0]),
                                                points)

    def time_saves(self, near: Path) -> None:
        """Seconds of one checkpoint (the trainable weights and the optimizer's state,
        synced to disk) and of the final model dir, written as a run writes them, in a
        temporary dir beside the run's output (the same disk)."""
        from lmtune import checkpoint, rundir
        from lmtune.models.io import save_model

        with tempfile.TemporaryDirectory(dir=near, prefix=".lmtune-probe-") as tmp:
            began = time.perf_counter()
            self.strategy.save_checkpoint(Path(tmp) / "checkpoints", 1, None, scheduler={},
                                          method=None, rngs=[checkpoint.rng_state()],
                                          progress={}, keep=1, best_step=None)
            middle = time.perf_counter()
            report("+1")
            weights = self.strategy.full_state()
            rundir.atomic_save_dir(Path(tmp) / "model", lambda p: save_model(
                self.strategy.module, self.tokenizer, p, weights))
            self.out["checkpoint_seconds"] = middle - began
            self.out["save_seconds"] = time.perf_counter() - middle
        report("+1")


def probe_steps(timed: int, points: int, repeats: int) -> int:
    """How many steps, forward passes and saves `main` runs (the progress bar's length):
    the first update and two more; each timed shape's first step, repeats and two forward
    passes; three steps, up to two passes and two steps around a validation; each timed
    shape's step again and the mixed ones for memory; a checkpoint and the model dir."""
    return (3 + timed * (3 + repeats) + 3 + min(2, points - 1) + 2
            + timed + sum(i < points for i in MIXED) + 2)


def existing_parent(path: str) -> Path:
    """The nearest directory of `path` (itself or an ancestor) that exists."""
    where = Path(path).resolve()
    while not where.is_dir():
        where = where.parent
    return where


def main() -> int:
    spec = json.load(sys.stdin)
    # The answer is the only thing on stdout: whatever the libraries print while the probe
    # works (DeepSpeed's import, when saving imports it, logs there) goes to stderr.
    answer = os.fdopen(os.dup(1), "w")
    sys.stdout.flush()
    os.dup2(2, 1)
    from lmtune import runtime

    runtime.configure_process()
    import lmtune.train  # noqa: F401 - everything a training process imports
    from lmtune.config import Config
    from lmtune.tasks import get_task
    from lmtune.typed_yaml import build

    cfg = build(Config, spec["config"], "", {})
    task = get_task(cfg.task).for_run(cfg)
    precision = runtime.resolve_precision(cfg.train.precision)
    runtime.seed_everything(cfg.seed)
    with runtime.threads(cfg.train.threads or runtime.default_threads()):
        probe = _Probe(cfg, task, spec, precision)
        points = [tuple(p) for p in spec["points"]]
        timed, repeats = probe.distinct(points), spec.get("repeats", 3)
        report(f"total {probe_steps(len(timed), len(points), repeats)}")
        probe.first_update(points[0])
        probe.time_points(timed, repeats)
        probe.time_after_validation(points)
        probe.measure_memory(timed, points)
        probe.time_saves(existing_parent(cfg.output_dir))
    sys.stdout.flush()
    json.dump(probe.out, answer)
    answer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
