"""lmtune vs HF Trainer: MiniLM sentiment classification, side by side, in one run.

    .venv/bin/python bench/classify.py            # 3 rounds, 40 steps a run (about 8 min)
    .venv/bin/python bench/classify.py --quick    # 2 rounds, 12 steps a run (under 5 min)

Every run is a child process of this one (so each has its own peak RSS), and the runs are
interleaved: lmtune, a bare loop, Trainer at its best, Trainer as the common tutorial sets it
up, lmtune, ...
All train all-MiniLM-L6-v2 on the same Rotten Tomatoes rows, batch 32, lr 1e-4, AdamW
(weight decay 0.01), clipping at 1.0, no warmup, the same number of optimizer steps.

    lmtune            defaults: bf16 autocast (fp32 where the CPU has no native bf16),
                      dynamic padding, length-grouped batches
    bare              lmtune's batches, model, optimizer and schedule stepped by a bare torch
                      loop: the floor any loop could reach without changing the model's work
    trainer_best      Trainer with bf16=True (only where the hardware runs bf16 natively, as
                      lmtune's precision=auto decides), dynamic padding (DataCollatorWithPadding),
                      train_sampling_strategy=group_by_length, optim=adamw_torch_fused
    trainer_tutorial  Trainer as the common tutorial sets it up: fp32, every text padded to
                      max_length=128

Throughput counts the steps after the first 3 (kernel set-up), from step timestamps.
Achieved GFLOP/s = 6 x non-embedding parameters x real (non-pad) tokens / second, as a share
of the matmul ceiling in that precision (bf16, or fp32 on a CPU without native bf16, where
bf16 is emulated: evaluation ran 12x slower in bf16 than in fp32 on an AVX2-only AMD EPYC),
which a child measures in the same run (2048^3 matmuls).
The last line holds the figures as key=value pairs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

from common import PEER_ENV, as_lmtune_command, best_precision, peak_rss_mb, step_clock
from common import spawn as common_spawn

BATCH, LR, MAX_LENGTH, WARMUP_STEPS = 32, 1e-4, 128, 3


def rows(n: int) -> tuple[list[str], list[int]]:
    from lmtune.data.builtin import rotten_tomatoes

    train = rotten_tomatoes(seed=42)["train"].rows[:n]
    return [r["text"] for r in train], [int(r["label"] == "fresh") for r in train]



def first_batches(s, steps: int) -> list[list[int]]:
    """The batches lmtune's loop draws in its first `steps` steps (epoch 0)."""
    from lmtune.data.collate import epoch_batches

    tc = s.cfg.train
    batches = epoch_batches(s.data["train"].lengths(), tc.batch_size, s.cfg.seed, 0,
                            tc.group_by_length)
    assert steps <= len(batches), "the timed steps must fit in one epoch"
    return batches[:steps]


def non_embedding_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)


def steady(times: list[float], samples: list[int], tokens: list[int]) -> tuple[float, float]:
    """(samples/s, real tokens/s) over the steps after the first WARMUP_STEPS."""
    t = sum(times[WARMUP_STEPS:])
    return sum(samples[WARMUP_STEPS:]) / t, sum(tokens[WARMUP_STEPS:]) / t


# ------------------------------------------------------------------------------ children


def run_ceiling() -> dict:
    import torch

    dtype = torch.bfloat16 if best_precision() == "bf16" else torch.float32
    a = torch.randn(2048, 2048, dtype=dtype)
    b = torch.randn(2048, 2048, dtype=dtype)
    for _ in range(3):
        a @ b
    best = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        best.append(10 * 2 * 2048 ** 3 / (time.perf_counter() - start) / 1e9)
    return {"gflops": statistics.median(best)}


def lmtune_setup(steps: int, out: str, extra: list[str] = ()):
    """lmtune's prepared run of this recipe (rows, config, model, optimizer, schedule): the
    one set-up both the lmtune and the bare child step."""
    from lmtune.config import load_config
    from lmtune.data.readers import from_lists
    from lmtune.prepare import prepare

    as_lmtune_command()
    texts, labels = rows(steps * BATCH * 2)
    table = from_lists({"text": texts, "label": [str(x) for x in labels]})
    cfg = load_config(None, [f"output_dir={out}/run", f"train.max_steps={steps}",
                             f"train.batch_size={BATCH}", f"train.lr={LR}", "train.warmup=0",
                             "train.log_every=1", "data.val_fraction=0.02",
                             "train.dropout=null",  # MiniLM's own 0.1, as Trainer runs it
                             "data.test_fraction=0.02", *extra])
    return prepare(cfg, train_table=table)


def figures(sps: float, tps: float, model) -> dict:
    return {"samples_per_s": sps, "tokens_per_s": tps, "peak_rss_mb": peak_rss_mb(),
            "non_embedding_params": non_embedding_params(model)}


def run_lmtune(steps: int, extra: list[str] = ()) -> dict:
    import tempfile

    from lmtune.train import fit

    out = tempfile.mkdtemp()
    s = lmtune_setup(steps, out, extra)
    fit(s, progress=False)
    log = [json.loads(x) for x in open(f"{out}/run/metrics.jsonl") if '"lr"' in x]
    # One row per step. The epoch's one short batch can fall anywhere in lmtune's shuffled
    # batch order, so each step's rows come from the batches the loop drew, not from BATCH.
    sizes = [len(b) for b in first_batches(s, steps)]
    times = [n / r["samples_per_s"] for n, r in zip(sizes, log, strict=True)]
    tokens = [r["tokens_per_s"] * t for r, t in zip(log, times)]
    return figures(*steady(times, sizes, tokens), s.module)


