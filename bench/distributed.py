"""DDP vs FSDP: the peak RSS of each process, and throughput, of 2-process full fine-tuning.

    .venv/bin/python bench/distributed.py            # 3 rounds
    .venv/bin/python bench/distributed.py --quick    # 1 round (under 5 minutes)

`lmtune train --nproc 2` fine-tunes all of SmolLM2-135M (SFT on aclsum, bf16 autocast, one
thread per process) with `train.distributed=ddp`, then `=fsdp`, alternating, each launched
from a fresh wrapper process. The wrapper's RUSAGE_CHILDREN ru_maxrss is the largest peak
RSS of any process under it, i.e. the busiest rank. Throughput is real tokens per second
over the steps after the first two (metrics.jsonl). No peer: accelerate 1.15 will not run
FSDP on CPU, so this compares lmtune's two strategies with each other.

Last line: `ddp_rss_mb=... fsdp_rss_mb=... rss_ratio=... speed_ratio=...` (fsdp / ddp).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import spawn  # noqa: E402

STEPS, WARMUP_STEPS, NPROC, BATCH = 8, 2, 2, 2
ARGS = ["task=sft", "model=smollm2", "method=full", "data.train=aclsum",
        "data.max_samples=48", "data.drop_unlearnable=true", "train.max_length=256",
        f"train.batch_size={BATCH}", f"train.max_steps={STEPS}", "train.warmup=0",
        "train.log_every=1", "train.threads=1", "train.precision=bf16",
        "eval.generate_samples=0", "eval.batch_size=8"]


def child(strategy: str, out: str) -> None:
    import resource
    import shutil
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "lmtune", "train", "--nproc", str(NPROC),
                           "--quiet", *ARGS, f"train.distributed={strategy}",
                           f"output_dir={out}"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    rows = [json.loads(x) for x in open(Path(out) / "metrics.jsonl") if '"lr"' in x]
    shutil.rmtree(out)  # a 540 MB model and its checkpoints: gigabytes over the rounds
    rows = rows[WARMUP_STEPS:]
    seconds = [BATCH * NPROC / r["samples_per_s"] for r in rows]  # log_every=1: one step
    tokens = sum(r["tokens_per_s"] * t for r, t in zip(rows, seconds))
    print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                      "tokens_per_s": tokens / sum(seconds)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    import shutil
    import tempfile

    rounds = args.rounds or (1 if args.quick else 3)
    work = Path(tempfile.mkdtemp(prefix="lmtune-dist-"))
    got: dict[str, list[dict]] = {"ddp": [], "fsdp": []}
    for r in range(rounds):
        for strategy in got:
            g = spawn(__file__, strategy, [str(work / f"{strategy}-{r}")])
            got[strategy].append(g)
            print(f"round {r + 1}: {strategy:>4}: peak RSS of the largest rank "
                  f"{g['rss_mb']:.0f} MB, {g['tokens_per_s']:.0f} tokens/s", flush=True)
    rss = {k: statistics.median(g["rss_mb"] for g in v) for k, v in got.items()}
    tps = {k: statistics.median(g["tokens_per_s"] for g in v) for k, v in got.items()}
    print(f"ddp_rss_mb={rss['ddp']:.0f} fsdp_rss_mb={rss['fsdp']:.0f} "
          f"rss_ratio={rss['fsdp'] / rss['ddp']:.2f} "
          f"speed_ratio={tps['fsdp'] / tps['ddp']:.2f}")
    shutil.rmtree(work, ignore_errors=True)  # the children removed their runs already


if __name__ == "__main__":
    main()
