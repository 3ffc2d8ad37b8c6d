"""2 processes (torchrun, gloo on CPU) train exactly like 1 process with the same global batch:
disjoint data shards per rank, loss normalized over the global batch, the LR schedule stepped
once per optimizer step, and only rank 0 writing the run dir."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from lmtune.cli import main

COMMON = ["train.precision=fp32", "train.batch_size=8", "train.max_steps=6",
          "train.group_by_length=false", "train.lr=3e-3", "train.warmup=2",
          "train.log_every=1", "train.threads=1"]


def metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_equal_one_with_the_same_global_batch(tiny_bert, sentiment_csv,
                                                             tmp_path):
    base = [f"model={tiny_bert}", f"data.train={sentiment_csv}", *COMMON]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", "--quiet", *base, "train.grad_accum=2", f"output_dir={one}"]) == 0
    proc = subprocess.run(
        [sys.executable, "-m", "lmtune", "train", "--nproc", "2", "--quiet", *base,
         "train.grad_accum=1", f"output_dir={two}"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run dir") == 1  # only rank 0 prints the summary

    wa = load_file(one / "model" / "model.safetensors")
    wb = load_file(two / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:  # gloo sums gradients in another order: equal up to float rounding
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4, msg=k)

    ma, mb = metrics(one), metrics(two)
    steps = [r for r in ma if "split" not in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(ma, mb, strict=True):
        assert ra.get("lr") == rb.get("lr")  # once per optimizer step, not per process
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-5)
