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

import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lmtune import checkpoint, rundir, zero
from lmtune.config import GENERATION_METRICS, Config
from lmtune.data.collate import Encoded, epoch_batches
from lmtune.data.readers import Table
from lmtune.errors import Interrupted, LmtuneError
from lmtune.eval.generation import generation_scores
from lmtune.eval.run import evaluate, evaluate_lm
from lmtune.models.io import save_model
from lmtune.models.methods import count_parameters
from lmtune.objectives import loss_sum, make_batch
from lmtune.prepare import Setup, prepare


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
    window_samples: int = 0
    window_tokens: int = 0
    best_weights: dict | None = None

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


def train(cfg: Config, train_table: Table | None = None, progress: bool = True) -> RunResult:
    """Fine-tune `cfg.model` on `cfg.data` (or `train_table`) and write the run dir."""
    setup = prepare(cfg, train_table)
    state = fit(setup, progress)
    return finish(setup, state)


# ------------------------------------------------------------------------------- fit


def fit(s: Setup, progress: bool = True) -> FitState:
    cfg, tc = s.cfg, s.cfg.train
    state = start_state(s)
    lengths = s.data["train"].lengths()  # masking keeps lengths
    bar = tqdm(total=s.total_steps, initial=state.step, desc="train", unit="step",
               dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30,
               disable=not progress or not s.accelerator.is_main_process)  # short piped logs
    s.model.train()
    start = time.perf_counter() - state.seconds
    # The loss stays on device between log rows: no host sync inside the step.
    window_loss = torch.tensor(state.window_loss, device=s.accelerator.device)
    window_start = _train_clock(state)
    world, rank = s.accelerator.num_processes, s.accelerator.process_index
    per_step = tc.grad_accum * world  # micro-batches in one optimizer step, all ranks
    with checkpoint.StopRequest() as stop:
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
                window_loss += train_step(s, data, group[rank::world], n)
                state.step += 1
                state.samples += sum(map(len, group))
                tokens = sum(lengths[i] for b in group for i in b)  # real, not padding
                state.tokens += tokens
                state.window_tokens += tokens
                state.window_samples += sum(map(len, group))
                bar.update(1)
                if state.step % tc.log_every == 0 or state.step == s.total_steps:
                    row = log_window(s, state, window_loss, window_start)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}",
                                    sps=f"{row['samples_per_s']:.0f}")
                    window_loss, window_start = torch.zeros_like(window_loss), _train_clock(state)
                    state.window_samples = state.window_tokens = 0
                if tc.eval_every and state.step % tc.eval_every == 0:
                    validate(s, state, state.epoch)
                if stop_requested(s, stop):
                    path = save_checkpoint(s, state, window_loss, start)
                    raise Interrupted(stop.signum, path)
                ends_epoch = state.batch >= len(batches) or state.step >= s.total_steps
                if tc.checkpoint_every and state.step % tc.checkpoint_every == 0 \
                        and not ends_epoch:  # the epoch-end checkpoint follows at once
                    save_checkpoint(s, state, window_loss, start)
            state.epoch, state.batch = state.epoch + 1, 0
            if not tc.eval_every:
                validate(s, state, state.epoch - 1)
            save_checkpoint(s, state, window_loss, start)
    if state.last_eval_step != state.step:
        validate(s, state, state.epoch - 1)
    state.seconds = time.perf_counter() - start
    bar.close()
    return state


