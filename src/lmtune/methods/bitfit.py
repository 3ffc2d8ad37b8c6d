"""Methods that train a sliver of the model's own weights: its biases (`bitfit`) or its
normalization gains and biases (`norms`), plus the task's new head where it has one."""
from __future__ import annotations

from torch import nn

from lmtune.errors import LmtuneError
from lmtune.methods import Method, register


def train_only(model: nn.Module, task, keep) -> int:
    """Freeze everything but the parameters `keep(name, module)` picks and the task's head;
    returns how many tensors `keep` picked."""
    model.requires_grad_(False)
    picked = 0
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            name = f"{mname}.{pname}" if mname else pname
            if keep(pname, module):
                p.requires_grad_(True)
                picked += 1
            elif set(name.split(".")) & set(task.head_modules):
                p.requires_grad_(True)
    return picked


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, and the RMSNorm classes models define themselves (LlamaRMSNorm...)."""
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or \
        type(module).__name__.endswith(("LayerNorm", "RMSNorm"))


def apply_bitfit(model: nn.Module, cfg, task) -> nn.Module:
    if not train_only(model, task, lambda name, _: name == "bias"):
        raise LmtuneError(f"method=bitfit: {model.config.model_type} has no bias tensors "
                          "(Llama-style decoders have none); method=norms trains the "
                          "normalization gains instead")
    return model


def apply_norms(model: nn.Module, cfg, task) -> nn.Module:
    if not train_only(model, task, lambda _, module: is_norm(module)):
        raise LmtuneError(f"method=norms: found no normalization layer in "
                          f"{model.config.model_type}")
    return model


# Biases and gains are few and move little per step: rates 100x full fine-tuning's, chosen
# by measurement as the adapters' were (methods/adapters.py).
BITFIT = register(Method("bitfit", apply_bitfit, "train the biases (and a new head)",
                         default_lr=7e-3))
NORMS = register(Method("norms", apply_norms, "train the normalization gains and biases "
                        "(and a new head)", default_lr=7e-3))
