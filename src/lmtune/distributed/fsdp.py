"""`train.distributed=fsdp`: shard parameters, gradients and optimizer state over the
processes with torch's FSDP2 (`fully_shard`), on CPU (gloo) and CUDA (nccl) alike.

accelerate 1.15 enables its FSDP plugin only for GPU distributed types, so lmtune calls
`fully_shard` itself (the call accelerate's FSDP2 path makes) and keeps accelerate for the
process group, device, reductions and barriers. Each transformer block the model lists in
`_no_split_modules` becomes one FSDP unit, the root a last one: a block's weights are
all-gathered just before its forward (and backward) and freed after, so a rank holds its
1/N shard of every weight plus one whole block at a time.

Nothing is gathered while training runs: the best weights are kept as each rank's shards,
and checkpoints are written shard by shard with torch.distributed.checkpoint. Only the final
save gathers whole tensors, one at a time, onto rank 0. `save_shards`, `load_shards` and
`full_state` are collectives: every rank calls them, in the same order.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from lmtune.distributed.base import Sharded
from lmtune.errors import LmtuneError


def shard_model(model: nn.Module, device: torch.device, world: int,
                precision: str = "fp32") -> nn.Module:
    """Apply `fully_shard` to every transformer block, then to the root; returns the model.

    bf16: the shards stay fp32 (as do the optimizer's updates and the gradients' reduction),
    and each block is gathered in bf16, the dtype autocast would cast it to anyway. Casting
    after the gather instead would keep a bf16 copy of every weight alive for the backward;
    gathered in bf16, FSDP frees and regathers them.

    A block holding the input embeddings is left to the root: an output layer tied to them
    (MLM heads, small decoders) must share one FSDP unit with them.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if precision == "bf16" else MixedPrecisionPolicy()
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    embeddings = model.get_input_embeddings().weight
    units = [m for m in model.modules() if type(m).__name__ in blocks
             and all(p is not embeddings for p in m.parameters())]
    if not units:
        raise LmtuneError(f"train.distributed=fsdp: {type(model).__name__} names no "
                          "transformer blocks (_no_split_modules) to shard; use ddp")
    for m in units:
        if not any(u is not m and _contains(u, m) for u in units):  # outermost blocks only
            fully_shard(m, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def _contains(outer: nn.Module, inner: nn.Module) -> bool:
    return any(m is inner for m in outer.modules())


def _resharded(model: nn.Module) -> nn.Module:
    """The model with every FSDP unit holding only its shards. A forward without backward
    (validation) leaves the root unit gathered, and its parameters are then plain whole
    tensors, not the DTensor shards that state and optimizer code expect."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()
    return model


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the trainable tensors (the best weights so far): each rank copies
    its own shards (DTensors); nothing is gathered."""
    return {n: p.detach().clone() for n, p in _resharded(model).named_parameters()
            if p.requires_grad}


def load_trainable(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put `trainable_state`'s copy back, each rank its own shards."""
    with torch.no_grad():
        for n, p in _resharded(model).named_parameters():
            if n in state:
                p.copy_(state[n])


def _states(model: nn.Module, optimizer, best: dict | None) -> dict:
    """What a sharded checkpoint holds, as DTensors: the trainable weights, AdamW's state,
    and the best weights so far."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                         get_model_state_dict,
                                                         get_optimizer_state_dict)

    _resharded(model)
    state = {"model": get_model_state_dict(model, options=StateDictOptions(
        ignore_frozen_params=True)), "optimizer": get_optimizer_state_dict(model, optimizer)}
    if best is not None:
        state["best"] = best
    return state


def save_shards(model: nn.Module, optimizer, best: dict | None, path: Path) -> None:
    """Every rank writes its shards into `path`: no rank ever holds more than its own share
    of the weights or of AdamW's state."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_states(model, optimizer, best), checkpoint_id=path)


# What the metadata of a torch.distributed.checkpoint holds (torch 2.13); nothing else may be
# unpickled from it.
_METADATA_GLOBALS = {("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("torch", "Size"),
                     ("torch.serialization", "_get_layout"),
                     ("torch.distributed.checkpoint.filesystem", "_StorageInfo")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if ((module, name) in _METADATA_GLOBALS
                or module == "torch.distributed.checkpoint.metadata"
                or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype))):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in checkpoint metadata")


def _safe_reader(path: Path):
    """torch.distributed.checkpoint's reader and load planner unpickle with plain pickle
    (the metadata, and non-tensor values such as AdamW's hyperparameters): a tampered
    checkpoint could run code. Both are checked first, with only plain data allowed, as
    every other checkpoint file is read (`weights_only`)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    class Reader(dcp.FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            with open(Path(path) / ".metadata", "rb") as f:
                _MetadataUnpickler(f).load()
            return super().read_metadata(*args, **kwargs)

    class Planner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value):
            torch.load(value, weights_only=True)
            value.seek(0)
            super().load_bytes(read_item, value)

    return Reader(path), Planner()


def load_shards(model: nn.Module, optimizer, path: Path) -> dict | None:
    """Read `save_shards`'s checkpoint back into the model and optimizer, each rank its own
    shards; returns the best weights (as `trainable_state` makes them), or None."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                         set_model_state_dict,
                                                         set_optimizer_state_dict)

    reader, planner = _safe_reader(path)
    try:
        saved = reader.read_metadata().state_dict_metadata
        has_best = any(k.startswith("best.") for k in saved)
        state = _states(model, optimizer, trainable_state(model) if has_best else None)
        dcp.load(state, storage_reader=reader, planner=planner)
    except Exception as e:  # noqa: BLE001 - DCP wraps a missing key or a refusal its own way
        raise LmtuneError(f"checkpoint {path}: could not read its shards; do they match this "
                          f"model and method? ({type(e).__name__}: {str(e)[:300]})") from None
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=False))
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
    return state.get("best")


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of a sharded model, whole, on rank 0 ({} on the others): what
    `save_pretrained` writes.

    Gathered one tensor at a time, and only rank 0 keeps them: rank 0 then holds one whole
    copy of the model, the others none, and tied weights stay one tensor under both names.
    """
    import torch.distributed as tdist
    from torch.distributed.tensor import DTensor

    keep = tdist.get_rank() == 0
    whole: dict[int, torch.Tensor | None] = {}
    out = {}
    for name, t in _resharded(model).state_dict().items():
        if id(t) not in whole:  # every rank takes part in every gather
            full = t.full_tensor() if isinstance(t, DTensor) else t
            whole[id(t)] = full.detach().cpu() if keep else None
        if keep:
            out[name] = whole[id(t)]
    return out


class Fsdp(Sharded):
    """`train.distributed=fsdp`: the model sharded before the optimizer is built; accelerate
    keeps the process group, device, reductions and barriers."""

    name = "fsdp"

    def shard(self, model: nn.Module) -> nn.Module:
        return shard_model(model, self.device, self.world, self.precision)

    def wrap(self, model: nn.Module, optimizer) -> nn.Module:
        self.model, self.optimizer = model, optimizer
        return model

    @property
    def module(self) -> nn.Module:
        return self.model

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return trainable_state(self.module)

    def load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        load_trainable(self.module, state)

    def save_shards(self, best: dict | None, path: Path) -> None:
        save_shards(self.module, self.optimizer, best, path)

    def load_shards(self, path: Path) -> dict | None:
        return load_shards(self.module, self.optimizer, path)

    def full_state(self) -> dict[str, torch.Tensor]:
        return full_state(self.module)
