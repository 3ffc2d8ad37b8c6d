"""Prompt learning through peft: the model stays frozen whole, and what trains is a few
learned tokens in front of every input (`prompt.virtual_tokens` of them).

    prompt   embeddings prepended to the input (prompt tuning)
    ptuning  the same, made by a small MLP from their own embeddings (P-tuning)
    prefix   keys and values prepended in every attention layer (prefix tuning)

A new task head (a classifier) trains beside them. They save a PEFT adapter dir and cannot
be merged into the base weights: the tokens are input, not a weight update.
"""
from __future__ import annotations

import torch
from torch import nn

from lmtune.config import ConfigError
from lmtune.methods import Method, register
from lmtune.methods.adapters import peft_method
from lmtune.models.prompts import let_peft_pass_prefixes


def check_prompt_method(cfg, task) -> None:
    if task.peft_type is None:
        raise ConfigError("method", f"{cfg.method} needs peft's support for task="
                          f"{task.name}, which it lacks; use lora or another adapter")
    if cfg.data.packing:
        raise ConfigError("data.packing", f"method={cfg.method} puts learned tokens in front "
                          "of each row, so the samples packed into a row would share them; "
                          "set data.packing=false")


def check_prefix(cfg, task) -> None:
    check_prompt_method(cfg, task)
    if cfg.train.gradient_checkpointing:  # peft refuses the combination
        raise ConfigError("train.gradient_checkpointing", "method=prefix keeps its prefix in "
                          "the attention cache, which gradient checkpointing cannot "
                          "recompute; set it to false or use method=prompt")


def prompt_config(s, targets, task_type):
    from peft import PromptTuningConfig

    return PromptTuningConfig(task_type=task_type, num_virtual_tokens=s.virtual_tokens)


def ptuning_config(s, targets, task_type):
    from peft import PromptEncoderConfig

    return PromptEncoderConfig(task_type=task_type, num_virtual_tokens=s.virtual_tokens,
                               encoder_hidden_size=s.encoder_hidden)


def prefix_config(s, targets, task_type):
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=s.virtual_tokens)


def apply_prompt(model: nn.Module, cfg, task) -> nn.Module:
    model = peft_method(prompt_config, "prompt")(model, cfg, task)
    if cfg.prompt.init_text:
        start_from_text(model, cfg)
    return model


def start_from_text(model: nn.Module, cfg) -> None:
    """Set the virtual tokens to the embeddings of `prompt.init_text`'s tokens, repeated to
    length: a task description is a better start than noise (Lester et al., 2021)."""
    from lmtune.models.load import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(cfg.model, cfg.cache_dir), cfg.trust_remote_code)
    ids = tokenizer(cfg.prompt.init_text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError("prompt.init_text", "has no tokens")
    n = cfg.prompt.virtual_tokens
    ids = torch.tensor((ids * (n // len(ids) + 1))[:n])
    table = model.prompt_encoder[model.active_adapter].embedding.weight  # [V, hidden]
    with torch.no_grad():
        table.copy_(model.get_input_embeddings()(ids).to(table.dtype))


def prompt_method(name: str, apply, help: str, default_lr: float,
                  check=check_prompt_method) -> Method:
    return register(Method(name, apply, help, section="prompt", adapter=True,
                           default_lr=default_lr, check=check))


# Default rates as measured for the adapters (methods/adapters.py). P-tuning's MLP learned
# nothing below 0.1 in the measured runs; its best rates were 1 and 3.
PROMPT = prompt_method("prompt", apply_prompt, "learned embeddings prepended to the input",
                       3e-2)
PTUNING = prompt_method("ptuning", peft_method(ptuning_config, "prompt"),
                        "P-tuning: prepended embeddings made by a small MLP", 1.0)
PREFIX = prompt_method("prefix", lambda model, cfg, task: let_peft_pass_prefixes(
    peft_method(prefix_config, "prompt")(model, cfg, task)),
    "learned keys and values prepended in every attention layer", 1e-1, check_prefix)
