"""`method=freeze`: the head, the top `freeze.layers` blocks and what follows them train;
the embeddings and the lower blocks stay as pretrained."""
from __future__ import annotations

from torch import nn

from lmtune.errors import LmtuneError
from lmtune.methods import Method, register


def apply_freeze(model: nn.Module, cfg, task) -> nn.Module:
    freeze_lower_layers(model, cfg.freeze.layers)
    return model


def layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The transformer block list: the `nn.ModuleList` holding the most parameters."""
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise LmtuneError("method=freeze: found no layer list in this model")
    return max(lists, key=lambda nm: sum(p.numel() for p in nm[1].parameters()))


def freeze_lower_layers(model: nn.Module, top: int) -> None:
    """Train the head, the top `top` blocks and what follows them (pooler, final norm).

        embeddings  block 0 … block L-top-1 | block L-top … block L-1  pooler  classifier
        ────────── frozen ────────────────  | ─────────────── trained ────────────────────
    """
    name, blocks = layer_stack(model)
    if top > len(blocks):
        raise LmtuneError(f"freeze.layers: {top} is more than the model's {len(blocks)} layers")
    first_trained = len(blocks) - top
    trained_blocks = {id(p) for b in list(blocks)[first_trained:] for p in b.parameters()}
    stack_params = {id(p) for p in blocks.parameters()}
    past_stack = False
    for pname, p in model.named_parameters():
        in_stack = id(p) in stack_params
        past_stack = past_stack or (in_stack and pname.startswith(name))
        if in_stack:
            p.requires_grad_(id(p) in trained_blocks)
        else:  # before the stack: embeddings (frozen); after it: pooler, norms, head
            p.requires_grad_(past_stack)


FREEZE = register(Method("freeze", apply_freeze, "train the head and the top freeze.layers "
                         "layers", section="freeze", default_lr=2e-4))  # as measured: adapters.py
