"""What the planner knows before anything is measured: the machine's memory, and the
model's parameters under a method, counted on a model built on torch's meta device (the
config's shapes, no weights allocated or read)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from lmtune.config import Config
from lmtune.errors import LmtuneError

MB = 2**20
# Without a calibration (the guard before a first `lmtune plan`), a step's activations are
# taken as this many bytes per token, hidden unit and layer, and each trained position's
# logits, softmax and their gradients as this many bytes per vocabulary entry: a measured
# fit for SmolLM2 LoRA in bf16 without gradient checkpointing (within 1% over lengths
# 64-512).
ACTIVATION_BYTES = 118
LOGIT_BYTES = 14.5


@dataclass(frozen=True)
class ModelShape:
    total: int  # parameters
    trainable: int
    weight_mb: float  # as held in training (fp32 masters, bf16 frozen linears, quantized)
    layers: int
    hidden: int
    vocab: int
    lm_head: bool  # the loss projects trained positions onto the vocabulary
    positions: int  # the longest input the model takes


def available_mb(meminfo: str = "/proc/meminfo", cgroup: str = "/sys/fs/cgroup") -> float:
    """Memory a new process may use: MemAvailable, or less where a cgroup (v2) limit says
    so (a container's memory limit, less what the cgroup already uses); on a GPU, its free
    memory."""
    if torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0] / MB
    avail = float("inf")
    try:
        with open(meminfo, encoding="utf-8") as f:
            avail = next(int(x.split()[1]) / 1024 for x in f if x.startswith("MemAvailable"))
    except (OSError, StopIteration):
        pass
    try:
        limit = open(f"{cgroup}/memory.max", encoding="utf-8").read().strip()
        used = int(open(f"{cgroup}/memory.current", encoding="utf-8").read())
        if limit != "max":
            avail = min(avail, (int(limit) - used) / MB)
    except (OSError, ValueError):
        pass
    return avail if avail != float("inf") else (os.sysconf("SC_PAGE_SIZE")
                                                 * os.sysconf("SC_PHYS_PAGES") / MB)


def model_shape(cfg: Config, task, model_path: str, label_names: list[str] | None,
                precision: str) -> ModelShape:
    """Count the parameters of the model `cfg` trains, built on the meta device."""
    import transformers

    from lmtune.methods import apply_method, get_method
    from lmtune.models.load import load_model_config
    from lmtune.models.params import hold_frozen_linears_in_bf16

    config = load_model_config(model_path, cfg.trust_remote_code)
    kwargs = task.model_kwargs(SimpleNamespace(label_names=label_names or []))
    for key, value in kwargs.items():
        if key != "ignore_mismatched_sizes":
            setattr(config, key, value)
    with torch.device("meta"):
        model = getattr(transformers, task.model_class).from_config(
            config, trust_remote_code=cfg.trust_remote_code)
        try:
            model = apply_method(model, cfg, task)
        except LmtuneError:
            raise
        except Exception:  # noqa: BLE001 - a method whose set-up reads values (BOFT):
            model.requires_grad_(False)  # counted as the frozen base; the run will tell
    if precision == "bf16" and get_method(cfg.method).bf16_frozen:
        hold_frozen_linears_in_bf16(model)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    weight = sum(p.numel() * p.element_size() for p in model.parameters())
    quantized = {"int8": 1.0, "nf4": 0.53}.get(cfg.quantization)
    if quantized:  # the frozen linears shrink to 8 or ~4.25 bits (NF4 blocks and scales)
        frozen = sum(m.weight.numel() for m in model.modules()
                     if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad)
        weight -= frozen * (model.dtype.itemsize - quantized)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return ModelShape(total, trainable, weight / MB,
                      getattr(text, "num_hidden_layers", 1), getattr(text, "hidden_size", 1),
                      getattr(text, "vocab_size", 1), not task.labels,
                      getattr(text, "max_position_embeddings", None) or 512)


def analytic_mb(shape: ModelShape, rows: int, width: int, trained: int) -> tuple[float, float]:
    """(the model's memory, a step's memory) where nothing was measured: weights and AdamW's
    two moments; the gradients, the activations and the logits in a step."""
    model = shape.weight_mb + 8 * shape.trainable / MB
    step = (4 * shape.trainable + ACTIVATION_BYTES * rows * width * shape.hidden * shape.layers
            + (LOGIT_BYTES * trained * shape.vocab if shape.lm_head else 0)) / MB
    return model, step
