"""Fine-tuning methods: which parameters train. Adapters come from peft, by module name."""
from __future__ import annotations

import warnings

import torch
from torch import nn

from lmtune.config import Config
from lmtune.errors import LmtuneError

# Per-architecture LoRA targets; anything else gets peft's "all-linear".
LORA_TARGETS = {
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "xlm-roberta": ["query", "key", "value", "dense"],
    "electra": ["query", "key", "value", "dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
}


def apply_method(model: nn.Module, cfg: Config) -> nn.Module:
    """Return the model to train, with `requires_grad` set by `cfg.method`."""
    if cfg.method == "full":
        model.requires_grad_(True)
        return model
    if cfg.method == "freeze":
        freeze_lower_layers(model, cfg.freeze.layers)
        return model
    if cfg.method == "lora":
        return apply_lora(model, cfg)
    raise LmtuneError(f"method: unsupported {cfg.method!r}")


def apply_lora(model: nn.Module, cfg: Config) -> nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model

    targets = cfg.lora.target_modules or LORA_TARGETS.get(model.config.model_type,
                                                          "all-linear")
    task_type = {"classify": TaskType.SEQ_CLS, "sft": TaskType.CAUSAL_LM,
                 "clm": TaskType.CAUSAL_LM, "seq2seq": TaskType.SEQ_2_SEQ_LM}.get(cfg.task)
    lora = LoraConfig(task_type=task_type, r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                      lora_dropout=cfg.lora.dropout, target_modules=targets)
    try:
        with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            return get_peft_model(model, lora)
    except ValueError as e:  # no module matched target_modules
        raise LmtuneError(f"lora.target_modules: {e}") from None


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
