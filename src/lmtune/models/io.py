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
        model.get_base_model().config.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if any(p.suffix in (".bin", ".pt", ".pth") for p in path.iterdir()):
        raise RuntimeError(f"{path}: a pickle-based weight file was written; expected "
                           "safetensors only")


def load_saved(model_dir: Path, base_model: str, trust_remote_code: bool,
               attention: str = "sdpa", auto_class: str = "AutoModelForSequenceClassification",
               cache_dir: str = ""):
    """(model, tokenizer) from a saved model dir, loaded with transformers' `auto_class`;
    adapters are applied to their base model."""
    import torch
    import transformers
    from transformers import AutoConfig

    if not (model_dir / "config.json").exists():
        raise LmtuneError(f"{model_dir}: no saved model here (config.json missing); did the "
                          "run finish?")
    cls = getattr(transformers, auto_class)
    tokenizer = load_tokenizer(str(model_dir), trust_remote_code)
    kwargs = dict(trust_remote_code=trust_remote_code, attn_implementation=attention,
                  dtype=torch.float32)
    if (model_dir / "adapter_config.json").exists():
        from peft import PeftModel

        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        base = cls.from_pretrained(resolve_model(base_model, cache_dir), config=config,
                                   **kwargs)
        model = PeftModel.from_pretrained(base, model_dir)
    else:
        model = cls.from_pretrained(model_dir, **kwargs)
    return model.eval(), tokenizer
