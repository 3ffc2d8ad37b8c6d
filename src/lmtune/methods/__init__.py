"""Fine-tuning methods: `method=` names an entry of this registry.

Each entry declares its config section, how it is applied to a loaded model, whether its
result can be merged into the base weights, how the base model must be loaded for it, and
its default learning rate. A new method is one `register(Method(...))` in a module here
(imported below), plus its config section in config.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from lmtune.errors import LmtuneError


@dataclass(frozen=True)
class Method:
    name: str
    apply: Callable  # (model, cfg, task) -> the model to train, requires_grad set
    help: str
    section: str | None = None  # the config section that holds its settings
    mergeable: bool = False  # an adapter that folds into the base weights for inference
    adapter: bool = False  # saves an adapter dir (peft) rather than a whole model
    # How the base is loaded: fp32 master weights; bf16 runs under autocast.
    load_dtype: str = "float32"
    # Under bf16 autocast, frozen linear weights are held in bf16 (the same numbers reach
    # every matmul, at half the memory): only where something is frozen.
    bf16_frozen: bool = True
    # The peak LR when train.lr is unset.
    default_lr: float = 7e-5
    # (cfg) -> a function of a parameter's name giving its LR multiplier, or None (all 1).
    lr_scale: Callable | None = None
    # How the frozen base is quantized unless `quantize=` says otherwise: none, int8, nf4.
    quantize: str = "none"
    # (cfg, task) -> None: the config checks only this method knows (raise ConfigError).
    check: Callable | None = None
    # (model, total_steps) -> what the loop calls during training, for a method that acts
    # between steps (AdaLoRA): after_update(step) after each optimizer update, before the
    # gradients are cleared; penalty() -> a loss term added once per step; state_dict() and
    # load_state_dict() for checkpoints.
    hooks: Callable | None = None


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise LmtuneError(f"method: must be one of {', '.join(METHODS)}; got {name!r}") \
            from None


def apply_method(model: nn.Module, cfg, task) -> nn.Module:
    """Return the model to train, with `requires_grad` set by `cfg.method`."""
    return get_method(cfg.method).apply(model, cfg, task)


from lmtune.methods import full, adapters, adalora, freeze, bitfit, prompts  # noqa: E402,F401,I001 - each registers itself

__all__ = ["METHODS", "Method", "apply_method", "get_method", "register"]
