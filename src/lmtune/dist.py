"""Device, precision and accelerate set-up; rank helpers.

bf16 autocast is used where the hardware runs bf16 matmuls natively (CUDA with bf16, CPUs
with avx512_bf16 or AMX); elsewhere fp32. fp16 is refused on CPU: no CPU runs it fast and it
needs loss scaling.
"""
from __future__ import annotations

import contextlib
import os
from functools import lru_cache

import torch

from lmtune.errors import LmtuneError


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True where the CPU has native bf16 dot products (avx512_bf16 or AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(requested: str, device: str | None = None) -> str:
    """Map `train.precision` (auto|bf16|fp32|fp16) to what this device will run."""
    device = device or device_type()
    if requested == "auto":
        if device == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_bf16() else "fp32"
    if requested == "fp16" and device == "cpu":
        raise LmtuneError("train.precision: fp16 is not supported on CPU (no fast fp16 "
                          "kernels); use bf16 or fp32")
    return requested


def autocast(precision: str, device: str | None = None):
    """The autocast context for inference outside accelerate (predict, eval of a run dir)."""
    device = device or device_type()
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device, dtype=dtype)


def make_accelerator(precision: str):
    """An `accelerate.Accelerator`: works alone, under `accelerate launch` and torchrun."""
    from accelerate import Accelerator

    mixed = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[precision]
    return Accelerator(mixed_precision=mixed, cpu=device_type() == "cpu")


def set_threads(threads: int) -> int:
    """Use one torch thread per available core unless told otherwise; returns the count."""
    if not threads:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
            (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    return threads


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
