"""The training run, top to bottom: prepare → fit → finish.

    prepare (lmtune.prepare) validate data, load tokenizer + model, apply the method,
            tokenize once, [shard with FSDP,] build optimizer + schedule, [wrap: DDP
            (accelerate) or DeepSpeed ZeRO]
    fit     [resume from the newest valid checkpoint] for each optimizer step: k micro-
            batches (loss normalized over the whole effective batch) → clip → step →
            schedule; log; evaluate; keep the best; checkpoint every N steps, at epoch
            ends, and on SIGTERM/SIGINT (then stop)
    finish  restore the best weights, test, save model/ and eval.json, print a summary
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from lmtune import checkpoint, rundir, runtime
from lmtune.config import Config
from lmtune.data.collate import Encoded, epoch_batches
from lmtune.data.readers import Table
from lmtune.errors import Interrupted
from lmtune.eval.batched import EvalStopped
from lmtune.eval.generation import evaluate_generation
from lmtune.models.io import save_model
from lmtune.plan.guard import guard
from lmtune.prepare import Setup, prepare
from lmtune.summary import headline, summary, summary_json
from lmtune.track import Logger


@dataclass
class FitState:
    """Where the loop is. Everything but `best_weights` goes into a checkpoint's progress."""
    step: int = 0
    epoch: int = 0
    batch: int = 0  # index in this epoch's batch list where the next step starts
    samples: int = 0
    tokens: int = 0
    seconds: float = 0.0  # the whole fit loop
    aside_seconds: float = 0.0  # of which validation and checkpoints (not training)
    best: dict = field(default_factory=dict)  # {"step", metric name: value}
    last_eval_step: int = -1
    window_loss: float = 0.0  # the not yet logged part of the loss window
    window_stats: dict = field(default_factory=dict)  # and of the task's figures (sums)
    window_samples: int = 0
    window_tokens: int = 0
    best_weights: dict | None = None
    # The epoch of a validation that a stop request cut short (-1: none): a resumed run
    # runs it first.
    pending_validation: int = -1

    def progress(self, world_size: int, distributed: str) -> dict:
        row = {k: v for k, v in vars(self).items() if k != "best_weights"}
        return {**row, "world_size": world_size, "distributed": distributed}


@dataclass
class RunResult:
    output_dir: Path
    test: dict | None
    best: dict
    steps: int
    train_seconds: float
    samples_per_second: float  # training steps only (validation and checkpoints excluded)
    tokens_per_second: float
    peak_memory_mb: float = 0.0  # the process's peak RSS on CPU, peak allocated on a GPU


def train(cfg: Config, train_table: Table | None = None, progress: bool = True,
          logger: Logger | None = None, stop: Callable[[], bool] | None = None) -> RunResult:
    """Fine-tune `cfg.model` on `cfg.data` (or `train_table`) and write the run dir.

    `logger` receives every metrics row as metrics.jsonl does; `stop` is polled after every
    step, and when it returns True the run checkpoints and raises `Interrupted` (resume it
    with `resume=true`). torch's thread count is `train.threads` while training runs, and
    the caller's afterwards.
    """
    with runtime.threads(cfg.train.threads):
        setup = prepare(cfg, train_table, logger, guard)
        try:
            state = fit(setup, progress, stop)
        except BaseException:  # stopped or failed: the logs end here (resume reopens them)
            setup.logger.close()
            raise
        return finish(setup, state, stop)


# ------------------------------------------------------------------------------- fit


