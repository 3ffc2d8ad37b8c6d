"""A training run's set-up: everything `fit` needs, built in the order that keeps a bad
input from touching the run dir.

    read + validate the data (the task), load tokenizer + model (the task's class, as the
    method needs it), tokenize once, apply the method, [shard,] build optimizer + schedule,
    wrap (the distribution strategy), [find the checkpoint to resume from], open the run dir
    and its metrics log (rank 0)
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from lmtune import checkpoint, rundir, runtime
from lmtune.config import Config, cache_root
from lmtune.data.cache import DataCache, cache_key
from lmtune.data.checks import check_splits, leaks_or_conflicts
from lmtune.data.collate import Encoded
from lmtune.data.readers import Table
from lmtune.distributed import Strategy, make_strategy
from lmtune.errors import LmtuneError
from lmtune.methods import Method, apply_method, get_method
from lmtune.models.load import (attention_impl, load_model_config, load_pretrained,
                               load_tokenizer, resolve_model)
from lmtune.models.params import hold_frozen_linears_in_bf16, set_dropout
from lmtune.optim import build_optimizer, build_scheduler
from lmtune.tasks import EvalSettings, Task, get_task
from lmtune.track import JsonlLogger, Logger, NullLogger, Tee, trackers


@dataclass
class Setup:
    cfg: Config
    task: Task
    label_names: list[str] | None  # tasks that predict labels
    tokenizer: object
    model: torch.nn.Module  # what the forward runs (DDP's or DeepSpeed's wrapper, maybe)
    optimizer: torch.optim.Optimizer
    scheduler: object
    strategy: Strategy
    data: dict[str, Encoded]
    precision: str
    total_steps: int
    steps_per_epoch: int
    out: Path
    logger: Logger
    resumed: checkpoint.Loaded | None = None
    report: dict | None = None  # sft/clm/mlm/seq2seq: what the loss sees (data_report.json)
    prompts: list | None = None  # validation conversations to generate from
    hooks: object | None = None  # what a method does between steps (`Method.hooks`)
    metric: str = "loss"  # the validation metric that picks the best model
    prediction: dict | None = None  # the planner's peak memory and step time for this run

    @property
    def method(self) -> Method:
        return get_method(self.cfg.method)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id or 0

    def train_data(self, epoch: int) -> Encoded:
        return self.task.train_view(self.data["train"], self.cfg, self.tokenizer, epoch)

    def autocast(self):
        return runtime.autocast(self.precision)

    @property
    def module(self) -> torch.nn.Module:
        """The model itself, without DDP's or DeepSpeed's wrapper."""
        return self.strategy.module

    def eval_settings(self, progress: bool = False, stop=None) -> EvalSettings:
        return EvalSettings(self.cfg.eval.batch_size, self.pad_id, self.autocast,
                            self.strategy.ranks, progress, self.label_names, stop)


def prepare(cfg: Config, train_table: Table | None = None,
            logger: Logger | None = None, guard=None) -> Setup:
    """Build the run; `logger` also receives every metrics row (rank 0). `guard(cfg, task,
    data, model_path, label_names, precision, world)` runs once the data is tokenized and
    before the weights are loaded (the planner's out-of-memory check); what it returns, the
    run's predicted peak memory and step time, goes into summary.json."""
    runtime.seed_everything(cfg.seed)
    precision = runtime.resolve_precision(cfg.train.precision)
    task, method = get_task(cfg.task).for_run(cfg), get_method(cfg.method)
    # Everything that can fail on user input happens before the run dir is touched.
    raw = task.read(cfg, train_table)
    model_path = resolve_model(cfg.model, cfg.cache_dir)
    fit_positions(cfg, model_path)
    out = rundir.check_run_dir(cfg)
    tokenizer = load_tokenizer(model_path, cfg.trust_remote_code)
    model_config = load_model_config(model_path, cfg.trust_remote_code)
    data, report, data_warnings = encode_or_cached(cfg, task, raw, tokenizer, model_config,
                                                   model_path)
    data = sample_validation(data, cfg.eval.max_samples, cfg.seed)
    strategy = make_strategy(cfg.train, precision)
    prediction = None
    if guard is not None:  # before the weights are loaded: a hopeless run stops in seconds
        prediction = guard(cfg, task, data, model_path, task.label_names(raw), precision,
                           strategy.world)
    model = build_model(cfg, task, model_path, precision, task.model_kwargs(raw))
    steps_per_epoch, total_steps = count_steps(cfg, len(data["train"]), strategy.world)
    model = strategy.shard(model)  # before the optimizer: sharding replaces parameters
    optimizer = build_optimizer(model, cfg.train, method.lr_scale(cfg) if method.lr_scale
                                else None)
    scheduler = build_scheduler(optimizer, cfg.train, total_steps)  # ours in every mode
    model = strategy.wrap(model, optimizer)
    # The starting model, on its device (sharded, maybe): the ranks share the work out.
    task.before_training(cfg, model, data, EvalSettings(
        cfg.eval.batch_size, tokenizer.pad_token_id or 0, lambda: runtime.autocast(precision),
        strategy.ranks, progress=strategy.is_main))
    hooks = method.hooks(strategy.module, total_steps) if method.hooks else None
    resumed = find_checkpoint(cfg, out, strategy)
    log: Logger = NullLogger()
    if strategy.is_main:
        if report is not None:
            print("data: " + "\n      ".join(report.lines()), file=sys.stderr)
        for line in data_warnings:  # the run goes on; `lmtune check` shows more
            print(f"warning: {line}; see `lmtune check`", file=sys.stderr)
        if resumed is None:
            out = rundir.start_run_dir(cfg)
        else:
            rundir.rewind_metrics(out / "metrics.jsonl", resumed.progress["step"])
        if report is not None:
            rundir.atomic_write_json(out / "data_report.json", vars(report))
        log = Tee(JsonlLogger(out / "metrics.jsonl"),
                  *trackers(cfg.track, out, cfg.to_dict()), *([logger] if logger else []))
    return Setup(cfg, task, task.label_names(raw), tokenizer, model, optimizer, scheduler,
                 strategy, data, precision, total_steps, steps_per_epoch, out, log, resumed,
                 vars(report) if report is not None else None, task.prompts(raw, cfg), hooks,
                 task.metric_for(cfg, raw), prediction)


def build_model(cfg: Config, task: Task, model_path: str, precision: str,
                model_kwargs: dict) -> torch.nn.Module:
    """Load the model as `cfg` trains it: the task's class, loaded as the method needs it,
    dropout set, the method applied, frozen linears in bf16 under bf16 autocast. The
    planner's measurements build it here too, so they measure what training holds."""
    method = get_method(cfg.method)
    model = load_pretrained(task.model_class, model_path, cfg.trust_remote_code,
                            attention_impl(cfg.attention, runtime.device_type(),
                                           task.eager_on_cpu),
                            method.load_dtype, cfg.quantization, task.head_modules,
                            **model_kwargs)
    if cfg.train.gradient_checkpointing:  # non-reentrant: works with frozen inputs (LoRA)
        model.gradient_checkpointing_enable({"use_reentrant": False})
    if cfg.train.dropout is not None:  # before the method: lora.dropout stays its own
        set_dropout(model, cfg.train.dropout)
    model = apply_method(model, cfg, task)
    if task.no_dropout:  # the adapter's dropout too
        set_dropout(model, 0.0)
    if not any(p.requires_grad for p in model.parameters()):
        raise LmtuneError(f"method={cfg.method}: leaves no parameter of {cfg.model} to train")
    if precision == "bf16" and method.bf16_frozen:  # same matmul inputs, half the memory
        hold_frozen_linears_in_bf16(model)
    return model


def encode_or_cached(cfg: Config, task, raw, tokenizer, model_config, model_path: str):
    """(tokenized splits, data report, data warnings): from the tokenized-data cache when
    this data, tokenizer and these settings were seen before (data/cache.py), else made
    and stored."""
    cache = None
    if cfg.data.cache:
        cache = DataCache(cache_root(cfg.cache_dir) / "data", cache_key(cfg, raw, model_path))
        hit = cache.load()
        if hit is not None:
            return hit
    warnings = leaks_or_conflicts(check_splits(task.check_rows(raw), cheap=True))
    data, report = task.encode(cfg, tokenizer, raw, model_config)
    if cache is not None:
        cache.save(data, report, warnings)
    return data, report, warnings


def sample_validation(data: dict[str, Encoded], n: int, seed: int) -> dict[str, Encoded]:
    """With `eval.max_samples`, validation during training scores a seeded sample of n rows
    (in their order): a large validation set then costs a small share of an epoch. The
    test split stays whole."""
    val = data.get("validation")
    if not n or val is None or len(val) <= n:
        return data
    import random

    return data | {"validation": val.rows(sorted(random.Random(seed).sample(range(len(val)),
                                                                            n)))}


def fit_positions(cfg: Config, model_path: str) -> None:
    """train.max_length may not pass the positions the model was trained with: the task's
    own length is capped there (before the run dir is compared, so a resumed run agrees),
    a length the user set is an error. Reads the model's config, not its weights."""
    config = load_model_config(model_path, cfg.trust_remote_code)
    limit = getattr(config, "max_position_embeddings", None) or getattr(
        getattr(config, "encoder", None), "max_position_embeddings", None)  # bert2bert
    if not limit or cfg.train.max_length <= limit:
        return
    if getattr(cfg.train, "length_from_task", False):
        cfg.train.max_length = limit
        return
    raise LmtuneError(f"train.max_length: {cfg.train.max_length} is more than the "
                      f"{limit} positions {cfg.model} was trained with")


def count_steps(cfg: Config, rows: int, world: int, note: bool = True) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps): each process takes every world-th batch.

    `train.max_steps` if set; else `train.epochs` of steps, but at least `train.min_steps`:
    a few hundred rows at batch 32 make a few dozen steps, too few for a new head to learn
    more than the largest class (BENCHMARKS.md, "A small, imbalanced label set")."""
    tc = cfg.train
    batches = math.ceil(rows / tc.batch_size)
    per_epoch = max(1, batches // world) if world > 1 else batches
    per_epoch = math.ceil(per_epoch / tc.grad_accum)
    if tc.max_steps:
        return per_epoch, tc.max_steps
    by_epochs = math.ceil(tc.epochs * per_epoch)
    if by_epochs < tc.min_steps and note:
        print(f"note: {rows:,} training rows make {by_epochs} optimizer steps in "
              f"{tc.epochs:g} epochs; training {tc.min_steps} steps "
              f"({tc.min_steps / per_epoch:.1f} epochs) as train.min_steps says",
              file=sys.stderr)
    return per_epoch, max(by_epochs, tc.min_steps)


def find_checkpoint(cfg: Config, out: Path, strategy: Strategy) -> checkpoint.Loaded | None:
    """With resume=true, the newest valid checkpoint (None: start at step 0)."""
    if not cfg.resume:
        return None
    resumed = checkpoint.load_latest(out / "checkpoints", strategy.rank, strategy.world,
                                     strategy.name)
    if resumed is None and strategy.is_main:
        print(f"resume: no valid checkpoint in {out / 'checkpoints'}; starting at step 0",
              file=sys.stderr)
    return resumed
