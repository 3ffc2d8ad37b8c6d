"""Which method? Every registered fine-tuning method on the default job's recipe (MiniLM on
Rotten Tomatoes), side by side in one run, each in its own child process.

    .venv/bin/python bench/methods.py                      # every method, 80 steps each
    .venv/bin/python bench/methods.py --methods full,lora,ia3 --steps 40

Each child trains `--steps` optimizer steps of batch 32 at the method's default learning
rate (`train.lr` unset), then scores the whole held-out test split, as `lmtune train` does.
A short run, not a tuned comparison: it shows what each method costs (trainable parameters,
time, peak memory, checkpoint size) and how far the same number of steps takes it.
The peer of every row is full fine-tuning in the same run; the last line holds the figures
as key=value pairs.
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


def run_method(method: str, steps: int) -> dict:
    as_lmtune_command()
    from lmtune.config import load_config
    from lmtune.train import train

    out = Path(tempfile.mkdtemp()) / "run"
    cfg = load_config(None, [f"method={method}", f"output_dir={out}",
                             f"train.max_steps={steps}"])
    result = train(cfg, progress=False)
    summary = json.loads((out / "summary.json").read_text())
    size = sum(f.stat().st_size for f in (out / "model").rglob("*") if f.is_file())
    return {"method": method, "lr": cfg.train.lr, "trainable": summary["trainable_params"],
            "accuracy": result.test["accuracy"], "macro_f1": result.test["macro_f1"],
            "seconds": result.train_seconds, "samples_per_s": result.samples_per_second,
            "peak_rss_mb": summary["peak_memory_mb"], "model_mb": size / 2**20}


def main() -> None:
    from lmtune.methods import METHODS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated (default: every registered method)")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_method(args.child, args.steps)))
        return
    names = args.methods.split(",")
    if "full" not in names:
        names.insert(0, "full")  # the peer of every row
    rows = []
    for name in names:
        rows.append(common_spawn(__file__, name, ["--steps", str(args.steps)]))
        print(json.dumps(rows[-1]), flush=True)
    full = next(r for r in rows if r["method"] == "full")
    print(f"\n{args.steps} steps of batch 32 per method (MiniLM, Rotten Tomatoes), test split:")
    print(f"  {'method':<8}{'lr':>9}{'trainable':>12}{'test acc':>10}{'macro-F1':>10}"
          f"{'train s':>9}{'vs full':>9}{'peak MB':>9}{'model MB':>10}")
    for r in rows:
        print(f"  {r['method']:<8}{r['lr']:>9.0e}{r['trainable']:>12,}{r['accuracy']:>10.4f}"
              f"{r['macro_f1']:>10.4f}{r['seconds']:>9.1f}"
              f"{r['samples_per_s'] / full['samples_per_s']:>8.2f}x{r['peak_rss_mb']:>9.0f}"
              f"{r['model_mb']:>10.1f}")
    print(" ".join(f"{r['method']}_acc={r['accuracy']:.4f} {r['method']}_speed="
                   f"{r['samples_per_s'] / full['samples_per_s']:.2f} {r['method']}_rss="
                   f"{r['peak_rss_mb'] / full['peak_rss_mb']:.2f}" for r in rows))


if __name__ == "__main__":
    main()
