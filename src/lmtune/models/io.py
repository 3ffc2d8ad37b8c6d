"""Save a trained model as a plain HF model dir (or PEFT adapter dir) and load it back."""
from __future__ import annotations

from pathlib import Path

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
    tokenizer.save_pretrained(path)
    if any(p.suffix in (".bin", ".pt", ".pth") for p in path.iterdir()):
        raise RuntimeError(f"{path}: a pickle-based weight file was written; expected "
                           "safetensors only")


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