def fit(s: Setup, progress: bool = True, stop_hook: Callable[[], bool] | None = None
        ) -> FitState:
    cfg, tc, strategy = s.cfg, s.cfg.train, s.strategy
    state = start_state(s)
    lengths = s.data["train"].lengths()  # masking keeps lengths
    bar = tqdm(total=s.total_steps, initial=state.step, desc="train", unit="step",
               dynamic_ncols=True, mininterval=runtime.bar_interval(),
               disable=not progress or not strategy.is_main)  # short piped logs
    s.model.train()
    start = time.perf_counter() - state.seconds
    # The loss stays on device between log rows: no host sync inside the step.
    window = {k: torch.tensor(v, device=strategy.device)
              for k, v in {"loss": state.window_loss, **state.window_stats}.items()}
    window_start = _train_clock(state)
    world, rank = strategy.world, strategy.rank
    per_step = tc.grad_accum * world  # micro-batches in one optimizer step, all ranks
    with checkpoint.StopRequest(stop_hook) as stop:
        if state.pending_validation >= 0:  # stopped during a validation: it comes first
            validate_or_stop(s, state, state.pending_validation, stop, window, start)
        while state.step < s.total_steps:
            batches = epoch_batches(lengths, tc.batch_size, cfg.seed, state.epoch,
                                    tc.group_by_length)
            data = s.train_data(state.epoch)
            if world > 1:  # every rank needs a micro-batch in every step, or DDP waits forever
                batches = batches[:len(batches) // world * world]
            while state.batch < len(batches) and state.step < s.total_steps:
                group = batches[state.batch:state.batch + per_step]
                state.batch += per_step
                # Rank r takes micro-batches r, r+world, ...: disjoint shards of one step.
                n = sum(data.count_units(b) for b in group)  # loss terms of the whole step
                loss, stats = train_step(s, data, group[rank::world], n, state.step + 1)
                for k, v in {"loss": loss, **stats}.items():
                    window[k] = window[k] + v if k in window else v
                state.step += 1
                state.samples += sum(map(len, group))
                tokens = sum(lengths[i] for b in group for i in b)  # real, not padding
                state.tokens += tokens
                state.window_tokens += tokens
                state.window_samples += sum(map(len, group))
                bar.update(1)
                if state.step % tc.log_every == 0 or state.step == s.total_steps:
                    row = log_window(s, state, window, window_start)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}",
                                    sps=f"{row['samples_per_s']:.0f}")
                    window = {k: torch.zeros_like(v) for k, v in window.items()}
                    window_start = _train_clock(state)
                    state.window_samples = state.window_tokens = 0
                if tc.eval_every and state.step % tc.eval_every == 0:
                    validate_or_stop(s, state, state.epoch, stop, window, start)
                if stop_requested(s, stop):
                    path = save_checkpoint(s, state, window, start)
                    raise Interrupted(stop.signum, path)
                ends_epoch = state.batch >= len(batches) or state.step >= s.total_steps
                if tc.checkpoint_every and state.step % tc.checkpoint_every == 0 \
                        and not ends_epoch:  # the epoch-end checkpoint follows at once
                    save_checkpoint(s, state, window, start)
            state.epoch, state.batch = state.epoch + 1, 0
            if not tc.eval_every:
                validate_or_stop(s, state, state.epoch - 1, stop, window, start)
            save_checkpoint(s, state, window, start)
        if state.last_eval_step != state.step:  # the last steps were not validated yet
            validate_or_stop(s, state, state.epoch - 1, stop, window, start)
    state.seconds = time.perf_counter() - start
    bar.close()
    return state


def validate_or_stop(s: Setup, state: FitState, epoch: int, stop: checkpoint.StopRequest,
                     window: dict[str, torch.Tensor], start: float) -> None:
    """Validate; a stop request during the pass (asked between batches, and between
    batches of generated prompts) ends it with a checkpoint of this step that says the
    validation is still to do, so the run exits within a batch and a resumed run validates
    first. With several processes the ranks agree on it at every batch: each runs as many
    batches (`rank_share`), so all stop at the same one."""
    asked = lambda: stop_requested(s, stop)  # noqa: E731
    state.pending_validation = epoch
    try:
        validate(s, state, epoch, asked)
    except EvalStopped:
        path = save_checkpoint(s, state, window, start)
        raise Interrupted(stop.signum, path) from None
    state.pending_validation = -1


def log_window(s: Setup, state: FitState, window: dict[str, torch.Tensor],
               window_start: float) -> dict:
    """Write the loss/LR/throughput row for the steps since the last row: the mean loss
    per step, and the task's figures (`window` beside "loss") per training row."""
    elapsed = max(_train_clock(state) - window_start, 1e-9)
    # each rank holds its share of the sums
    window = {k: s.strategy.reduce(v) for k, v in window.items()}
    row = {"step": state.step, "epoch": round(state.step / s.steps_per_epoch, 4),
           "loss": window["loss"].item() / max(1, _steps_in_window(state, s.cfg.train)),
           "lr": s.scheduler.get_last_lr()[0],
           "samples_per_s": state.window_samples / elapsed,
           "tokens_per_s": state.window_tokens / elapsed}
    row |= {k: v.item() / max(1, state.window_samples) for k, v in window.items()
            if k != "loss"}
    s.logger.log(row)
    return row


