"""Optimizer and LR schedule."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from lmtune.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig,
                    lr_scale: Callable[[str], float] | None = None) -> torch.optim.Optimizer:
    """AdamW, fused where the build supports it; no weight decay on biases and norms.

    `lr_scale(name)` multiplies the learning rate of some tensors (LoRA+ trains the B
    matrices faster); the schedule scales every group alike, so the ratio holds throughout.
    """
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = (p.ndim >= 2, lr_scale(name) if lr_scale else 1.0)
            groups.setdefault(key, []).append(p)
    # No empty group (LoRA on a model without biases): DeepSpeed drops those, and the LR
    # schedule, built with one entry per group, would no longer match.
    params = [{"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0,
               "lr": cfg.lr * scale}
              for (decay, scale), ps in sorted(groups.items(), key=lambda kv: (not kv[0][0],
                                                                              kv[0][1]))]
    try:
        return torch.optim.AdamW(params, lr=cfg.lr, fused=True)
    except (RuntimeError, TypeError):  # fused needs float tensors on a supported device
        return torch.optim.AdamW(params, lr=cfg.lr, foreach=True)


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    """`train.warmup` below 1 is a share of all steps, otherwise a step count."""
    return round(cfg.warmup * total_steps) if cfg.warmup < 1 else int(cfg.warmup)


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the peak LR for optimizer step `step` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return max(0.0, 1.0 - progress)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """A LambdaLR stepped once per optimizer step (never prepared by accelerate, which would
    step it once per process)."""
    warmup = warmup_steps(cfg, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total_steps, cfg.schedule))
