"""How training is spread over processes: one `Strategy` interface, three strategies.

    ddp        every process holds the whole model; gradients are averaged (accelerate's
               DDP); also the strategy of a single process, where nothing is wrapped
    fsdp       parameters, gradients and AdamW state sharded over the processes (FSDP2)
    deepspeed  DeepSpeed ZeRO stage 1, 2 or 3 (`train.zero_stage`)

The loop never asks which one it has: it calls `shard` (before the optimizer exists),
`wrap`, then per optimizer step `accumulating`/`backward` for each micro-batch and `step`;
`trainable_state`/`load_trainable` keep the best weights, `save_checkpoint`/`restore` write
and read checkpoints, and `full_state` gathers the weights for the final save.
"""
from __future__ import annotations

import math
import os

from lmtune.config import TrainConfig
from lmtune.distributed.base import Strategy
from lmtune.errors import LmtuneError


def make_accelerator():
    """An `accelerate.Accelerator`: works alone, under `accelerate launch` and torchrun.

    accelerate's own DeepSpeed set-up (`accelerate launch --use_deepspeed`, or a config with
    `distributed_type: DEEPSPEED`) would take over the step and needs its own batch settings;
    lmtune runs DeepSpeed itself, so that launch is refused with the way to ask for it."""
    from accelerate import Accelerator

    from lmtune.runtime import device_type

    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise LmtuneError("accelerate was launched with DeepSpeed; lmtune drives DeepSpeed "
                          "itself: launch without accelerate's DeepSpeed options and set "
                          "train.distributed=deepspeed (train.zero_stage=1|2|3)")
    return Accelerator(cpu=device_type() == "cpu")


def make_strategy(tc: TrainConfig, precision: str) -> Strategy:
    """The strategy `train.distributed` asks for; one process always runs `ddp` (there is
    nothing to share out)."""
    from lmtune.distributed.fsdp import Fsdp
    from lmtune.distributed.zero import Zero

    accelerator = make_accelerator()
    mode = tc.distributed if accelerator.num_processes > 1 else "ddp"
    kind = {"ddp": Strategy, "fsdp": Fsdp, "deepspeed": Zero}[mode]
    return kind(accelerator, tc, precision)


def rank_share(items: list, ranks: tuple[int, int] | None) -> list[tuple[object, bool]]:
    """This rank's share of `items`: (item, counts) for every `world`-th one from `rank`.

    Under FSDP and ZeRO-3 a forward is a collective, so every rank must run as many batches
    (or `generate` calls): a rank with one item fewer takes the first again, uncounted.
    `ranks` None: one process, all of them.
    """
    if ranks is None:
        return [(x, True) for x in items]
    rank, world = ranks
    mine = [(x, True) for x in items[rank::world]]
    extra = math.ceil(len(items) / world) - len(mine)
    return mine + [(items[0], False)] * extra if extra else mine


__all__ = ["Strategy", "make_accelerator", "make_strategy", "rank_share"]
