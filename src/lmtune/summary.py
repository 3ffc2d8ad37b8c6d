"""What a finished run says about itself: summary.json and the table printed at the end."""
from __future__ import annotations

from lmtune import runtime
from lmtune.models.params import count_parameters


def headline(s, metrics: dict) -> dict:
    """The scalar metrics worth a log row."""
    return {k: metrics[k] for k in s.task.headline if k in metrics}


def summary_json(s, r) -> dict:
    """summary.json: what the run did and how fast, beside eval.json."""
    trainable, total = count_parameters(s.module)
    return {"task": s.cfg.task, "model": s.cfg.model, "method": s.cfg.method,
            "precision": s.precision, "processes": s.strategy.world,
            "distributed": s.strategy.name, "trainable_params": trainable,
            "total_params": total, "steps": r.steps,
            "epochs": round(r.steps / s.steps_per_epoch, 4), "seconds": r.train_seconds,
            "samples_per_second": r.samples_per_second,
            "tokens_per_second": r.tokens_per_second,
            "best": {"step": r.best.get("step"), "metric": s.metric,
                     "value": r.best.get(s.metric)},
            "test": headline(s, r.test) if r.test is not None else None,
            "peak_memory_mb": r.peak_memory_mb, "plan": plan_check(s, r),
            "environment": runtime.environment()}


def plan_check(s, r) -> dict | None:
    """What the planner predicted for this run beside what it measured: every run checks
    the memory and time model (`lmtune plan`)."""
    if s.prediction is None:
        return None
    rows_per_step = s.cfg.train.batch_size * s.cfg.train.grad_accum * s.strategy.world
    return {"predicted": s.prediction,
            "measured": {"peak_memory_mb": r.peak_memory_mb,
                         "seconds_per_step": rows_per_step / max(r.samples_per_second, 1e-9)}}


def summary(s, r, model) -> str:
    trainable, total = count_parameters(model)
    rows = [("model", s.cfg.model), ("method", s.cfg.method),
            ("trainable params", f"{trainable:,} / {total:,} ({trainable / total:.2%})"),
            ("precision", s.precision),
            ("train rows", f"{len(s.data['train']):,}" + (" (packed)" if s.cfg.data.packing
                                                            else "")),
            ("steps", f"{r.steps} ({r.steps / s.steps_per_epoch:.2f} epochs)"),
            ("train time", f"{r.train_seconds:.1f} s; training steps ran at "
                           f"{r.samples_per_second:.1f} rows/s, "
                           f"{r.tokens_per_second:.0f} tokens/s"),
            (f"best validation {s.metric}",
             f"{r.best[s.metric]:.4f} (step {r.best['step']})")]
    if r.test is not None:
        rows += [(f"test {k}", f"{v:.4f}") for k, v in headline(s, r.test).items()]
    rows += [("peak memory", f"{r.peak_memory_mb:,.0f} MB"), ("run dir", str(s.out))]
    width = max(len(k) for k, _ in rows)
    return "\n".join([""] + [f"  {k:<{width}}  {v}" for k, v in rows])
