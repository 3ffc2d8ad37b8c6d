"""LoRA through peft: low-rank adapters on the attention and MLP projections, by module
name; the new head (a classifier) trains whole."""
from __future__ import annotations

import warnings

from torch import nn

from lmtune.errors import LmtuneError
from lmtune.methods import Method, register

# Per-architecture LoRA targets; anything else gets peft's "all-linear".
LORA_TARGETS = {
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "xlm-roberta": ["query", "key", "value", "dense"],
    "electra": ["query", "key", "value", "dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
}


def apply_lora(model: nn.Module, cfg, task) -> nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model

    targets = cfg.lora.target_modules or LORA_TARGETS.get(model.config.model_type,
                                                          "all-linear")
    lora = LoraConfig(task_type=getattr(TaskType, task.peft_type) if task.peft_type else None,
                      r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                      lora_dropout=cfg.lora.dropout, target_modules=targets)
    try:
        with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            return get_peft_model(model, lora)
    except ValueError as e:  # no module matched target_modules
        raise LmtuneError(f"lora.target_modules: {e}") from None


LORA = register(Method("lora", apply_lora, "low-rank adapters (peft) on the projections",
                       section="lora", mergeable=True, adapter=True))