def log_window(s: Setup, state: FitState, window_loss: torch.Tensor, window_start: float) -> dict:
    """Write the loss/LR/throughput row for the steps since the last row."""
    elapsed = max(_train_clock(state) - window_start, 1e-9)
    if s.accelerator.num_processes > 1:  # each rank holds its share of the loss
        window_loss = s.accelerator.reduce(window_loss, reduction="sum")
    row = {"step": state.step, "epoch": round(state.step / s.steps_per_epoch, 4),
           "loss": window_loss.item() / max(1, _steps_in_window(state, s.cfg.train)),
           "lr": s.scheduler.get_last_lr()[0],
           "samples_per_s": state.window_samples / elapsed,
           "tokens_per_s": state.window_tokens / elapsed}
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
    model = s.module
    if r.shards is not None:  # each rank reads its own shards (key mismatches raise)
        best = s.shards.load(r.shards)
    else:
        expected = {n for n, p in model.named_parameters() if p.requires_grad}
        if set(r.trainable) != expected:
            raise LmtuneError(f"checkpoint {r.path}: its trainable tensors do not match this "
                              f"model and method ({len(r.trainable)} saved, "
                              f"{len(expected)} here)")
        model.load_state_dict(r.trainable, strict=False)
        s.optimizer.load_state_dict(r.optimizer)
        best = r.best
    s.scheduler.load_state_dict(r.scheduler)
    checkpoint.set_rng_state(r.rng)
    p = {k: v for k, v in r.progress.items() if k not in ("world_size", "distributed")}
    state = FitState(**p)
    if not s.accelerator.is_main_process:  # rank 0 alone carries the saved loss window on;
        state.window_loss = 0.0  # the log row sums every rank's share of it
    if best is not None:
        state.best_weights = best
    elif state.best and state.best["step"] == state.step:  # the best is the saved weights
        state.best_weights = s.trainable_state()
    if s.accelerator.is_main_process:
        print(f"resumed from {r.path} at step {state.step}", file=sys.stderr)
    s.logger.log({"step": state.step, "event": "resumed", "checkpoint": r.path.name})
    return state


def stop_requested(s: Setup, stop: checkpoint.StopRequest) -> bool:
    """Whether a signal asked to stop; under DDP all ranks agree, so all stop at one step."""
    if s.accelerator.num_processes == 1:
        return bool(stop.signum)
    flag = torch.tensor(float(stop.signum), device=s.accelerator.device)
    stop.signum = int(s.accelerator.reduce(flag, reduction="max"))  # any rank's signal
    return bool(stop.signum)


def save_checkpoint(s: Setup, state: FitState, window_loss: torch.Tensor,
                    start: float) -> Path | None:
    """Write a checkpoint of the current step. Every rank calls it; rank 0 writes."""
    began = time.perf_counter()
    acc = s.accelerator
    if acc.num_processes > 1:  # every rank's loss share, and RNG streams, go in one file set
        window_loss = acc.reduce(window_loss, reduction="sum")
        rngs: list = [None] * acc.num_processes
        torch.distributed.all_gather_object(rngs, checkpoint.rng_state())
    else:
        rngs = [checkpoint.rng_state()]
    path = None
    if acc.is_main_process:
        state.window_loss = window_loss.item()
        state.seconds = time.perf_counter() - start
    else:  # only rank 0 carries the loss window on
        state.window_loss = 0.0
    best = state.best_weights if state.best.get("step", state.step) != state.step else None
    common = dict(scheduler=s.scheduler.state_dict(), rngs=rngs,
                  progress=state.progress(acc.num_processes, s.distributed),
                  keep=s.cfg.train.keep_checkpoints, best_step=state.best.get("step"))
    if s.shards is not None:  # every rank writes its shards of weights, best weights, AdamW
        path = checkpoint.save(s.out / "checkpoints", state.step, trainable=None, best=None,
                               optimizer=None, rank=acc.process_index, **common,
                               shards=lambda p: s.shards.save(best, p))
    elif acc.is_main_process:
        path = checkpoint.save(s.out / "checkpoints", state.step,
                               trainable=s.trainable_state(), best=best,
                               optimizer=s.optimizer.state_dict(), **common)
    acc.wait_for_everyone()
    state.aside_seconds += time.perf_counter() - began
    return path


def _steps_in_window(state: FitState, tc) -> int:
    """How many steps the current logging window holds (the last one may be short)."""
    return (state.step - 1) % tc.log_every + 1


