"""`train.distributed=deepspeed`: DeepSpeed ZeRO stage 1, 2 or 3 (`train.zero_stage`).

    stage 1  AdamW's state is partitioned over the processes
    stage 2  ... and the gradients (reduce-scattered after each backward)
    stage 3  ... and the parameters: each rank holds 1/N of every weight, gathered per
             module just before its forward and backward

lmtune hands DeepSpeed its own model and optimizer and keeps its own loop: the loss is
normalized over the whole effective batch as in DDP (so `backward(..., scale_wrt_gas=False)`),
the engine runs with `managed_gradient_accumulation=false` so that lmtune's `step()` after
this rank's micro-batches is the accumulation boundary (reduce, clip, update), and the LR
schedule stays lmtune's, stepped once per optimizer step.

With `train.precision=bf16` the engine runs DeepSpeed's own mixed precision: bf16 weights and
gradients, fp32 master weights and AdamW state in the optimizer's partitions (lmtune's
autocast still runs around each forward, as in the other modes). The saved model is bf16, as
DeepSpeed and HF Trainer save it. With fp32 everything is fp32, and a run matches DDP's to
float rounding (tests/integration/test_multiprocess.py).

Checkpoints are DeepSpeed's own (`engine.save_checkpoint`, each rank its partition) under
`checkpoints/step-N/shards/`, plus the best weights (rank 0's whole copy below stage 3,
each rank's partitions at stage 3). DeepSpeed reads them
with plain `pickle`; `load` checks every file first with `weights_only` and the few DeepSpeed
classes they hold, as every other checkpoint file is read.

DeepSpeed is an optional dependency (`pip install 'lmtune[deepspeed]'`), imported only here.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lmtune.errors import LmtuneError
from lmtune.distributed.base import Sharded
from lmtune.models.params import trainable_state as local_trainable_state

TAG = "zero"  # the one tag under shards/: lmtune's step dirs already name the step


MISSING = ("train.distributed=deepspeed needs DeepSpeed: pip install 'lmtune[deepspeed]' "
           "(deepspeed==0.19.8)")


def require() -> None:
    """Fail before any process starts where DeepSpeed is not installed (without importing
    it: that takes a quarter of a second)."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise LmtuneError(MISSING)


def _deepspeed():
    try:
        import deepspeed
    except ImportError:
        raise LmtuneError(MISSING) from None
    return deepspeed


# DeepSpeed sizes its buffers for GPUs and large models: 5e8-element (2 GB fp32) reduce and
# all-gather buckets, and ZeRO-3 keeps up to 1e9 gathered parameters alive between their
# forward and backward use, i.e. the whole model below a billion parameters. With those
# defaults a 2-process SmolLM2-135M run peaked higher under ZeRO-3 than under DDP
# (bench/distributed.py). 6.25M elements is DDP's 25 MB bucket; ZeRO-3 then frees each
# block's weights after use, as FSDP does. No prefetching: with these limits it stopped
# ZeRO-3 with "Cannot partition a param in flight" (SmolLM2, whose output layer is tied to
# the input embeddings).
BUCKET = 6_250_000
BUCKETS = {"reduce_bucket_size": BUCKET, "allgather_bucket_size": BUCKET,
           "stage3_prefetch_bucket_size": 0, "stage3_max_live_parameters": BUCKET,
           "stage3_max_reuse_distance": BUCKET}


def engine_config(tc, stage: int, bf16: bool) -> dict:
    """The DeepSpeed config lmtune's train settings make."""
    return {
        "train_micro_batch_size_per_gpu": tc.batch_size,
        "gradient_accumulation_steps": tc.grad_accum,
        "gradient_clipping": tc.max_grad_norm,
        "zero_optimization": {"stage": stage, **BUCKETS},
        "managed_gradient_accumulation": False,  # lmtune's step() is the boundary
        "zero_allow_untested_optimizer": True,  # torch's (fused) AdamW
        "steps_per_print": 2**31 - 1,  # lmtune logs
        "wall_clock_breakdown": False,
        # DeepSpeed's own mixed precision: bf16 weights, an fp32 master copy in the
        # optimizer's partitions. With fp32 weights DeepSpeed still keeps its master copy
        # beside them: 2-process SmolLM2-135M peaked at 3,226 MB (ZeRO-2) and 3,370 MB
        # (ZeRO-3), 2,894 and 2,899 MB this way, and ran 25-40% faster (bench/distributed.py).
        "bf16": {"enabled": bf16},
    }


