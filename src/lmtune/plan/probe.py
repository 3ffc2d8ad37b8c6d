"""The planner's measurements: a few training steps of the run's own model, method and
precision on synthetic batches of chosen shapes, in a child process.

    python -m lmtune.plan.probe < spec.json > result.json

The child builds the model exactly as `lmtune train` does (`prepare.build_model`), with the
same optimizer, distribution strategy (one process) and task loss, so what it measures is
what training holds: the memory the model and the optimizer's state add, and for each
batch shape the seconds of a step (forward + backward, and the optimizer update apart), of a
forward pass alone (evaluation), and the memory a step adds on top of the rest. Times are
means of a few repeats after a warm-up step, as a run's log reports the mean of its steps
(the fastest repeat would predict a step a few percent short).

It runs in its own process because peak memory can only be read per process, and so the
planner's own process never holds the weights. Step memory is measured after the timings,
each shape from a trimmed heap (`runtime.release_free_memory`) and a reset peak: then the
memory a step adds is what it allocates, not what earlier shapes left behind. Last, the
shapes run mixed, as a run's batches do, for what the heap keeps between them.
"""
from __future__ import annotations

import json
import sys
import time
from statistics import fmean as mean
from types import SimpleNamespace


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


def mixed_steps(step, points: list[tuple]) -> float:
    """The memory steps of changing shapes add, as a run's length-grouped batches come: the
    heap keeps what one shape freed where the next cannot always reuse it, so a run's peak
    is above its largest single step by a factor this measures."""
    from lmtune import runtime

    order = [points[i] for i in (0, 4, 1, 5, 3, 2, 0, 3, 4, 1, 5, 2) if i < len(points)]
    runtime.release_free_memory()
    before = memory_mb()
    reset_peak()
    for p in order:
        step(p)
    return peak_mb() - before


def main() -> int:
    spec = json.load(sys.stdin)
    from lmtune import runtime

    runtime.configure_process()
    import torch

    import lmtune.train  # noqa: F401 - everything a training process imports
    from lmtune.config import Config
    from lmtune.distributed import make_strategy
    from lmtune.methods import get_method
    from lmtune.models.load import load_tokenizer
    from lmtune.optim import build_optimizer
    from lmtune.plan.shape import model_shape
    from lmtune.prepare import build_model
    from lmtune.tasks import get_task
    from lmtune.typed_yaml import build

    cfg = build(Config, spec["config"], "", {})
    task = get_task(cfg.task).for_run(cfg)
    precision = runtime.resolve_precision(cfg.train.precision)
    runtime.seed_everything(cfg.seed)
    out: dict = {}
    with runtime.threads(cfg.train.threads or runtime.default_threads()):
        tokenizer = load_tokenizer(spec["model_path"], cfg.trust_remote_code)
        # What the model's libraries add is the planner's base (it builds the model on the
        # meta device before predicting, as training does before loading), not the model's.
        model_shape(cfg, task, spec["model_path"], spec["label_names"], precision)
        out["before_model_mb"] = memory_mb()
        began = time.perf_counter()
        kwargs = task.model_kwargs(SimpleNamespace(label_names=spec["label_names"]))
        model = build_model(cfg, task, spec["model_path"], precision, kwargs)
        out["load_seconds"] = time.perf_counter() - began
        out["loaded_mb"] = memory_mb()  # with what loading left in the heap, as in a run
        runtime.release_free_memory()
        loaded = memory_mb()
        method = get_method(cfg.method)
        strategy = make_strategy(cfg.train, precision)
        optimizer = build_optimizer(model, cfg.train,
                                    method.lr_scale(cfg) if method.lr_scale else None)
        model = strategy.wrap(model, optimizer)
        model.train()
        vocab = model.get_input_embeddings().num_embeddings
        pad = tokenizer.pad_token_id or 0
        labels = max(1, len(spec["label_names"] or []))

        def batch(b: int, w: int, trained: int):
            rows = task.synthetic_rows(b, w, trained, vocab, labels)
            idx = list(range(b))
            return task.batch(rows, idx, pad, strategy.device), task.trained_tokens(rows, idx)

        def step(data) -> tuple[float, float]:
            began = time.perf_counter()
            loss, _ = task.loss_and_stats(model, data, lambda: runtime.autocast(precision))
            strategy.backward(loss)  # the work of a training step, its log figures included
            middle = time.perf_counter()
            strategy.step()
            return middle - began, time.perf_counter() - middle

        def forward(data) -> float:
            began = time.perf_counter()
            model.eval()
            with torch.inference_mode():
                task.loss_sum(model, data, lambda: runtime.autocast(precision))
            model.train()
            return time.perf_counter() - began

        points = [tuple(p) for p in spec["points"]]
        step(batch(*points[0])[0])  # the optimizer's state exists from the first update on
        runtime.release_free_memory()  # the step's freed memory is not the model's
        out["optimizer_mb"] = memory_mb() - loaded  # AdamW's moments, the oneDNN kernels
        out["points"], timed = [], []
        for p in points:
            data, trained = batch(*p)
            if (p[0], p[1], trained) in ((q["rows"], q["width"], q["trained"])
                                         for q in out["points"]):
                continue  # a task without a language-model loss: no fraction is trained
            timed.append(p)
            step(data)  # warm: the kernels of this shape are built
            runs = [step(data) for _ in range(spec.get("repeats", 3))]
            out["points"].append({"rows": p[0], "width": p[1], "trained": trained,
                                  "backward_seconds": mean(r[0] for r in runs),
                                  "update_seconds": mean(r[1] for r in runs),
                                  "forward_seconds": mean(forward(data) for _ in range(2))})
        for row, p in zip(out["points"], timed):
            data = batch(*p)[0]
            runtime.release_free_memory()  # what earlier shapes left in the heap goes back
            before = memory_mb()
            reset_peak()
            step(data)
            row["step_mb"] = peak_mb() - before
        out["mixed_step_mb"] = mixed_steps(lambda p: step(batch(*p)[0]), points)
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