def train_step(s: Setup, data: Encoded, group: list[list[int]], n: int) -> torch.Tensor:
    """One optimizer step over this rank's micro-batches `group`; returns its loss share.

    Each micro-batch's summed loss is divided by `n`, the loss terms (samples, or trained
    tokens) of the *whole* effective batch over all ranks, and multiplied by the world size
    because DDP averages gradients over ranks. So k accumulated micro-batches, or k ranks,
    give the same gradient as one batch k times larger: a short micro-batch, or one with few
    trained tokens, weighs by what it holds. Summed over ranks, the returned values are the
    step's mean loss.

    Under DeepSpeed the engine takes the backward (ZeRO-2/3 reduce-scatter each one) and its
    `step()` reduces, clips and updates; ZeRO averages over ranks as DDP does.
    """
    scale = s.accelerator.num_processes / max(n, 1)
    device = s.accelerator.device
    ds = s.shards if isinstance(s.shards, zero.Zero) else None
    total = torch.zeros((), device=device)
    for j, idx in enumerate(group):
        batch = make_batch(s.objective, data, idx, s.pad_id, device)
        last = j == len(group) - 1
        with contextlib.nullcontext() if last or ds else s.accelerator.no_sync(s.model):
            loss = loss_sum(s.objective, s.model, batch, s.autocast) * scale
            if ds:
                ds.backward(loss)
            else:
                s.accelerator.backward(loss)
        total += loss.detach() / s.accelerator.num_processes
    if ds:
        ds.step()
    else:
        if s.cfg.train.max_grad_norm:
            s.accelerator.clip_grad_norm_(s.model.parameters(), s.cfg.train.max_grad_norm)
        s.optimizer.step()
        s.optimizer.zero_grad(set_to_none=True)
    s.scheduler.step()
    return total


def evaluate_split(s: Setup, name: str) -> dict:
    """Metrics of split `name`: classification metrics, or LM loss and perplexity. With
    several processes each runs its share of the batches and the sums are added up."""
    if s.objective == "classify":
        return evaluate(s.model, s.data[name], s.label_names, s.cfg.eval.batch_size,
                        s.pad_id, s.autocast, ranks=s.ranks)
    return evaluate_lm(s.model, s.data[name], s.objective, s.cfg.eval.batch_size, s.pad_id,
                       s.autocast, ranks=s.ranks)


def headline(metrics: dict) -> dict:
    """The scalar metrics worth a log row."""
    return {k: metrics[k] for k in ("loss", "accuracy", "macro_f1", "perplexity",
                                    *GENERATION_METRICS) if k in metrics}


def validate(s: Setup, state: FitState, epoch: int) -> None:
    """Evaluate on the validation split (loss, plus generation metrics on its first
    `eval.generate_samples` rows); keep a copy of the best trainable weights."""
    began = time.perf_counter()
    metrics = headline(evaluate_split(s, "validation"))
    if s.prompts:
        metrics |= generation_scores(s.module, s.tokenizer, s.cfg, s.prompts, s.precision,
                                     s.ranks)
    state.last_eval_step = state.step
    name = s.cfg.metric
    s.logger.log({"step": state.step, "epoch": epoch, "split": "validation", **metrics})
    better = (not state.best or
              (metrics[name] < state.best[name] if name == "loss"
               else metrics[name] > state.best[name]))
    if better:
        state.best = {"step": state.step, **metrics}
        state.best_weights = s.trainable_state()
    state.aside_seconds += time.perf_counter() - began


# ---------------------------------------------------------------------------- finish


def finish(s: Setup, state: FitState) -> RunResult:
    model = s.module
    # Training is over: AdamW's moments (twice the trainable weights) and the copy of the
    # best weights are freed before the test pass and the save, which need memory of their own.
    s.optimizer.state.clear()
    if state.best_weights is not None and state.best["step"] != state.step:
        s.load_trainable(state.best_weights)
    state.best_weights = None
    test = None
    if "test" in s.data:
        test = evaluate_split(s, "test")
        s.logger.log({"step": state.step, "split": "test", **headline(test)})
    s.accelerator.wait_for_everyone()
    seconds = max(state.seconds - state.aside_seconds, 1e-9)
    result = RunResult(s.out, test, state.best, state.step, state.seconds,
                       state.samples / seconds, state.tokens / seconds)
    weights = s.shards.full_state() if s.shards is not None else None  # a collective
    if s.accelerator.is_main_process:
        rundir.atomic_save_dir(s.out / "model",
                               lambda p: save_model(model, s.tokenizer, p, weights))
        if test is not None:
            rundir.atomic_write_json(s.out / "eval.json", {"test": test})
        print(summary(s, result, model))
    s.logger.close()
    return result


def summary(s: Setup, r: RunResult, model) -> str:
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
            (f"best validation {s.cfg.metric}",
             f"{r.best[s.cfg.metric]:.4f} (step {r.best['step']})")]
    if r.test is not None:
        rows += [(f"test {k}", f"{v:.4f}") for k, v in headline(r.test).items()]
    rows.append(("run dir", str(s.out)))
    width = max(len(k) for k, _ in rows)
    return "\n".join([""] + [f"  {k:<{width}}  {v}" for k, v in rows])
