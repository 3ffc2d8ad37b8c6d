"""Which method, at which learning rate? Every registered fine-tuning method on the default
job's recipe (MiniLM on Rotten Tomatoes), side by side in one run, each in its own child
process.

    .venv/bin/python bench/methods.py                      # every method at its default LR
    .venv/bin/python bench/methods.py --methods full,lora,ia3 --steps 40
    .venv/bin/python bench/methods.py --sweep --out sweep.jsonl   # each method over GRID

Each child trains `--steps` optimizer steps of batch 32 (warmup, then linear decay over those
steps), validates once on the validation split, then scores the whole test split, as
`lmtune train` does. `--sweep` runs every method at each learning rate of its row in GRID
and names, per method, the rate with the best *validation* accuracy (the test split plays no
part in the choice): that is how each method's default `train.lr` was chosen. With `--out`,
every finished child is appended to that JSONL file and skipped when the command is run
again, so an interrupted sweep continues where it stopped.

A short run, not a tuned comparison: it shows what each method costs (trainable parameters,
time, peak memory, checkpoint size) and how far the same number of steps takes it. The peer
of every row is full fine-tuning in the same run; the last line holds the figures as
key=value pairs.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import as_lmtune_command  # noqa: E402
from common import spawn as common_spawn  # noqa: E402

# Learning rates tried per method by --sweep: three or four half-decade steps around what
# the method's paper or peft's examples use.
GRID = {
    "full": (3e-5, 7e-5, 2e-4),
    "lora": (2e-4, 7e-4, 2e-3),
    "dora": (2e-4, 7e-4, 2e-3),
    "qlora": (2e-4, 7e-4, 2e-3),
    "loha": (7e-4, 2e-3, 7e-3),
    "lokr": (7e-4, 2e-3, 7e-3),
    "vera": (2e-3, 7e-3, 2e-2),
    "ia3": (7e-4, 2e-3, 7e-3),
    "oft": (2e-4, 7e-4, 2e-3),
    "boft": (7e-4, 2e-3, 7e-3),
    "adalora": (7e-4, 2e-3, 7e-3),
    "prompt": (3e-3, 3e-2, 3e-1),
    "ptuning": (3e-4, 3e-3, 3e-2),
    "prefix": (3e-3, 1e-2, 3e-2),
    "freeze": (7e-5, 2e-4, 7e-4),
    "bitfit": (7e-4, 2e-3, 7e-3),
    "norms": (7e-4, 2e-3, 7e-3),
}


def run_method(method: str, steps: int, lr: float | None) -> dict:
    as_lmtune_command()
    from lmtune.config import load_config
    from lmtune.train import train

    out = Path(tempfile.mkdtemp()) / "run"
    cfg = load_config(None, [f"method={method}", f"output_dir={out}",
                             f"train.max_steps={steps}",
                             *([f"train.lr={lr}"] if lr is not None else [])])
    result = train(cfg, progress=False)
    summary = json.loads((out / "summary.json").read_text())
    size = sum(f.stat().st_size for f in (out / "model").rglob("*") if f.is_file())
    return {"method": method, "lr": cfg.train.lr, "steps": steps,
            "trainable": summary["trainable_params"], "val_accuracy": result.best["accuracy"],
            "accuracy": result.test["accuracy"], "macro_f1": result.test["macro_f1"],
            "seconds": result.train_seconds, "samples_per_s": result.samples_per_second,
            "peak_rss_mb": summary["peak_memory_mb"], "model_mb": size / 2**20}


def print_table(rows: list[dict], steps: int) -> None:
    full = next(r for r in rows if r["method"] == "full")
    print(f"\n{steps} steps of batch 32 per method (MiniLM, Rotten Tomatoes):")
    print(f"  {'method':<8}{'lr':>9}{'trainable':>12}{'val acc':>9}{'test acc':>10}"
          f"{'macro-F1':>10}{'train s':>9}{'vs full':>9}{'peak MB':>9}{'model MB':>10}")
    for r in rows:
        print(f"  {r['method']:<8}{r['lr']:>9.0e}{r['trainable']:>12,}{r['val_accuracy']:>9.4f}"
              f"{r['accuracy']:>10.4f}{r['macro_f1']:>10.4f}{r['seconds']:>9.1f}"
              f"{r['samples_per_s'] / full['samples_per_s']:>8.2f}x{r['peak_rss_mb']:>9.0f}"
              f"{r['model_mb']:>10.1f}")


def chosen(rows: list[dict]) -> list[dict]:
    """Per method, the row with the best validation accuracy (ties: the lower rate)."""
    best: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: r["lr"]):
        if r["method"] not in best or r["val_accuracy"] > best[r["method"]]["val_accuracy"]:
            best[r["method"]] = r
    return [best[m] for m in dict.fromkeys(r["method"] for r in rows)]


def main() -> None:
    from lmtune.methods import METHODS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated (default: every registered method)")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--sweep", action="store_true",
                        help="each method at every learning rate of its GRID row")
    parser.add_argument("--out", help="append each finished row to this JSONL file, and "
                        "skip the rows it already holds")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--lr", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_method(args.child, args.steps, args.lr)))
        return
    names = args.methods.split(",")
    if "full" not in names:
        names.insert(0, "full")  # the peer of every row
    jobs = [(m, lr) for m in names for lr in (GRID[m] if args.sweep else (None,))]
    done = []
    if args.out and Path(args.out).exists():
        done = [json.loads(x) for x in Path(args.out).read_text().splitlines() if x.strip()]
    rows = []
    for method, lr in jobs:
        row = next((r for r in done if r["method"] == method and r["steps"] == args.steps
                    and (lr is None or abs(r["lr"] - lr) < 1e-12)), None)
        if row is None:
            row = common_spawn(__file__, method, ["--steps", str(args.steps),
                                                  *(["--lr", str(lr)] if lr else [])])
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
        rows.append(row)
        print(json.dumps(row), flush=True)
    print_table(rows, args.steps)
    if args.sweep:
        best = chosen(rows)
        print("\nbest learning rate by validation accuracy:")
        print_table(best, args.steps)
        print(" ".join(f"{r['method']}={r['lr']:.0e}" for r in best))
        rows = best
    full = next(r for r in rows if r["method"] == "full")
    print(" ".join(f"{r['method']}_acc={r['accuracy']:.4f} {r['method']}_speed="
                   f"{r['samples_per_s'] / full['samples_per_s']:.2f} {r['method']}_rss="
                   f"{r['peak_rss_mb'] / full['peak_rss_mb']:.2f}" for r in rows))


if __name__ == "__main__":
    main()
