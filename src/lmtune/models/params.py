"""Parameter helpers every method and strategy uses: counts, copies, bf16 storage, dropout."""
from __future__ import annotations

import torch
from torch import nn


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts (of the whole tensors, also where DeepSpeed ZeRO-3
    left each rank a partition)."""
    total = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()
                    if p.requires_grad)
    return trainable, total


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the trainable tensors (for keeping the best model)."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()
            if p.requires_grad}


def hold_frozen_linears_in_bf16(model: nn.Module) -> int:
    """Store the weights of frozen linear layers in bf16; returns how many were converted.

    Under bf16 autocast every matmul casts its fp32 weight to bf16 anyway, each step anew; a
    frozen weight can hold that bf16 copy once and for all: the same numbers reach the
    matmul, at half the memory and without the per-step casts. Embeddings, norms and every
    trainable tensor stay fp32, and so does an output layer tied to the input embeddings
    (casting it would cast the embeddings too).
    """
    tied = model.get_input_embeddings().weight if hasattr(model, "get_input_embeddings") \
        else None
    done = 0
    for module in model.modules():
        w = getattr(module, "weight", None)
        if isinstance(module, nn.Linear) and w is not None and not w.requires_grad \
                and w is not tied and w.dtype == torch.float32:
            module.weight.data = w.data.to(torch.bfloat16)
            if module.bias is not None and not module.bias.requires_grad:
                module.bias.data = module.bias.data.to(torch.bfloat16)
            done += 1
    return done


def set_dropout(model: nn.Module, p: float) -> int:
    """Set every dropout probability in `model` to `p`; returns how many were set.

    Covers `nn.Dropout` modules (BERT-family models read their attention dropout from one)
    and the float `attention_dropout` that Llama-style attention modules keep instead.
    """
    done = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
            done += 1
        elif isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = p
            done += 1
    return done
