"""What both benchmarks share: per-step timing of a Trainer, peak RSS, child processes."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_clock():
    """A TrainerCallback recording each optimizer step's wall time in `.times`."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self):
            self.times, self.begin = [], 0.0

        def on_step_begin(self, args, state, control, **kw):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.begin)

    return Clock()


def count_batch_tokens(trainer) -> list[int]:
    """Wrap a Trainer's collator so that it records each batch's real tokens (the attention
    mask's ones; every token of a padding-free batch, which has no mask). Returns the list
    it fills, one entry per collated batch."""
    counted: list[int] = []
    collator = trainer.data_collator

    def collate(features):
        batch = collator(features)
        mask = batch.get("attention_mask")
        counted.append(int(mask.sum()) if mask is not None else int(batch["input_ids"].numel()))
        return batch

    trainer.data_collator = collate
    return counted


# lmtune's children set up the process as an `lmtune` command does (`as_lmtune_command`:
# oneDNN's primitive cache capped). The peers' children pin oneDNN's own default, so a peer is
# measured as its users run it whatever this process's environment holds.
PEER_ENV = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"}


def as_lmtune_command() -> None:
    """The process-wide runtime an `lmtune` command sets before any work (lmtune's children
    run the loop in process, not through the CLI): oneDNN's cache cap, one torch thread per
    core."""
    import torch

    from lmtune import runtime

    runtime.configure_process()
    torch.set_num_threads(runtime.default_threads())


def spawn(script: str, kind: str, args: list[str], env: dict[str, str] | None = None) -> dict:
    """Run `script --child KIND ARGS` in a fresh process; its last stdout line is JSON.
    `env` adds to this process's environment."""
    proc = subprocess.run([sys.executable, script, "--child", kind, *args],
                          capture_output=True, text=True, timeout=3600,
                          env=os.environ | (env or {}))
    if proc.returncode != 0:
        sys.exit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def best_precision() -> str:
    """bf16 where the hardware runs it natively, else fp32: lmtune's precision=auto rule,
    applied to the peer's "at its best" set-up too (emulated bf16 is many times slower)."""
    from lmtune.runtime import resolve_precision

    return resolve_precision("auto")
