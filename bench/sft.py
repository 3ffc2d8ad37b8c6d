"""lmtune vs TRL SFTTrainer: LoRA instruction tuning of SmolLM2-135M on aclsum, side by side.

    .venv/bin/python bench/sft.py            # 3 rounds, 10 steps of 4 packed 512-token rows
    .venv/bin/python bench/sft.py --quick    # 2 rounds, 6 steps of 2 rows (under 5 min)

Each run is a child process (its own peak RSS); runs alternate lmtune, TRL, lmtune, TRL...
Both get the same model, data, LoRA (r=16, alpha=32, dropout 0.05, all linear layers), lr
5e-4, bf16 (fp32 where the CPU has no native bf16), max_length 512, loss on the answers
only, sdpa attention, and TRL its fastest CPU settings: packing (best-fit, padding-free with
position ids), the fused AdamW, and no gradient checkpointing (on by default in SFTConfig:
less memory, much slower steps). Throughput counts real tokens per second over the steps
after the first 2. The last line holds the figures.
"""
from __future__ import annotations

import argparse
import json
import statistics

from common import (PEER_ENV, as_lmtune_command, best_precision, count_batch_tokens,
                    peak_rss_mb, step_clock)
from common import spawn as common_spawn

LR, MAX_LENGTH, WARMUP_STEPS = 5e-4, 512, 2



def steady(times: list[float], tokens: list[int]) -> float:
    return sum(tokens[WARMUP_STEPS:]) / sum(times[WARMUP_STEPS:])


def run_lmtune(steps: int, rows: int, extra: list[str] = ()) -> dict:
    import tempfile

    from lmtune.config import load_config
    from lmtune.prepare import prepare
    from lmtune.train import fit

    as_lmtune_command()
    out = tempfile.mkdtemp()
    cfg = load_config(None, [
        "task=sft", "model=smollm2", "method=lora", "data.train=aclsum", "data.packing=true",
        "data.drop_unlearnable=true", "data.max_samples=120", "lora.r=16", "lora.alpha=32",
        "lora.dropout=0.05", f"train.lr={LR}", "train.warmup=0", f"train.max_steps={steps}",
        f"train.batch_size={rows}", f"train.max_length={MAX_LENGTH}", "train.log_every=1",
        f"output_dir={out}/run", *extra])
    s = prepare(cfg)
    fit(s, progress=False)
    log = [json.loads(x) for x in open(f"{out}/run/metrics.jsonl") if '"lr"' in x]
    times = [rows / r["samples_per_s"] for r in log]  # one row per step of `rows` rows
    tokens = [r["tokens_per_s"] * t for r, t in zip(log, times)]
    return {"tokens_per_s": steady(times, tokens), "peak_rss_mb": peak_rss_mb()}


def run_trl(steps: int, rows: int, extra: list[str] = ()) -> dict:
    import tempfile

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from lmtune.data.load import read_source
    from lmtune.models.load import resolve_model

    torch.manual_seed(42)
    path = resolve_model("smollm2")
    train = read_source("aclsum", 42)["train"].rows[:120]
    data = Dataset.from_list([
        {"prompt": [{"role": "user", "content": f"{r['instruction']}\n\n{r['input']}"}],
         "completion": [{"role": "assistant", "content": r["output"]}]} for r in train])
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path)


    args = SFTConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=rows, max_steps=steps,
        learning_rate=LR, warmup_steps=0, bf16=best_precision() == "bf16",
        use_cpu=not torch.cuda.is_available(),
        report_to=[],
        save_strategy="no", eval_strategy="no", logging_steps=10_000, disable_tqdm=True,
        optim="adamw_torch_fused", max_length=MAX_LENGTH, packing=True,
        gradient_checkpointing=False,  # TRL's default (True) trades speed for memory
        completion_only_loss=True, seed=42)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    clock = step_clock()
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                         peft_config=lora, callbacks=[clock])
    counted = count_batch_tokens(trainer)
    trainer.train()
    return {"tokens_per_s": steady(clock.times, counted[:len(clock.times)]),
            "peak_rss_mb": peak_rss_mb()}


CHILDREN = {"lmtune": run_lmtune, "trl": run_trl}


def spawn(kind: str, steps: int, rows: int, extra: list[str]) -> dict:
    return common_spawn(__file__, kind, ["--steps", str(steps), "--rows", str(rows),
                                         *(f"--set={x}" for x in extra)],
                        env=PEER_ENV if kind == "trl" else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 6 steps of 2 rows")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--rows", type=int, help="packed rows per step")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an lmtune config override for its runs (to measure a lever)")
    parser.add_argument("--child", choices=list(CHILDREN), help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps = args.steps or (6 if args.quick else 10)
    rows = args.rows or (2 if args.quick else 4)
    if args.child:
        print(json.dumps(CHILDREN[args.child](steps, rows, args.set)))
        return
    rounds = args.rounds or (2 if args.quick else 3)
    results: dict[str, list[dict]] = {k: [] for k in CHILDREN}
    for r in range(rounds):
        for kind in CHILDREN:
            results[kind].append(spawn(kind, steps, rows, args.set))
            print(f"round {r + 1}/{rounds} {kind}: {json.dumps(results[kind][-1])}",
                  flush=True)
    med = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in results.items()}
    print(f"\nmedians of {rounds} rounds, {steps} steps of {rows} packed rows x {MAX_LENGTH} "
          "tokens:")
    for kind, m in med.items():
        print(f"  {kind:<8} {m['tokens_per_s']:8.0f} tokens/s  peak RSS {m['peak_rss_mb']:6.0f} MB")
    lm, trl = med["lmtune"], med["trl"]
    print(f"speedup_vs_trl={lm['tokens_per_s'] / trl['tokens_per_s']:.2f} "
          f"rss_ratio={lm['peak_rss_mb'] / trl['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