def _train_clock(state: FitState) -> float:
    """Seconds on a clock that stops during validation and checkpoints: throughput rows
    count training steps only."""
    return time.perf_counter() - state.aside_seconds


def start_state(s: Setup) -> FitState:
    """A fresh state, or the one a checkpoint holds, with weights, optimizer, schedule and RNG
    streams put back as they were, so the run goes on exactly as if never stopped."""
    r = s.resumed
    if r is None:
        return FitState()
    best = s.strategy.restore(r)
    s.scheduler.load_state_dict(r.scheduler)
    if s.hooks is not None:
        s.hooks.load_state_dict(r.method)
    checkpoint.set_rng_state(r.rng)
    p = {k: v for k, v in r.progress.items() if k not in ("world_size", "distributed")}
    state = FitState(**p)
    if not s.strategy.is_main:  # rank 0 alone carries the saved loss window on;
        state.window_loss = 0.0  # the log row sums every rank's share of it
        state.window_stats = {k: 0.0 for k in state.window_stats}
    if best is not None:
        state.best_weights = best
    elif state.best and state.best["step"] == state.step:  # the best is the saved weights
        state.best_weights = s.strategy.trainable_state()
    if s.strategy.is_main:
        print(f"resumed from {r.path} at step {state.step}", file=sys.stderr)
    s.logger.log({"step": state.step, "event": "resumed", "checkpoint": r.path.name})
    return state


def stop_requested(s: Setup, stop: checkpoint.StopRequest) -> bool:
    """Whether a signal or the stop hook asked to stop; over several processes all ranks
    agree (any rank's request counts), so all stop at one step."""
    asked = stop.asked()
    if s.strategy.world > 1:
        flag = torch.tensor(asked, device=s.strategy.device)
        asked = float(s.strategy.reduce(flag, reduction="max"))
    # Only ever set, never cleared: the signal may land while this rank waits in the
    # reduction, after it said 0; assigning the agreed 0 would then drop it for good.
    if asked >= 1 and not stop.signum:
        stop.signum = int(asked)  # another rank's signal (the hook alone sets none)
    return asked > 0


def save_checkpoint(s: Setup, state: FitState, window: dict[str, torch.Tensor],
                    start: float) -> Path | None:
    """Write a checkpoint of the current step. Every rank calls it; the strategy says who
    writes what."""
    began = time.perf_counter()
    strategy = s.strategy
    if strategy.world > 1:  # every rank's loss share, and RNG streams, go in one file set
        window = {k: strategy.reduce(v) for k, v in window.items()}
        rngs: list = [None] * strategy.world
        torch.distributed.all_gather_object(rngs, checkpoint.rng_state())
    else:
        rngs = [checkpoint.rng_state()]
    if strategy.is_main:
        state.window_loss = window["loss"].item()
        state.window_stats = {k: v.item() for k, v in window.items() if k != "loss"}
        state.seconds = time.perf_counter() - start
    else:  # only rank 0 carries the loss window on
        state.window_loss = 0.0
        state.window_stats = {k: 0.0 for k in window if k != "loss"}
    best = state.best_weights if state.best.get("step", state.step) != state.step else None
    path = strategy.save_checkpoint(
        s.out / "checkpoints", state.step, best, scheduler=s.scheduler.state_dict(),
        method=s.hooks.state_dict() if s.hooks else None,
        rngs=rngs, progress=state.progress(strategy.world, strategy.name),
        keep=s.cfg.train.keep_checkpoints, best_step=state.best.get("step"))
    strategy.barrier()
    state.aside_seconds += time.perf_counter() - began
    return path


def _steps_in_window(state: FitState, tc) -> int:
    """How many steps the current logging window holds (the last one may be short)."""
    return (state.step - 1) % tc.log_every + 1


