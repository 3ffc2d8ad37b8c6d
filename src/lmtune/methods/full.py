"""`method=full`: every weight trains."""
from __future__ import annotations

from torch import nn

from lmtune.methods import Method, register


def apply_full(model: nn.Module, cfg, task) -> nn.Module:
    model.requires_grad_(True)
    return model


FULL = register(Method("full", apply_full, "train every weight", bf16_frozen=False))
