"""`train.distributed=fsdp`: shard parameters, gradients and optimizer state over the
processes with torch's FSDP2 (`fully_shard`), on CPU (gloo) and CUDA (nccl) alike.

accelerate 1.15 enables its FSDP plugin only for GPU distributed types, so lmtune calls
`fully_shard` itself (the call accelerate's FSDP2 path makes) and keeps accelerate for the
process group, device, reductions and barriers. Each transformer block the model lists in
`_no_split_modules` becomes one FSDP unit, the root a last one: a block's weights are
all-gathered just before its forward (and backward) and freed after, so a rank holds its
1/N shard of every weight plus one whole block at a time.

Reading or writing whole tensors is then a collective: every helper below that takes
`sharded=True` must be called on every rank, in the same order. With `sharded=False` they
are the plain single-copy operations (DDP, or one process).
"""
from __future__ import annotations

import torch
from torch import nn

from lmtune.errors import LmtuneError
from lmtune.models.methods import trainable_state as local_trainable_state


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


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


def trainable_state(model: nn.Module, sharded: bool) -> dict[str, torch.Tensor]:
    """Whole CPU copies of the trainable tensors. Sharded: gathered on every rank, kept on
    rank 0 only (the others get {})."""
    if not sharded:
        return local_trainable_state(model)
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True,
                                                        ignore_frozen_params=True))


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of a sharded model, whole, on rank 0 ({} on the others): what
    `save_pretrained` writes.

    Gathered one tensor at a time, and only rank 0 keeps them: rank 0 then holds one whole
    copy of the model (`get_model_state_dict` peaked at several copies), and tied weights
    stay one tensor under both names.
    """
    import torch.distributed as tdist
    from torch.distributed.tensor import DTensor

    keep = tdist.get_rank() == 0
    whole: dict[int, torch.Tensor] = {}
    out = {}
    for name, t in model.state_dict().items():
        if id(t) not in whole:
            full = t.full_tensor() if isinstance(t, DTensor) else t
            whole[id(t)] = full.detach().cpu() if keep else full[:0]
        if keep:
            out[name] = whole[id(t)]
    return out


def load_trainable(model: nn.Module, state: dict[str, torch.Tensor], sharded: bool) -> None:
    """Put whole trainable tensors back. Sharded: rank 0's `state` is broadcast and each rank
    keeps its shard."""
    if not sharded:
        model.load_state_dict(state, strict=False)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    # A copy: set_model_state_dict fills the dict it is given with the model's own shards.
    set_model_state_dict(model, dict(state), options=_options(strict=False,
                                                              broadcast_from_rank0=True))


def optimizer_state(model: nn.Module, optimizer, sharded: bool) -> dict:
    """The optimizer state to checkpoint. Sharded: whole tensors keyed by parameter name,
    on rank 0 ({} on the others); else torch's own, keyed by parameter index."""
    if not sharded:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))


def load_optimizer_state(model: nn.Module, optimizer, state: dict, sharded: bool) -> None:
    """Restore `optimizer_state`'s output; each rank passes the state it loaded."""
    keys = list(state.get("state", {}))
    by_name = bool(keys) and isinstance(keys[0], str)
    if keys and by_name != sharded:
        raise LmtuneError("checkpoint: its optimizer state was written with train.distributed="
                          f"{'fsdp' if by_name else 'ddp'}; resume with the same setting")
    if not sharded:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_options())
