"""Does the planner's speed reference (plan/speed.py) slow down as training does? A real
training step (MiniLM, full fine-tuning, 32 rows x 64 tokens, one thread on core 0) and the
reference workload, timed alternately while another process streams memory or multiplies
matrices on core 1 (a neighbour's traffic), or shares core 0 (what CPU steal does to a
virtual machine: its core's time goes elsewhere). The planner scales its predicted step
times by the reference's slowdown, so the two slowdowns should agree.

    .venv/bin/python bench/plan_speed.py

Prints one markdown row per condition; the last line holds, as key=value pairs, the worst
ratio of the step's slowdown to the reference's (1.0: the reference tracks it exactly).
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

import torch

STREAM = ("import numpy as np\na = np.ones(2**25); b = np.empty_like(a)\n"
          "while True: np.copyto(b, a); np.copyto(a, b)")
MATMUL = "import numpy as np\na = np.random.rand(1024, 1024)\nwhile True: a @ a"
SPIN = "while True: pass"
# (what the other process runs, on which core): copying 256 MB arrays is memory traffic,
# 1024 x 1024 matmuls are compute sharing the caches, a busy loop on core 0 takes half its time.
COMPETITORS = {
    "idle": (None, 1),
    "memory traffic on core 1": (STREAM, 1),
    "matmul on core 1": (MATMUL, 1),
    "busy loop on core 0": (SPIN, 0),
    "memory traffic on core 0": (STREAM, 0),
}


def training_step():
    from transformers import AutoModelForSequenceClassification

    from lmtune.models.load import resolve_model

    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model("minilm"), num_labels=2)
    ids = torch.randint(1000, 20000, (32, 64), generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(32, dtype=torch.long)

    def step() -> float:
        began = time.perf_counter()
        model(input_ids=ids, labels=labels).loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - began

    step()
    return step


def timed(step, reference_seconds, rounds: int = 3) -> tuple[float, float]:
    """Medians of the step and the reference, taken alternately."""
    steps, refs = [], []
    for _ in range(rounds):
        steps.append(statistics.median(step() for _ in range(3)))
        refs.append(reference_seconds(threads=1, repeats=3))
    return statistics.median(steps), statistics.median(refs)


def main() -> None:
    from lmtune.plan.speed import reference_seconds
    from lmtune.runtime import environment

    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs two cores: one to measure on, one for the competing work")
    os.sched_setaffinity(0, {0})
    torch.set_num_threads(1)
    env = environment()
    print(f"host: {env['cpu']}, {env['cores']} cores, bf16={env['bf16']}; torch "
          f"{env['torch']}; {time.strftime('%Y-%m-%d %H:%M')}; measured on core 0, one thread")
    step = training_step()
    print("| meanwhile | step s | reference s | step slowdown | reference slowdown | ratio |")
    print("|---|---|---|---|---|---|")
    base = None
    worst = 1.0
    for name, (code, core) in COMPETITORS.items():
        other = None
        if code is not None:
            other = subprocess.Popen([sys.executable, "-c", code],
                                     preexec_fn=lambda: os.sched_setaffinity(0, {core}))
            time.sleep(2)  # its arrays allocated, its loop running
        try:
            s, r = timed(step, reference_seconds)
        finally:
            if other is not None:
                other.kill()
                other.wait()
        base = base or (s, r)
        ratio = (s / base[0]) / (r / base[1])
        worst = max(worst, ratio, 1 / ratio)
        print(f"| {name} | {s:.3f} | {r:.3f} | {s / base[0]:.2f} | {r / base[1]:.2f} | "
              f"{ratio:.2f} |", flush=True)
    print(f"worst_ratio={worst:.3f}")


if __name__ == "__main__":
    main()
