"""A training run's set-up: everything `fit` needs, built in the order that keeps a bad
input from touching the run dir.

    validate data, load tokenizer + model, apply the method, tokenize once, [shard with
    FSDP,] build optimizer + schedule, [wrap: DDP (accelerate) or DeepSpeed ZeRO], [find the
    checkpoint to resume from], open the run dir and its metrics log (rank 0)
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from lmtune import checkpoint, dist, fsdp, rundir, zero
from lmtune.config import Config
from lmtune.data.collate import Encoded, encode
from lmtune.data.lm import Report, encode_splits, load_lm_splits, mlm_view
from lmtune.data.load import load_splits
from lmtune.data.readers import Table
from lmtune.errors import LmtuneError
from lmtune.models.load import attention_impl, load_model, load_tokenizer, resolve_model
from lmtune.models.methods import (apply_method, hold_frozen_linears_in_bf16, set_dropout,
                                   trainable_state)
from lmtune.objectives import OBJECTIVES
from lmtune.optim import build_optimizer, build_scheduler
from lmtune.track import JsonlLogger, NullLogger


@dataclass
class Setup:
    cfg: Config
    label_names: list[str] | None  # classify only
    tokenizer: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    accelerator: object
    data: dict[str, Encoded]
    precision: str
    total_steps: int
    steps_per_epoch: int
    out: Path
    logger: object
    # train.distributed=fsdp|deepspeed over several processes: each rank holds a part of
    # the state, and these helpers save, restore and gather it. None: DDP or one process.
    shards: fsdp.Fsdp | zero.Zero | None = None
    resumed: checkpoint.Loaded | None = None
    report: dict | None = None  # sft/clm/mlm: what the loss sees (data_report.json)
    prompts: list | None = None  # sft/seq2seq: validation conversations to generate from

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id or 0

    @property
    def objective(self) -> str:
        return OBJECTIVES[self.cfg.task]

    def train_data(self, epoch: int) -> Encoded:
        """The training rows of `epoch`: MLM masks anew each epoch (seeded, so resumable)."""
        if self.objective != "mlm":
            return self.data["train"]
        return mlm_view(self.data["train"], self.tokenizer, self.cfg.data.mlm_probability,
                        self.cfg.seed * 1_000_003 + epoch + 1)

    def autocast(self):
        return dist.autocast(self.precision)

    @property
    def distributed(self) -> str:
        return split_name(self.shards)

    @property
    def ranks(self) -> tuple[int, int] | None:
        """(rank, world) where evaluation is shared out over several processes."""
        world = self.accelerator.num_processes
        return (self.accelerator.process_index, world) if world > 1 else None

    @property
    def module(self) -> torch.nn.Module:
        """The model itself, without DDP's or DeepSpeed's wrapper."""
        return self.shards.module if self.shards is not None else \
            self.accelerator.unwrap_model(self.model)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """A copy of the trainable weights (this rank's shards, when sharded)."""
        if self.shards is not None:
            return self.shards.trainable_state()
        return trainable_state(self.module)

    def load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        if self.shards is not None:
            self.shards.load_trainable(state)
        else:
            self.module.load_state_dict(state, strict=False)


def split_name(shards) -> str:
    """How the training state is split over the processes (checkpoints record it)."""
    if isinstance(shards, zero.Zero):
        return f"deepspeed-zero{shards.stage}"
    return "fsdp" if shards is not None else "ddp"


def prepare(cfg: Config, train_table: Table | None = None) -> Setup:
    dist.set_threads(cfg.train.threads)
    dist.seed_everything(cfg.seed)
    precision = dist.resolve_precision(cfg.train.precision)
    # Everything that can fail on user input happens before the run dir is touched.
    raw = load_splits(cfg.data, cfg.seed, train_table) if cfg.task == "classify" else \
        load_lm_splits(cfg, train_table)
    out = rundir.check_run_dir(cfg)
    model_path = resolve_model(cfg.model, cfg.cache_dir)
    tokenizer = load_tokenizer(model_path, cfg.trust_remote_code)
    label_names = raw.label_names if cfg.task == "classify" else None
    model = load_model(cfg.task, model_path, label_names, cfg.trust_remote_code,
                       attention_impl(cfg.attention, dist.device_type(), cfg.task))
    data, report = encode_data(cfg, tokenizer, raw,
                               getattr(model.config, "decoder_start_token_id", None))
    prompts = raw.items["validation"][:cfg.eval.generate_samples] \
        if cfg.task in ("sft", "seq2seq") and cfg.eval.generate_samples else None
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(
        getattr(model.config, "encoder", None), "max_position_embeddings", None)  # bert2bert
    if limit and cfg.train.max_length > limit:
        raise LmtuneError(f"train.max_length: {cfg.train.max_length} is more than the "
                          f"{limit} positions {cfg.model} was trained with")
    if cfg.train.gradient_checkpointing:  # non-reentrant: works with frozen inputs (LoRA)
        model.gradient_checkpointing_enable({"use_reentrant": False})
    if cfg.train.dropout is not None:  # before the method: lora.dropout stays its own
        set_dropout(model, cfg.train.dropout)
    model = apply_method(model, cfg)
    if precision == "bf16" and cfg.method != "full":  # same matmul inputs, half the memory
        hold_frozen_linears_in_bf16(model)
    accelerator = dist.make_accelerator()
    batches = math.ceil(len(data["train"]) / cfg.train.batch_size)
    steps_per_epoch = max(1, batches // accelerator.num_processes) \
        if accelerator.num_processes > 1 else batches
    steps_per_epoch = math.ceil(steps_per_epoch / cfg.train.grad_accum)
    total_steps = cfg.train.max_steps or math.ceil(cfg.train.epochs * steps_per_epoch)
    mode = cfg.train.distributed if accelerator.num_processes > 1 else "ddp"
    if mode == "fsdp":  # before the optimizer: sharding replaces every parameter
        model = fsdp.shard_model(model, accelerator.device, accelerator.num_processes,
                                  precision)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, total_steps)  # ours in every mode
    shards = None
    if mode == "fsdp":
        shards = fsdp.Fsdp(model, optimizer)
    elif mode == "deepspeed":  # the engine runs the model; its step() updates
        shards = zero.Zero(model, optimizer, cfg.train, cfg.train.zero_stage,
                           torch.distributed.get_backend(), precision == "bf16")
        model = shards.engine
    else:  # DDP over several processes (nothing to wrap for one)
        model, optimizer = accelerator.prepare(model, optimizer)
    resumed = None
    if cfg.resume:
        resumed = checkpoint.load_latest(out / "checkpoints", accelerator.process_index,
                                         accelerator.num_processes,
                                         split_name(shards))
        if resumed is None and accelerator.is_main_process:
            print(f"resume: no valid checkpoint in {out / 'checkpoints'}; starting at step 0",
                  file=sys.stderr)
    logger = NullLogger()
    if accelerator.is_main_process:
        if report is not None:
            print("data: " + "\n      ".join(report.lines()), file=sys.stderr)
        if resumed is None:
            out = rundir.start_run_dir(cfg)
        else:
            rundir.rewind_metrics(out / "metrics.jsonl", resumed.progress["step"])
        if report is not None:
            rundir.atomic_write_json(out / "data_report.json", vars(report))
        logger = JsonlLogger(out / "metrics.jsonl")
    return Setup(cfg, label_names, tokenizer, model, optimizer, scheduler, accelerator, data,
                 precision, total_steps, steps_per_epoch, out, logger, shards, resumed,
                 vars(report) if report is not None else None, prompts)


def encode_data(cfg: Config, tokenizer, raw, decoder_start: int | None
                ) -> tuple[dict[str, Encoded], Report | None]:
    """Tokenize every split once: (data, LM data report; None to classify)."""
    if cfg.task != "classify":
        return encode_splits(tokenizer, raw, cfg, decoder_start)
    label2id = raw.label2id
    data = {name: encode(tokenizer, part.texts, cfg.train.max_length,
                         [label2id[x] for x in part.labels])
            for name, part in (("train", raw.train), ("validation", raw.validation),
                               ("test", raw.test)) if part is not None}
    return data, None
