"""Save a trained model as a plain HF model dir (or PEFT adapter dir) and load it back."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from lmtune.errors import LmtuneError
from lmtune.models.load import load_tokenizer, resolve_model


def is_peft(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def save_model(model: nn.Module, tokenizer, path: Path,
               state_dict: dict | None = None) -> None:
    """safetensors weights + config (with id2label) + tokenizer.

    A PEFT model saves only its adapter (and head); the base config with the label map is
    saved beside it so the classes survive without the training config. `state_dict`: the
    whole tensors of a sharded model (its parameters hold only this rank's shards).
    """
    model.save_pretrained(path, state_dict=state_dict)
    if is_peft(model):
        plain_config(model.get_base_model().config).save_pretrained(path)
        if getattr(model, "initial_lora", None):
            as_plain_lora(path, model.initial_lora)
    tokenizer.save_pretrained(path)
    if any(p.suffix in (".bin", ".pt", ".pth") for p in path.iterdir()):
        raise RuntimeError(f"{path}: a pickle-based weight file was written; expected "
                           "safetensors only")


def as_plain_lora(path: Path, initial: dict[str, torch.Tensor]) -> None:
    """Rewrite a saved PiSSA or OLoRA adapter as a plain LoRA adapter on the original base.

    Such an adapter started at (A0, B0) taken from the weight W itself, and training ran on
    W_res = W - s B0 A0. The trained model is W_res + s B A = W + s (B A - B0 A0), and
    B A - B0 A0 = [B | -B0] [A ; A0]: a LoRA of twice the rank, with alpha doubled to keep
    s (times sqrt(2) under rsLoRA, whose s is alpha / sqrt(r)). It loads on the base as
    published, needs no decomposition on load, and merges like any LoRA. Other tensors (a
    classifier head) are kept as they are.

        A: [r, in]  → [2r, in]        B: [out, r] → [out, 2r]
    """
    from safetensors.torch import load_file, save_file

    weights = path / "adapter_model.safetensors"
    state = load_file(weights)
    for k, v in state.items():
        if ".lora_A." in k:
            state[k] = torch.cat([v, initial[k].to(v.dtype)], dim=0)
        elif ".lora_B." in k:
            state[k] = torch.cat([v, -initial[k].to(v.dtype)], dim=1)
    save_file(state, weights, metadata={"format": "pt"})
    config = json.loads((path / "adapter_config.json").read_text())
    config.update(init_lora_weights=True, r=2 * config["r"],
                  lora_alpha=config["lora_alpha"] * (2 ** 0.5 if config["use_rslora"] else 2))
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2))


def plain_config(config):
    """The base's config without `quantization_config`: beside an adapter it describes the
    base model (its labels), and transformers would read the marker as "these weights are
    already quantized" when the base is loaded from its own, full-precision files."""
    import copy

    config = copy.deepcopy(config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


def load_saved(model_dir: Path, base_model: str, trust_remote_code: bool,
               attention: str = "sdpa", auto_class: str = "AutoModelForSequenceClassification",
               cache_dir: str = "", quantize: str = "none", keep: tuple[str, ...] = (),
               merge: bool = False):
    """(model, tokenizer) from a saved model dir, loaded with transformers' `auto_class`;
    adapters are applied to their base model, quantized as in training (`quantize`, with
    the modules in `keep` whole). `merge`: the adapter folded into the base, a plain model;
    a quantized base is dequantized first, since merging into 4 or 8 bits would round the
    adapter's update away."""
    from transformers import AutoConfig

    from lmtune.models.load import load_pretrained
    from lmtune.models.prompts import let_peft_pass_prefixes

    if not (model_dir / "config.json").exists():
        raise LmtuneError(f"{model_dir}: no saved model here (config.json missing); did the "
                          "run finish?")
    tokenizer = load_tokenizer(str(model_dir), trust_remote_code)
    if not (model_dir / "adapter_config.json").exists():
        model = load_pretrained(auto_class, str(model_dir), trust_remote_code, attention)
        return model.eval(), tokenizer
    from peft import PeftModel

    config = plain_config(AutoConfig.from_pretrained(model_dir,
                                                     trust_remote_code=trust_remote_code))
    base = load_pretrained(auto_class, resolve_model(base_model, cache_dir),
                           trust_remote_code, attention, quantize=quantize, keep=keep,
                           config=config)
    if merge and quantize != "none":
        base = base.dequantize()  # the numbers the quantized layers computed with, in fp32
    model = let_peft_pass_prefixes(PeftModel.from_pretrained(base, model_dir))
    if merge:
        model = model.merge_and_unload()
    return model.eval(), tokenizer