def train_step(s: Setup, data: Encoded, group: list[list[int]], n: int, step: int
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Optimizer step `step` (counted from 1) over this rank's micro-batches `group`;
    returns its loss share (without a method's penalty term) and the task's figures,
    summed over this rank's rows.

    Each micro-batch's summed loss is divided by `n`, the loss terms (samples, or trained
    tokens) of the *whole* effective batch over all ranks, and multiplied by the world size
    because DDP averages gradients over ranks. So k accumulated micro-batches, or k ranks,
    give the same gradient as one batch k times larger: a short micro-batch, or one with few
    trained tokens, weighs by what it holds. Summed over ranks, the returned values are the
    step's mean loss.
    """
    strategy, task, hooks = s.strategy, s.task, s.hooks
    scale = strategy.world / max(n, 1)
    total = torch.zeros((), device=strategy.device)
    figures: dict[str, torch.Tensor] = {}
    for j, idx in enumerate(group):
        batch = task.batch(data, idx, s.pad_id, strategy.device)
        last = j == len(group) - 1
        with strategy.accumulating(last=last):
            loss, stats = task.loss_and_stats(s.model, batch, s.autocast)
            loss = loss * scale
            for k, v in stats.items():
                figures[k] = figures[k] + v if k in figures else v
            total += loss.detach() / strategy.world
            if last and hooks is not None:  # once per step and rank; DDP averages it
                loss = loss + hooks.penalty()
            strategy.backward(loss)
    strategy.step(hooks and (lambda: hooks.after_update(step)))
    s.scheduler.step()
    return total, figures


def evaluate_split(s: Setup, name: str, stop=None) -> dict:
    """The task's metrics of split `name`. With several processes each runs its share of
    the batches and the sums are added up. `stop()` is asked between batches."""
    return s.task.evaluate(s.model, s.data[name], s.eval_settings(stop=stop))


def validate(s: Setup, state: FitState, epoch: int, stop=None) -> None:
    """Evaluate on the validation split (loss, plus generation metrics on its first
    `eval.generate_samples` rows); keep a copy of the best trainable weights. `stop()`,
    asked between batches, cuts the pass short (EvalStopped)."""
    began = time.perf_counter()
    metrics = headline(s, evaluate_split(s, "validation", stop))
    if s.prompts:
        metrics |= evaluate_generation(s.module, s.tokenizer, s.task.decode_kind(s.tokenizer),
                                       s.cfg, s.prompts, s.precision, s.strategy.ranks, stop)
    state.last_eval_step = state.step
    name = s.metric
    s.logger.log({"step": state.step, "epoch": epoch, "split": "validation", **metrics})
    better = (not state.best or
              (metrics[name] < state.best[name] if name == "loss"
               else metrics[name] > state.best[name]))
    if better:
        state.best = {"step": state.step, **metrics}
        state.best_weights = s.strategy.trainable_state()
    state.aside_seconds += time.perf_counter() - began


# ---------------------------------------------------------------------------- finish


def test_or_stop(s: Setup, state: FitState, stop_hook: Callable[[], bool] | None) -> dict:
    """The test pass, which a stop request ends between batches: training ended with a
    checkpoint of its last step, so a resumed run goes straight to the test."""
    with checkpoint.StopRequest(stop_hook) as stop:
        try:
            return evaluate_split(s, "test", lambda: stop_requested(s, stop))
        except EvalStopped:
            s.logger.close()
            raise Interrupted(stop.signum, checkpoint.step_dir(s.out / "checkpoints",
                                                               state.step)) from None


def finish(s: Setup, state: FitState, stop_hook: Callable[[], bool] | None = None
           ) -> RunResult:
    """Restore the best weights, test, save model/, eval.json and summary.json, print the
    summary."""
    model, strategy = s.module, s.strategy
    # Training is over: AdamW's moments (twice the trainable weights) and the copy of the
    # best weights are freed before the test pass and the save, which need memory of their own.
    s.optimizer.state.clear()
    if state.best_weights is not None and state.best["step"] != state.step:
        strategy.load_trainable(state.best_weights)
    state.best_weights = None
    s.task.after_training(s.model, s.data, s.eval_settings())
    test = None
    if "test" in s.data:
        test = test_or_stop(s, state, stop_hook)
        s.logger.log({"step": state.step, "split": "test", **headline(s, test)})
    strategy.barrier()
    seconds = max(state.seconds - state.aside_seconds, 1e-9)
    result = RunResult(s.out, test, state.best, state.step, state.seconds,
                       state.samples / seconds, state.tokens / seconds,
                       runtime.peak_memory_mb())
    weights = strategy.full_state()  # a collective where the weights are sharded
    if strategy.is_main:
        rundir.atomic_save_dir(s.out / "model",
                               lambda p: save_model(model, s.tokenizer, p, weights))
        if test is not None:
            rundir.atomic_write_json(s.out / "eval.json", {"test": test})
        warnings = s.task.warnings(test, s.data) if test is not None else []
        rundir.atomic_write_json(s.out / "summary.json",
                                 summary_json(s, result) | {"warnings": warnings})
        print(summary(s, result, model))
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
    s.logger.close()
    return result
