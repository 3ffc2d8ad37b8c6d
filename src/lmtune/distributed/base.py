"""The `Strategy` every training run goes through, and its plainest form: `ddp`.

One process, or several under DDP (accelerate wraps the model): every process holds the
whole model and AdamW state, gradients are averaged over the processes in the backward of
each step's last micro-batch, and rank 0 alone writes checkpoints. `fsdp.Fsdp` and
`zero.Zero` override what differs when the state is split over the processes.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from lmtune import checkpoint
from lmtune.config import TrainConfig
from lmtune.errors import LmtuneError
from lmtune.models.params import trainable_state


class Strategy:
    name = "ddp"  # recorded in checkpoints: resuming needs the same

    def __init__(self, accelerator, tc: TrainConfig, precision: str):
        self.accelerator, self.tc, self.precision = accelerator, tc, precision
        self.model: nn.Module | None = None  # what the forward runs (a wrapper, maybe)
        self._inner: nn.Module | None = None  # the model inside that wrapper
        self.optimizer = None

    # ------------------------------------------------------------------- processes

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def ranks(self) -> tuple[int, int] | None:
        """(rank, world) where evaluation is shared out over several processes."""
        return (self.rank, self.world) if self.world > 1 else None

    def reduce(self, t: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return self.accelerator.reduce(t, reduction=reduction) if self.world > 1 else t

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    # ---------------------------------------------------------------------- set-up

    def shard(self, model: nn.Module) -> nn.Module:
        """Called before the optimizer is built (sharding replaces the parameters)."""
        return model

    def wrap(self, model: nn.Module, optimizer) -> nn.Module:
        """Hand the model and optimizer over; returns what the forward runs."""
        self._inner = model  # DDP wraps this very object; accelerate only moves it in place
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        return self.model

    @property
    def module(self) -> nn.Module:
        """The model itself, without DDP's wrapper. Kept from `wrap` rather than asked of
        accelerate, whose unwrapping imports DeepSpeed wherever it is installed: seconds and
        about 40 MB in a process that never uses it."""
        return self._inner

    # ------------------------------------------------------------------------ step

    def accumulating(self, last: bool):
        """The context of one micro-batch's forward and backward: gradients are synced
        over the processes only in the step's last one."""
        return contextlib.nullcontext() if last else self.accelerator.no_sync(self.model)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def step(self, after_update: Callable[[], None] | None = None) -> None:
        """Clip, update, clear: the end of one optimizer step. `after_update` runs between
        the update and the clearing, while the gradients are still there."""
        if self.tc.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.tc.max_grad_norm)
        self.optimizer.step()
        if after_update is not None:
            after_update()
        self.optimizer.zero_grad(set_to_none=True)

    # ----------------------------------------------------------------------- state

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """A copy of the trainable weights (this rank's shards, when sharded)."""
        return trainable_state(self.module)

    def load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state, strict=False)

    def save_checkpoint(self, root: Path, step: int, best: dict | None, **common
                        ) -> Path | None:
        """Write checkpoint `step` under `root`; every rank calls it, rank 0 writes."""
        if not self.is_main:
            return None
        return checkpoint.save(root, step, trainable=self.trainable_state(), best=best,
                               optimizer=self.optimizer.state_dict(), **common)

    def restore(self, r: checkpoint.Loaded) -> dict | None:
        """Put a checkpoint's weights and optimizer state back; returns its best weights."""
        expected = {n for n, p in self.module.named_parameters() if p.requires_grad}
        if set(r.trainable) != expected:
            raise LmtuneError(f"checkpoint {r.path}: its trainable tensors do not match this "
                              f"model and method ({len(r.trainable)} saved, "
                              f"{len(expected)} here)")
        self.module.load_state_dict(r.trainable, strict=False)
        self.optimizer.load_state_dict(r.optimizer)
        return r.best

    def full_state(self) -> dict[str, torch.Tensor] | None:
        """The whole weights for the final save (a collective where they are sharded);
        None: the model's own state dict is whole."""
        return None


class Sharded(Strategy):
    """A strategy whose ranks each hold a part of the state (fsdp, deepspeed): every rank
    writes its shards of a checkpoint and reads them back; the subclass says how
    (`save_shards`, `load_shards`, both collectives)."""

    def save_shards(self, best: dict | None, path: Path) -> None:
        raise NotImplementedError

    def load_shards(self, path: Path) -> dict | None:
        raise NotImplementedError

    def accumulating(self, last: bool):
        return contextlib.nullcontext()  # the reduction happens where the strategy says

    def save_checkpoint(self, root: Path, step: int, best: dict | None, **common
                        ) -> Path | None:
        return checkpoint.save(root, step, trainable=None, best=None, optimizer=None,
                               rank=self.rank, shards=lambda p: self.save_shards(best, p),
                               **common)

    def restore(self, r: checkpoint.Loaded) -> dict | None:
        return self.load_shards(r.shards)  # each rank reads its own (mismatches raise)
