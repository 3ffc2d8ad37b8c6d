"""`method=adalora`: LoRA whose rank moves during training to the layers that need it
(AdaLoRA, through peft). Each adapted layer starts at 1.5 × `lora.r` singular values
(P Λ Q, with Λ trained); the total budget shrinks to `lora.r` per layer on average, keeping
the values with the highest smoothed importance (|weight × gradient|).

    steps   0 ······· tinit ·········· T - tfinal ········· T
            all ranks │ budget falls,  │ ranks fixed,
                      │ masks move     │ training goes on

The schedule needs the run's total steps, known once the data is encoded, so AdaLoRA is
configured in two steps: `apply` builds the adapter, `hooks` (called by `prepare`) sets its
schedule and returns what the loop calls: the reallocation after each optimizer update
(before the gradients are cleared: importance reads them), the orthogonality penalty on
P and Q (peft adds it only to a loss the model computes itself; lmtune computes its own), and
the allocator's state for checkpoints, so a resumed run reallocates exactly as an unbroken
one.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from lmtune.config import ConfigError
from lmtune.methods import Method, register
from lmtune.methods.adapters import check_not_lora, peft_method

WARMUP_SHARE, FINAL_SHARE = 0.1, 0.2  # of all steps: all ranks at first; fixed ranks last


def adalora_config(s, targets, task_type):
    from peft import AdaLoraConfig

    # total_step is a placeholder until `AdaLora` learns the run's length
    return AdaLoraConfig(task_type=task_type, target_r=s.r, init_r=math.ceil(1.5 * s.r),
                         lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=targets,
                         total_step=1)


class AdaLora:
    """What the training loop calls for an AdaLoRA model (`Method.hooks`)."""

    def __init__(self, model: nn.Module, total_steps: int):
        self.model = model  # the PeftModel
        self.config = model.peft_config[model.active_adapter]
        self.config.total_step = total_steps
        self.config.tinit = int(WARMUP_SHARE * total_steps)
        self.config.tfinal = int(FINAL_SHARE * total_steps)
        self.allocator = model.base_model.rankallocator

    def after_update(self, step: int) -> None:
        """`step`: the optimizer steps done, this one included."""
        self.model.base_model.update_and_allocate(step)

    def penalty(self) -> torch.Tensor:
        """Mean over adapted layers of ‖P Pᵀ − I‖_F and ‖Qᵀ Q − I‖_F, times
        `orth_reg_weight`: keeps P and Q near-orthogonal, so Λ holds the singular values."""
        terms = []
        for name, p in self.model.named_parameters():
            if p.requires_grad and (".lora_A." in name or ".lora_B." in name):
                gram = p @ p.T if ".lora_A." in name else p.T @ p  # [r, r]
                eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
                terms.append(torch.linalg.matrix_norm(gram - eye))
        return self.config.orth_reg_weight * torch.stack(terms).mean()

    def state_dict(self) -> dict:
        a = self.allocator
        return {"ipt": a.ipt, "exp_avg_ipt": a.exp_avg_ipt, "exp_avg_unc": a.exp_avg_unc,
                "rank_pattern": self.config.rank_pattern}

    def load_state_dict(self, state: dict) -> None:
        a = self.allocator
        a.ipt, a.exp_avg_ipt, a.exp_avg_unc = (state["ipt"], state["exp_avg_ipt"],
                                               state["exp_avg_unc"])
        self.config.rank_pattern = state["rank_pattern"]


def check_adalora(cfg, task) -> None:
    check_not_lora(cfg, task)
    if cfg.train.distributed != "ddp":
        raise ConfigError("train.distributed", "method=adalora scores every adapter weight "
                          "against its whole gradient after each step, which a sharded "
                          f"model ({cfg.train.distributed}) does not hold; use ddp")


ADALORA = register(Method(
    "adalora", peft_method(adalora_config), "LoRA whose ranks move to the layers that need "
    "them", section="lora", mergeable=True, adapter=True, default_lr=2e-2,
    check=check_adalora, hooks=AdaLora))
