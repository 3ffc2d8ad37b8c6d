"""Adapters through peft, by module name: the LoRA family (`lora`, `dora`, rank-stabilized
with `lora.rslora`), `loha`, `lokr`, `vera`, `ia3`, `oft` and `boft`. The base stays frozen;
a new task head (a classifier) trains whole beside the adapter. All of them share the `lora`
config section (rank, alpha, dropout, target modules), save a PEFT adapter dir and merge into
the base weights for inference."""
from __future__ import annotations

import warnings
from typing import Callable

from torch import nn

from lmtune.config import ConfigError
from lmtune.errors import LmtuneError
from lmtune.methods import Method, register

# Per-architecture targets; anything else gets peft's "all-linear".
LORA_TARGETS = {
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "xlm-roberta": ["query", "key", "value", "dense"],
    "electra": ["query", "key", "value", "dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
}


def peft_method(build: Callable, section: str = "lora") -> Callable:
    """`apply` for a peft adapter whose config `build(settings, targets, task_type)` makes
    from the config section `section`."""
    def apply(model: nn.Module, cfg, task) -> nn.Module:
        from peft import TaskType, get_peft_model

        targets = cfg.lora.target_modules or LORA_TARGETS.get(model.config.model_type,
                                                              "all-linear")
        task_type = getattr(TaskType, task.peft_type) if task.peft_type else None
        config = build(getattr(cfg, section), targets, task_type)
        try:
            with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
                return get_peft_model(model, config)
        except ValueError as e:  # no module matched target_modules, a shape it cannot adapt
            hint = " (see lora.target_modules)" if section == "lora" else ""
            raise LmtuneError(f"method={cfg.method}: {e}{hint}") from None
    return apply


# lora.init → peft's init_lora_weights. PiSSA by randomized SVD (4 subspace iterations, as
# its authors recommend for speed): saved adapters are converted to plain LoRA, so reloading
# never repeats the decomposition.
LORA_INIT = {"default": True, "gaussian": "gaussian", "pissa": "pissa_niter_4",
             "olora": "olora"}
REWRITES_BASE = ("pissa", "olora")  # inits that subtract their start from the base weights


def lora_config(s, targets, task_type, **extra):
    from peft import LoraConfig

    return LoraConfig(task_type=task_type, r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout,
                      target_modules=targets, use_rslora=s.rslora,
                      init_lora_weights=LORA_INIT[s.init], **extra)


def apply_lora(model: nn.Module, cfg, task) -> nn.Module:
    """LoRA; a PiSSA or OLoRA start is kept (`initial_lora`) for saving as plain LoRA."""
    from peft import get_peft_model_state_dict

    model = peft_method(lora_config)(model, cfg, task)
    if cfg.lora.init in REWRITES_BASE:
        model.initial_lora = {k: v.detach().clone()
                              for k, v in get_peft_model_state_dict(model).items()
                              if ".lora_A." in k or ".lora_B." in k}
    return model


def check_lora_init(cfg, task) -> None:
    if cfg.lora.init in REWRITES_BASE and cfg.quantization != "none":
        raise ConfigError("lora.init", f"{cfg.lora.init} moves the weight's top factors into "
                          f"the adapter and rewrites the base weights; a {cfg.quantization} "
                          "base would round them. Use lora.init=default or gaussian")


def check_lora_family(cfg, task) -> None:
    if cfg.lora.init in REWRITES_BASE:
        raise ConfigError("lora.init", f"{cfg.lora.init} applies to method=lora or qlora")


def check_not_lora(cfg, task) -> None:
    if cfg.lora.init != "default":
        raise ConfigError("lora.init", "applies to the LoRA family (lora, dora, qlora); "
                          f"method={cfg.method} has its own start")


def loha_config(s, targets, task_type):
    from peft import LoHaConfig

    return LoHaConfig(task_type=task_type, r=s.r, alpha=s.alpha, module_dropout=s.dropout,
                      target_modules=targets)


def lokr_config(s, targets, task_type):
    from peft import LoKrConfig

    return LoKrConfig(task_type=task_type, r=s.r, alpha=s.alpha, module_dropout=s.dropout,
                      target_modules=targets)


def vera_config(s, targets, task_type):
    from peft import VeraConfig

    return VeraConfig(task_type=task_type, r=s.r, vera_dropout=s.dropout,
                      target_modules=targets)


def ia3_config(s, targets, task_type):
    """IA3 scales keys, values and the feed-forward output; peft knows which modules those
    are per architecture, so only a user's own target_modules are passed on."""
    from peft import IA3Config

    return IA3Config(task_type=task_type, target_modules=s.target_modules or None,
                     feedforward_modules=[] if s.target_modules else None)


def oft_config(s, targets, task_type):
    """Orthogonal fine-tuning: block-diagonal rotations of `lora.r` x `lora.r` blocks (the
    block size must divide each adapted layer's input width)."""
    from peft import OFTConfig

    return OFTConfig(task_type=task_type, r=0, oft_block_size=s.r, module_dropout=s.dropout,
                     target_modules=targets)


def boft_config(s, targets, task_type):
    from peft import BOFTConfig

    return BOFTConfig(task_type=task_type, boft_block_size=s.r, boft_n_butterfly_factor=1,
                      boft_dropout=s.dropout, target_modules=targets)


def lora_plus(cfg) -> Callable[[str], float] | None:
    """LoRA+: the B matrices learn `lora.plus_ratio` times faster than the A matrices (the
    two play different roles; one LR under-trains B for wide layers)."""
    ratio = cfg.lora.plus_ratio
    if not ratio:
        return None
    return lambda name: ratio if ".lora_B." in name or ".lora_embedding_B." in name else 1.0


def adapter(name: str, build: Callable, help: str, default_lr: float = 7e-5,
            bf16_frozen: bool = True, lr_scale: Callable | None = None,
            quantize: str = "none", apply: Callable | None = None,
            check: Callable = check_not_lora) -> Method:
    return register(Method(name, apply or peft_method(build), help, section="lora",
                           mergeable=True, adapter=True, default_lr=default_lr,
                           bf16_frozen=bf16_frozen, lr_scale=lr_scale, quantize=quantize,
                           check=check))


# Each method's default learning rate is the lowest of those tried whose validation accuracy
# came within a point of the method's best, over 80 steps of the default job
# (`bench/methods.py --sweep`; the rates tried and the scores are in BENCHMARKS.md, "Each
# method's learning rate"). Methods that train few numbers need far higher rates.
LORA = adapter("lora", lora_config, "low-rank adapters on the projections", 7e-4,
               lr_scale=lora_plus, apply=apply_lora, check=check_lora_init)
# DoRA reads the frozen weight itself (its column norms), not only through a matmul: held in
# bf16 the weight would change its numbers, so it stays fp32.
DORA = adapter("dora", lambda s, t, tt: lora_config(s, t, tt, use_dora=True),
               "LoRA with the weight's magnitude trained apart from its direction", 7e-4,
               bf16_frozen=False, lr_scale=lora_plus, check=check_lora_family)
# QLoRA: LoRA over a 4-bit NF4 base (bitsandbytes); the quantized weights are not float, so
# nothing is held in bf16 on top.
QLORA = adapter("qlora", lora_config, "LoRA on a 4-bit NF4 base (bitsandbytes)", 7e-4,
                bf16_frozen=False, lr_scale=lora_plus, quantize="nf4", apply=apply_lora,
                check=check_lora_init)
LOHA = adapter("loha", loha_config, "low-rank Hadamard-product adapters", 7e-3)
LOKR = adapter("lokr", lokr_config, "low-rank Kronecker-product adapters", 7e-3)
VERA = adapter("vera", vera_config, "shared random low-rank matrices, trained scaling vectors",
               7e-2)
IA3 = adapter("ia3", ia3_config, "learned scaling of keys, values and feed-forward outputs",
              2e-2)
OFT = adapter("oft", oft_config, "orthogonal fine-tuning (block-diagonal rotations)", 2e-3)
BOFT = adapter("boft", boft_config, "butterfly orthogonal fine-tuning", 2e-3)