class Zero(Sharded):
    """A model and optimizer under one DeepSpeed engine, with the state helpers the loop
    needs: best weights, checkpoints and the final save. All but `trainable_state` are
    collectives (every rank calls them, in the same order)."""

    def __init__(self, accelerator, tc, precision: str):
        super().__init__(accelerator, tc, precision)
        self.stage = tc.zero_stage
        self.name = f"deepspeed-zero{self.stage}"
        self.engine = None

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> nn.Module:
        """The engine runs the model; its `step()` updates."""
        deepspeed = _deepspeed()
        # keeps the process group accelerate made
        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
        self.engine, *_ = deepspeed.initialize(
            model=model, optimizer=optimizer,
            config=engine_config(self.tc, self.stage, self.precision == "bf16"))
        self.model, self.optimizer = self.engine, optimizer
        return self.engine

    @property
    def module(self) -> nn.Module:
        return self.engine.module

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self, after_update=None) -> None:
        """Reduce (stage 1), clip, update: the end of one optimizer step on every rank.
        ZeRO averages over ranks as DDP does. (No method that acts between steps runs
        under ZeRO: its config check refuses.)"""
        self.engine.step()

    # ------------------------------------------------------------------ best weights

    def _trainable(self):
        return [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """A copy of this rank's trainable weights: whole tensors below stage 3, the rank's
        partitions (flat) at stage 3. Nothing is gathered."""
        if self.stage < 3:
            return local_trainable_state(self.module)
        return {n: p.ds_tensor.detach().clone() for n, p in self._trainable()}

    def load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        """Put `trainable_state`'s copy back into the model (the optimizer's own fp32 copy
        is left alone: no step follows). Stage 3: a collective."""
        if self.stage < 3:
            self.module.load_state_dict(state, strict=False)
            return
        world = torch.distributed.get_world_size()
        with torch.no_grad():
            for n, p in self._trainable():
                p.ds_tensor.copy_(state[n])
                if p.ds_persist:  # small tensors stay whole on every rank: refresh them too
                    part = p.ds_tensor.reshape(-1)
                    whole = part.new_empty(world * part.numel())  # rank-major partitions
                    torch.distributed.all_gather_into_tensor(whole, part)
                    p.data.copy_(whole[:p.ds_numel].view(p.ds_shape))

    # ------------------------------------------------------------------- checkpoints

    def save_shards(self, best: dict | None, path: Path) -> None:
        """Every rank writes its partition of weights and AdamW state into `path`, and the
        best weights where `_best_file` says."""
        from safetensors.torch import save_file

        self.engine.save_checkpoint(str(path), tag=TAG, save_latest=False,
                                    exclude_frozen_parameters=True)
        if best is not None and (self.stage == 3 or torch.distributed.get_rank() == 0):
            save_file({k: v.contiguous() for k, v in best.items()}, self._best_file(path))
        torch.distributed.barrier()

    def _best_file(self, path: Path) -> Path:
        """Where this rank's best weights are: its own partitions at stage 3; below it,
        every rank holds the same whole tensors, so rank 0's one copy serves all."""
        rank = torch.distributed.get_rank() if self.stage == 3 else 0
        return path / f"best-{rank}.safetensors"

    def load_shards(self, path: Path) -> dict | None:
        """Read `save`'s checkpoint back into the engine; returns this rank's best weights,
        or None."""
        from safetensors.torch import load_file

        for f in sorted((path / TAG).glob("*.pt")):
            _check_plain(f)
        try:
            loaded, _ = self.engine.load_checkpoint(str(path), tag=TAG,
                                                    load_module_strict=False,
                                                    load_lr_scheduler_states=False)
        except Exception as e:  # noqa: BLE001 - DeepSpeed raises many kinds on a mismatch
            raise LmtuneError(f"checkpoint {path}: could not read its DeepSpeed state; does it "
                              f"match this model, method and zero_stage? "
                              f"({type(e).__name__}: {str(e)[:300]})") from None
        if loaded is None:
            raise LmtuneError(f"checkpoint {path}: DeepSpeed found no state under {TAG}/")
        best = self._best_file(path)
        return load_file(best) if best.exists() else None

    # -------------------------------------------------------------------- final save

    def full_state(self) -> dict[str, torch.Tensor]:
        """Every tensor of the model, whole, on rank 0 ({} on the others). Stage 3 gathers
        one parameter at a time, so no rank ever holds two whole copies."""
        keep = torch.distributed.get_rank() == 0
        if self.stage < 3:
            return dict(self.module.state_dict()) if keep else {}
        from deepspeed.runtime.zero.partition_parameters import GatheredParameters

        out, seen = {}, {}
        for name, t in self.module.state_dict(keep_vars=True).items():
            if id(t) not in seen:
                params = [t] if hasattr(t, "ds_id") else []  # buffers are never partitioned
                with GatheredParameters(params, modifier_rank=None):
                    seen[id(t)] = t.detach().clone() if keep else None
            if keep:
                out[name] = seen[id(t)]
        return out


def _allowed_classes() -> list:
    """What DeepSpeed 0.19.8's checkpoint files hold besides tensors and plain data."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def _check_plain(path: Path) -> None:
    """Refuse a checkpoint file that holds anything but tensors, plain data and the
    DeepSpeed classes it normally holds: DeepSpeed itself unpickles it unrestricted."""
    try:
        with torch.serialization.safe_globals(_allowed_classes()):
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - an unpickling refusal has many types
        raise LmtuneError(f"checkpoint {path}: refused to load it (only tensors, plain data "
                          f"and DeepSpeed's own state classes are read): {e}") from None
