"""How fast this machine runs right now, as a fixed workload's seconds: the planner's time
coefficients are measured once, but a shared or throttled machine's speed moves from one
hour to the next (other tenants' memory traffic, CPU steal, clocks). The probe reads this reference
beside every shape it times and the planner reads it again before predicting; predicted
times are scaled by the ratio, so a calibration made in a slow hour does not overstate a
fast one's steps.

The workload is a small BERT-sized encoder (6 layers of width 384, 42 MB of fp32 weights:
more than a CPU's caches hold) trained one step on a small batch: the same mix of matmuls,
softmax, normalization and weight and gradient traffic through memory that a training step
has, so it slows with whatever slows training, where a bare matmul that fits in the caches
may not (`bench/plan_speed.py` compares its slowdown with a real training step's).
"""
from __future__ import annotations

import statistics
import time

import torch

from lmtune import runtime

# 4 rows x 32 tokens through 6 layers of width 384: about 8 GFLOP a repeat, a tenth of a
# second or two on a laptop CPU; the median of a few repeats shrugs off one interruption.
ROWS, WIDTH, HIDDEN, LAYERS, REPEATS = 4, 32, 384, 6, 5


def reference_seconds(threads: int = 0, repeats: int = REPEATS) -> float:
    """Median seconds of one forward + backward of the fixed workload, with `threads` torch
    threads (0: one per core), fp32, on the device training uses. The global RNG is left as
    it was: a run's seed must give the same run whether or not this ran first."""
    device = runtime.device_type()
    gen = torch.Generator().manual_seed(0)
    with runtime.threads(threads):
        with torch.random.fork_rng(devices=[]):  # the layers' own init draws from it
            layers = torch.nn.Sequential(*(torch.nn.TransformerEncoderLayer(
                HIDDEN, 6, 4 * HIDDEN, dropout=0.0, batch_first=True) for _ in range(LAYERS)))
        with torch.no_grad():
            for p in layers.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        layers.to(device)
        x = torch.randn(ROWS, WIDTH, HIDDEN, generator=gen).to(device)

        def once() -> float:
            began = time.perf_counter()
            layers(x).square().mean().backward()
            if device == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - began

        once()  # warm: kernels chosen, buffers allocated
        seconds = statistics.median(once() for _ in range(repeats))
    del layers, x
    # The workload's freed activations go back to the OS: a training process reads this
    # before loading its model, and its peak memory should not carry them.
    runtime.release_free_memory()
    return seconds
