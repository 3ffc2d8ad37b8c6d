"""The runtime a command sets up: device, precision, autocast, threads, seeding, allocator.

Nothing here runs on import: importing lmtune changes nothing process-wide, so a server or a
notebook can import it safely. Commands apply the process-wide settings (`configure_process`);
the Python API scopes what it changes (`threads` restores torch's thread count).

bf16 autocast is used where the hardware runs bf16 matmuls natively (CUDA with bf16, CPUs
with avx512_bf16 or AMX); elsewhere fp32. fp16 is not offered: no CPU runs it fast, and it
needs loss scaling that bf16 does not.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from functools import lru_cache

import torch

# oneDNN caches a compiled primitive for every matmul shape it meets, up to 1,024, and each
# cached bf16 primitive keeps megabytes of buffers alive. Dynamic padding meets dozens of
# shapes, so the cache alone grew RSS by about 100 MB in MiniLM training and by 1-5 MB per new
# batch shape in evaluation. 16 keeps one step's primitives hot at the same speed
# (bench/classify.py; BENCHMARKS.md).
ONEDNN_CACHE = "16"


def configure_process() -> None:
    """Process-wide settings for an lmtune command (the CLI calls this first thing).

    oneDNN reads its cache size when it builds its first primitive, so this must run before
    any matmul; a value the user set wins. A library user who wants the same sets
    ONEDNN_PRIMITIVE_CACHE_CAPACITY before importing torch, or calls this.
    """
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE)
    # bitsandbytes (installed for quantize=) warns on import, on CPUs with avx512_bf16, that
    # its fast 4-bit kernel would need a hub download; every command imports it through
    # peft, whether it quantizes or not, and the fallback kernel is what lmtune runs.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # DeepSpeed (installed for train.distributed=zero) logs on stdout, on import, that it
    # found no GPU and uses the CPU; transformers imports it at every `save_pretrained`
    # (its unwrapping checks for DeepSpeed engines), so every run's output ended with that
    # line. Its logger sets its own level on import, so a filter, which it keeps, drops it.
    deepspeed = logging.getLogger("DeepSpeed")
    if _no_cpu_notice not in deepspeed.filters:
        deepspeed.addFilter(_no_cpu_notice)


def _no_cpu_notice(record: logging.LogRecord) -> bool:
    return "Setting accelerator to CPU" not in record.getMessage()


def bar_interval() -> float:
    """Seconds between a progress bar's redraws: live on a terminal, rare in a piped log (a
    redraw there is a line of its own)."""
    return 0.5 if sys.stderr.isatty() else 30


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True where the CPU has native bf16 dot products (avx512_bf16 or AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


@lru_cache(maxsize=None)
def _libc(name: str):
    """A glibc function, or None where the C library has none (macOS, musl)."""
    import ctypes
    import ctypes.util

    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc `malloc_trim`; a no-op elsewhere).

    Batches of different shapes free and allocate blocks of many sizes, and glibc keeps the
    freed pages, scattered through its heaps, in the process: RSS then grew with the number of
    batches. Trimming when evaluation batches change shape lowered the peak RSS of
    `lmtune eval`, but did not make it flat (bench/eval_memory.py; `map_large_buffers` does).
    Not in training: trimming after every step made steps 20% slower (the next step faults
    its pages back in).
    """
    trim = _libc("malloc_trim")
    if trim is not None:
        trim(0)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


def map_large_buffers(threshold: int = 1 << 20) -> bool:
    """From now on, give every allocation of `threshold` bytes or more its own mmap, returned
    to the OS when freed (glibc `mallopt`); False where the C library has none.

    By default glibc serves blocks of up to 32 MB from its heap once one has been freed, and
    where a batch's activations land in the heap's holes depends on every batch before it:
    the peak RSS of `lmtune eval` spread over +-30 MB between runs and rose with the number of
    batches. With its own mapping per tensor, RSS is the live tensors and nothing else, so the
    peak is the largest batch's: 8-20% lower for MiniLM, and the same within 2% for
    5,000 texts as for 500 (bench/eval_memory.py --mode both). The cost is a page fault per 4 KB of every
    activation, all of it system time: eval 9-18% slower on an AVX2 CPU in fp32, 1.8x as
    long with bf16. So it is opt-in and process-wide: `lmtune eval --low-memory`, never in
    training.
    """
    mallopt = _libc("mallopt")
    return mallopt is not None and mallopt(M_MMAP_THRESHOLD, threshold) == 1


def device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(requested: str, device: str | None = None) -> str:
    """Map `train.precision` (auto|bf16|fp32) to what this device will run."""
    device = device or device_type()
    if requested == "auto":
        if device == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if cpu_has_bf16() else "fp32"
    return requested


def autocast(precision: str, device: str | None = None):
    """bf16 autocast (weights stay fp32, matmuls run in bf16), or nothing for fp32.

    The loop applies it itself rather than through accelerate's `mixed_precision`, whose
    process-wide state cannot change between runs in one Python process.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device or device_type(), dtype=torch.bfloat16)


def default_threads() -> int:
    """One torch thread per core this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)


@contextlib.contextmanager
def threads(count: int):
    """Run the block with `count` torch threads (0: one per available core), then restore
    the caller's setting: a notebook that trains keeps its own thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(count or default_threads())
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_memory_mb() -> float:
    """This process's peak memory in MB: peak allocated on a GPU, peak RSS on a CPU (what
    `/usr/bin/time -f %M` reports)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def environment() -> dict:
    """What ran a run: library versions and the hardware (summary.json, reports)."""
    import importlib.metadata as md
    import platform

    versions = {}
    for pkg in ("lmtune", "torch", "transformers", "peft", "accelerate"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"python": platform.python_version(), **versions, "cpu": cpu,
            "cores": os.cpu_count(), "bf16": cpu_has_bf16(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
