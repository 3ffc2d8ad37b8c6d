"""DDP vs FSDP vs DeepSpeed ZeRO-2/3: the peak RSS of each process, and throughput, of
2-process full fine-tuning.

    .venv/bin/python bench/distributed.py                      # 3 rounds, all four
    .venv/bin/python bench/distributed.py --quick              # 1 round, ddp and fsdp
    .venv/bin/python bench/distributed.py --modes ddp,zero3    # any subset

`lmtune train --nproc 2` fine-tunes all of SmolLM2-135M (SFT on aclsum, bf16 autocast, one
thread per process) with each `train.distributed` in turn (ddp, fsdp, deepspeed with
zero_stage 2 and 3), interleaved, each launched from a fresh wrapper process. The
wrapper's RUSAGE_CHILDREN ru_maxrss is the largest peak RSS of any process under it, i.e.
the busiest rank. Throughput is real tokens per second
over the steps after the first two (metrics.jsonl). No peer: accelerate 1.15 will not run
FSDP on CPU, so this compares lmtune's strategies with each other; DeepSpeed's engine does
its own sharding, so the ZeRO rows measure DeepSpeed itself.

Last line: `ddp_rss_mb=...` then `MODE_rss_ratio=... MODE_speed_ratio=...` (MODE / ddp).
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


MODES = {"ddp": ["train.distributed=ddp"], "fsdp": ["train.distributed=fsdp"],
         "zero2": ["train.distributed=deepspeed", "train.zero_stage=2"],
         "zero3": ["train.distributed=deepspeed", "train.zero_stage=3"]}


def child(mode: str, out: str) -> None:
    import resource
    import shutil
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "lmtune", "train", "--nproc", str(NPROC),
                           "--quiet", *ARGS, *MODES[mode], f"output_dir={out}"],
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
    ap.add_argument("--modes", help=f"comma-separated, from {', '.join(MODES)} (ddp is "
                    "always run: the ratios are to it)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    import shutil
    import tempfile

    rounds = args.rounds or (1 if args.quick else 3)
    modes = args.modes.split(",") if args.modes else \
        (["fsdp"] if args.quick else [m for m in MODES if m != "ddp"])
    if unknown := set(modes) - set(MODES):
        sys.exit(f"--modes: unknown {', '.join(sorted(unknown))}; from {', '.join(MODES)}")
    work = Path(tempfile.mkdtemp(prefix="lmtune-dist-"))
    got: dict[str, list[dict]] = {m: [] for m in ["ddp", *modes] if m in MODES}
    for r in range(rounds):
        for mode in got:
            g = spawn(__file__, mode, [str(work / f"{mode}-{r}")])
            got[mode].append(g)
            print(f"round {r + 1}: {mode:>5}: peak RSS of the largest rank "
                  f"{g['rss_mb']:.0f} MB, {g['tokens_per_s']:.0f} tokens/s", flush=True)
    rss = {k: statistics.median(g["rss_mb"] for g in v) for k, v in got.items()}
    tps = {k: statistics.median(g["tokens_per_s"] for g in v) for k, v in got.items()}
    print(" ".join([f"ddp_rss_mb={rss['ddp']:.0f}"] + [
        f"{m}_rss_mb={rss[m]:.0f} {m}_rss_ratio={rss[m] / rss['ddp']:.2f} "
        f"{m}_speed_ratio={tps[m] / tps['ddp']:.2f}" for m in got if m != "ddp"]))
    shutil.rmtree(work, ignore_errors=True)  # the children removed their runs already


if __name__ == "__main__":
    main()
