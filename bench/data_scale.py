"""Large datasets: seconds and peak RSS from the command to the first optimizer step, for
10k, 100k and 1M rows, lmtune beside HF `datasets` + Trainer.

    .venv/bin/python bench/data_scale.py                      # 10k, 100k, 1M rows
    .venv/bin/python bench/data_scale.py --rows 10000 100000  # fewer sizes
    .venv/bin/python bench/data_scale.py --only lmtune

The data: a seeded CSV of review-length rows, each two Rotten Tomatoes snippets joined (so
rows are distinct) with the first one's label. Each side runs in a fresh process, one at a
time, MiniLM, full fine-tuning, batch 32, max_length 128, bf16 where the CPU has it:

- lmtune: `lmtune train data.train=FILE` (it splits off validation and test, checks the data,
  tokenizes every split), run twice: the first run fills the tokenized-data cache
  (`data.cache`), the second reads it. The time is taken when the first training log row
  (step 1) reaches metrics.jsonl, then the process is stopped.
- HF: `datasets.load_dataset("csv")`, `train_test_split` into the same shares,
  `map(tokenize, batched=True, num_proc=2)` on every split, `Trainer.train`; timed at the
  end of step 1 by a callback. Run twice as well: `datasets` caches its map results by
  fingerprint, and the second run reads them.

Peak RSS is the process's high-water mark (VmHWM) at that moment: for HF, of the main
process only (the two `map` workers come and go before it). Each size starts with empty
cache directories; the second run reads what the first stored.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_rows(path: Path, n: int) -> None:
    from lmtune.data.builtin import rotten_tomatoes

    pool = [(r["text"], r["label"]) for t in rotten_tomatoes(0).values() for r in t.rows]
    rng = random.Random(0)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for _ in range(n):
            (a, label), (b, _) = rng.choice(pool), rng.choice(pool)
            w.writerow([f"{a} {b}", label])


def high_water_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def first_step(cmd: list[str], done, env: dict, timeout: float = 1800) -> dict:
    """Run `cmd`; when `done()` says the first step is logged, read the peak RSS, stop it."""
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and time.perf_counter() - began < timeout:
        if done():
            seconds = time.perf_counter() - began
            rss = high_water_mb(proc.pid)
            proc.kill()
            proc.wait()
            return {"seconds": round(seconds, 1), "peak_rss_mb": round(rss)}
        time.sleep(0.1)
    err = proc.stderr.read()[-2000:] if proc.stderr else ""
    proc.kill()
    raise RuntimeError(f"{cmd[:4]}: no first step (exit {proc.returncode}): {err}")


def run_lmtune(data: Path, work: Path, cache: Path) -> dict:
    out = work / "run"
    shutil.rmtree(out, ignore_errors=True)
    metrics = out / "metrics.jsonl"

    def done() -> bool:
        return metrics.exists() and '"step": 1' in metrics.read_text()

    cmd = [sys.executable, "-m", "lmtune", "train", "--quiet", f"data.train={data}",
           "train.max_steps=100", "train.log_every=1", f"output_dir={out}",
           f"cache_dir={cache}"]
    return first_step(cmd, done, dict(os.environ))


HF_SCRIPT = r'''
import os, sys, time
began = time.perf_counter()
import datasets, transformers
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, Trainer,
                          TrainerCallback, TrainingArguments)
data_file, model_dir, out, flag = sys.argv[1:5]
ds = datasets.load_dataset("csv", data_files=data_file, split="train")
labels = sorted(set(ds.unique("label")))
ds = ds.map(lambda b: {"labels": [labels.index(x) for x in b["label"]]}, batched=True,
            num_proc=2)
parts = ds.train_test_split(test_size=0.2, seed=42)
held = parts["test"].train_test_split(test_size=0.5, seed=42)
tok = AutoTokenizer.from_pretrained(model_dir)
def tokenize(b):
    return tok(b["text"], truncation=True, max_length=128)
splits = {name: d.map(tokenize, batched=True, num_proc=2, remove_columns=["text", "label"])
          for name, d in (("train", parts["train"]), ("validation", held["train"]),
                          ("test", held["test"]))}
model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(labels))
class First(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        open(flag, "w").write(str(time.perf_counter() - began))
        time.sleep(3600)
args = TrainingArguments(out, per_device_train_batch_size=32, max_steps=100, bf16=%s,
                         use_cpu=True, report_to=[], save_strategy="no", logging_steps=1,
                         dataloader_num_workers=0)
Trainer(model=model, args=args, train_dataset=splits["train"],
        eval_dataset=splits["validation"], processing_class=tok,
        callbacks=[First()]).train()
'''


def run_hf(data: Path, work: Path, cache: Path) -> dict:
    import torch

    from lmtune.models.load import resolve_model

    flag = work / "first_step"
    flag.unlink(missing_ok=True)
    script = work / "hf_first_step.py"
    bf16 = str(bool(torch.cpu._is_avx512_bf16_supported()))
    script.write_text(HF_SCRIPT % bf16)
    env = dict(os.environ, HF_DATASETS_CACHE=str(cache), HF_DATASETS_OFFLINE="1")
    cmd = [sys.executable, str(script), str(data), resolve_model("minilm"), str(work / "hf"),
           str(flag)]
    return first_step(cmd, flag.exists, env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--only", choices=["lmtune", "hf"])
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for n in args.rows:
            data = work / f"reviews_{n}.csv"
            write_rows(data, n)
            for name, fn in (("lmtune", run_lmtune), ("hf", run_hf)):
                if args.only and name != args.only:
                    continue
                cache = work / f"cache_{name}_{n}"
                for attempt in ("first", "cached"):
                    row = {"rows": n, "tool": name, "run": attempt,
                           "data_mb": round(data.stat().st_size / 2**20, 1),
                           **fn(data, work, cache)}
                    print(json.dumps(row), flush=True)
                    results.append(row)
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