def run_bare(steps: int, extra: list[str] = ()) -> dict:
    """The floor of any training loop on this recipe: lmtune's own batches, model, optimizer
    and schedule, stepped by the fewest lines of torch that train them (no accelerator, no
    logging, no progress bar). lmtune minus this is lmtune's loop overhead; this against
    Trainer at its best is the most any loop could gain without changing the model's work."""
    import tempfile

    import torch


    s = lmtune_setup(steps, tempfile.mkdtemp(), extra)
    data, lengths = s.data["train"], s.data["train"].lengths()
    model, device = s.model, s.strategy.device
    model.train()
    times, tokens, sizes = [], [], []
    for idx in first_batches(s, steps):
        start = time.perf_counter()
        batch = s.task.batch(data, idx, s.pad_id, device)
        (s.task.loss_sum(model, batch, s.autocast) / len(idx)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.cfg.train.max_grad_norm)
        s.optimizer.step()
        s.optimizer.zero_grad(set_to_none=True)
        s.scheduler.step()
        times.append(time.perf_counter() - start)
        tokens.append(sum(lengths[i] for i in idx))
        sizes.append(len(idx))
    return figures(*steady(times, sizes, tokens), model)


def run_trainer(steps: int, best: bool) -> dict:
    import tempfile

    import torch
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer,
                              DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    from lmtune.models.load import resolve_model

    torch.manual_seed(42)
    path = resolve_model("minilm")
    tok = AutoTokenizer.from_pretrained(path)
    texts, labels = rows(steps * BATCH * 2)
    enc = tok(texts, truncation=True, max_length=MAX_LENGTH,
              padding=False if best else "max_length")
    data = Dataset.from_dict({"input_ids": enc["input_ids"],
                              "attention_mask": enc["attention_mask"], "labels": labels,
                              "length": [len(x) for x in enc["input_ids"]]})
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)


    from transformers import default_data_collator

    counted: list[int] = []  # real tokens of each batch, in the order the loader made them
    base = DataCollatorWithPadding(tok) if best else default_data_collator

    def collate(features):
        counted.append(sum(sum(f["attention_mask"]) for f in features))
        return base(features)

    clock = step_clock()
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=BATCH, max_steps=steps,
        learning_rate=LR, weight_decay=0.01, max_grad_norm=1.0, warmup_steps=0,
        lr_scheduler_type="linear", bf16=best and best_precision() == "bf16",
        use_cpu=not torch.cuda.is_available(),
        report_to=[],
        save_strategy="no", eval_strategy="no", logging_steps=10_000, disable_tqdm=True,
        optim="adamw_torch_fused" if best else "adamw_torch",
        train_sampling_strategy="group_by_length" if best else "random", seed=42)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[clock],
                      data_collator=collate)
    trainer.train()
    return figures(*steady(clock.times, [BATCH] * len(clock.times), counted[:len(clock.times)]),
                   model)


# ------------------------------------------------------------------------------- parent

CHILDREN = {"ceiling": lambda steps, extra: run_ceiling(), "lmtune": run_lmtune,
            "bare": run_bare,
            "trainer_best": lambda steps, extra: run_trainer(steps, best=True),
            "trainer_tutorial": lambda steps, extra: run_trainer(steps, best=False)}


def spawn(kind: str, steps: int, extra: list[str]) -> dict:
    return common_spawn(__file__, kind,
                        ["--steps", str(steps), *(f"--set={x}" for x in extra)],
                        env=PEER_ENV if kind.startswith("trainer") else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 12 steps")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an lmtune config override for its runs (to measure a lever)")
    parser.add_argument("--child", choices=list(CHILDREN), help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps = args.steps or (12 if args.quick else 40)
    if args.child:
        print(json.dumps(CHILDREN[args.child](steps, args.set)))
        return
    rounds = args.rounds or (2 if args.quick else 3)
    results: dict[str, list[dict]] = {k: [] for k in CHILDREN}
    for r in range(rounds):
        for kind in CHILDREN:  # interleaved: A B C D A B C D ...
            results[kind].append(spawn(kind, steps, args.set))
            print(f"round {r + 1}/{rounds} {kind}: {json.dumps(results[kind][-1])}",
                  flush=True)
    med = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in results.items()}
    ceiling = med["ceiling"]["gflops"]
    print(f"\nmedians of {rounds} rounds, {steps} steps of batch {BATCH} each "
          f"({best_precision()} matmul ceiling {ceiling:.0f} GFLOP/s):")
    print(f"  {'run':<18}{'samples/s':>10}{'tokens/s':>10}{'GFLOP/s':>9}{'ceiling':>9}"
          f"{'peak RSS MB':>13}")
    share = {}
    for kind in ("lmtune", "bare", "trainer_best", "trainer_tutorial"):
        m = med[kind]
        gflops = 6 * m["non_embedding_params"] * m["tokens_per_s"] / 1e9
        share[kind] = gflops / ceiling
        print(f"  {kind:<18}{m['samples_per_s']:>10.1f}{m['tokens_per_s']:>10.0f}"
              f"{gflops:>9.1f}{share[kind]:>9.1%}{m['peak_rss_mb']:>13.0f}")
    lm, best, tutorial = med["lmtune"], med["trainer_best"], med["trainer_tutorial"]
    print(f"speedup_vs_best={lm['samples_per_s'] / best['samples_per_s']:.2f} "
          f"speedup_vs_tutorial={lm['samples_per_s'] / tutorial['samples_per_s']:.2f} "
          f"ceiling_share={share['lmtune']:.2f} "
          f"rss_ratio={lm['peak_rss_mb'] / best['peak_rss_mb']:.2f} "
          f"bare_vs_best={med['bare']['samples_per_s'] / best['samples_per_s']:.2f}")


if __name__ == "__main__":
    main()
