"""lmtune vs TRL DPOTrainer: LoRA DPO of SmolLM2-135M on Rotten Tomatoes preference pairs,
side by side.

    .venv/bin/python bench/dpo.py            # 3 rounds, 12 steps of 8 pairs
    .venv/bin/python bench/dpo.py --quick    # 2 rounds, 6 steps of 4 pairs

Each run is a child process (its own peak RSS); runs alternate lmtune, TRL, lmtune, TRL...
Both get the same model, the same pairs (the first `steps x pairs` of the built-in
`rotten_tomatoes_pairs`, in the same order, through the same chat template), LoRA (r=16,
alpha=32, no dropout, all linear layers), beta 0.1, lr 5e-4, bf16 (fp32 where the CPU has no
native bf16), max_length 256, sdpa attention. TRL gets its fastest CPU settings:
precomputed reference log-probabilities (its own lever, so no reference forward per step),
padding-free batches, the fused AdamW, no gradient checkpointing. lmtune runs its defaults
for task=dpo (precomputed reference) with data.packing.

Throughput is real (non-pad) tokens of both answers and prompts per second over the
training steps after the first 2; `total_s` is the reference pass plus every step, which
is what the user waits for. The last line holds the figures.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

from common import (PEER_ENV, as_lmtune_command, best_precision, count_batch_tokens,
                    peak_rss_mb, step_clock)
from common import spawn as common_spawn

LR, BETA, MAX_LENGTH, WARMUP_STEPS = 5e-4, 0.1, 256, 2


def steady(times: list[float], tokens: list[int]) -> float:
    return sum(tokens[WARMUP_STEPS:]) / sum(times[WARMUP_STEPS:])


def pairs(n: int) -> list[dict]:
    from lmtune.data.load import read_source

    return read_source("rotten_tomatoes_pairs", 42)["train"].rows[:n]


def run_lmtune(steps: int, batch: int) -> dict:
    import tempfile

    from datasets import Dataset  # noqa: F401 - the same imports as the peer's child

    from lmtune.config import load_config
    from lmtune.prepare import prepare
    from lmtune.train import fit

    as_lmtune_command()
    out = tempfile.mkdtemp()
    rows = pairs(steps * batch + 2)  # the last 2: a validation set the config needs
    for name, part in (("train", rows[:-2]), ("val", rows[-2:])):
        with open(f"{out}/{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)
    began = time.perf_counter()
    cfg = load_config(None, [
        "task=dpo", "model=smollm2", "method=lora", f"data.train={out}/train.jsonl",
        f"data.validation={out}/val.jsonl",
        "data.packing=true", "lora.r=16", "lora.alpha=32", "lora.dropout=0",
        f"dpo.beta={BETA}", f"train.lr={LR}", "train.warmup=0", f"train.max_steps={steps}",
        f"train.batch_size={batch}", f"train.max_length={MAX_LENGTH}", "train.log_every=1",
        "train.group_by_length=false", "train.eval_every=100000", f"output_dir={out}/run"])
    s = prepare(cfg)  # includes the reference pass (train and validation pairs)
    state = fit(s, progress=False)
    total = time.perf_counter() - began - state.aside_seconds  # no validation pass
    log = [json.loads(x) for x in open(f"{out}/run/metrics.jsonl") if '"lr"' in x]
    times = [batch / r["samples_per_s"] for r in log]
    tokens = [r["tokens_per_s"] * t for r, t in zip(log, times)]
    return {"tokens_per_s": steady(times, tokens), "total_s": total,
            "peak_rss_mb": peak_rss_mb()}


def run_trl(steps: int, batch: int) -> dict:
    import tempfile

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from lmtune.models.load import resolve_model

    torch.manual_seed(42)
    began = time.perf_counter()
    path = resolve_model("smollm2")
    data = Dataset.from_list([
        {"prompt": [{"role": "user", "content": r["prompt"]}],
         "chosen": [{"role": "assistant", "content": r["chosen"]}],
         "rejected": [{"role": "assistant", "content": r["rejected"]}]}
        for r in pairs(steps * batch)])
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                 attn_implementation="sdpa")
    tok = AutoTokenizer.from_pretrained(path)
    args = DPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, max_steps=steps,
        learning_rate=LR, warmup_steps=0, beta=BETA, bf16=best_precision() == "bf16",
        use_cpu=not torch.cuda.is_available(), report_to=[], save_strategy="no",
        eval_strategy="no", logging_steps=10_000, disable_tqdm=True,
        optim="adamw_torch_fused", max_length=MAX_LENGTH, padding_free=True,
        precompute_ref_log_probs=True, gradient_checkpointing=False, seed=42)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    clock = step_clock()
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                         peft_config=lora, callbacks=[clock])
    counted = count_batch_tokens(trainer)
    trainer.train()
    total = time.perf_counter() - began
    # the reference pass runs the collator too, before the first step: the steps' batches
    # are the last ones
    return {"tokens_per_s": steady(clock.times, counted[-len(clock.times):]),
            "total_s": total, "peak_rss_mb": peak_rss_mb()}


CHILDREN = {"lmtune": run_lmtune, "trl": run_trl}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 6 steps of 4 pairs")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch", type=int, help="pairs per step")
    parser.add_argument("--child", choices=list(CHILDREN), help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps = args.steps or (6 if args.quick else 12)
    batch = args.batch or (4 if args.quick else 8)
    if args.child:
        print(json.dumps(CHILDREN[args.child](steps, batch)))
        return
    rounds = args.rounds or (2 if args.quick else 3)
    results: dict[str, list[dict]] = {k: [] for k in CHILDREN}
    for r in range(rounds):
        for kind in CHILDREN:
            results[kind].append(common_spawn(
                __file__, kind, ["--steps", str(steps), "--batch", str(batch)],
                env=PEER_ENV if kind == "trl" else None))
            print(f"round {r + 1}/{rounds} {kind}: {json.dumps(results[kind][-1])}",
                  flush=True)
    med = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in results.items()}
    print(f"\nmedians of {rounds} rounds, {steps} steps of {batch} pairs:")
    for kind, m in med.items():
        print(f"  {kind:<8} {m['tokens_per_s']:8.0f} tokens/s  total {m['total_s']:6.1f} s  "
              f"peak RSS {m['peak_rss_mb']:6.0f} MB")
    lm, trl = med["lmtune"], med["trl"]
    print(f"speedup_vs_trl={lm['tokens_per_s'] / trl['tokens_per_s']:.2f} "
          f"total_ratio={trl['total_s'] / lm['total_s']:.2f} "
          f"rss_ratio={lm['peak_rss_mb'] / trl['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
