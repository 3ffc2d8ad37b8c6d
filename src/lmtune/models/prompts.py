"""What prompt-learning adapters (prefix, prompt and P-tuning, through peft) need from the
models they wrap: a backbone peft can hand a prefix to, and the number of positions they
prepend to the input."""
from __future__ import annotations

import inspect

from torch import nn


def let_peft_pass_prefixes(model: nn.Module) -> nn.Module:
    """Prefix tuning hands its learned keys and values to the model as `past_key_values`,
    but transformers 5 encoders (BERT, RoBERTa, ...) take them as `cache`, so peft's check
    of the backbone's signature refuses them ("Model does not support past key values").
    Give such a backbone a forward that takes the old name and passes it on. Idempotent;
    a no-op for every other model."""
    config = getattr(model, "active_peft_config", None)
    # only peft's encoder-style wrappers (classification) call the backbone themselves
    name = vars(model).get("transformer_backbone_name")
    if config is None or config.peft_type != "PREFIX_TUNING" or not name \
            or not hasattr(type(model), "_prefix_tuning_forward"):
        return model
    if "past_key_values" in inspect.signature(model.base_model.forward).parameters:
        return model  # peft hands the prefix to the whole model, which takes it
    backbone = model.base_model.get_submodule(name)
    params = inspect.signature(backbone.forward).parameters
    if "past_key_values" in params or "cache" not in params:
        return model
    forward = backbone.forward

    def forward_with_prefix(*args, past_key_values=None, **kwargs):
        return forward(*args, cache=past_key_values, **kwargs)

    backbone.forward = forward_with_prefix
    return model


def prepended_positions(model: nn.Module) -> int:
    """How many positions the model adds in front of its input: prompt and P-tuning prepend
    `num_virtual_tokens` embeddings, so the outputs are [B, V + T, ...] for an input of
    [B, T]; prefix tuning puts its prefix in the attention cache, adding none."""
    model = getattr(model, "module", model)  # DDP, DeepSpeed
    config = getattr(model, "active_peft_config", None)
    if config is None or not config.is_prompt_learning or config.peft_type == "PREFIX_TUNING":
        return 0
    return config.num_virtual_tokens
