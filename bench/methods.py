"""Which method, at which learning rate? Every registered fine-tuning method on one job,
side by side in one run, each in its own child process.

    .venv/bin/python bench/methods.py                      # every method at its default LR
    .venv/bin/python bench/methods.py --methods full,lora,ia3 --steps 40
    .venv/bin/python bench/methods.py --sweep --out sweep.jsonl   # each method over GRID
    .venv/bin/python bench/methods.py --job sft --steps 8  # SmolLM2 instruction tuning

Jobs:
    classify  the default job's recipe: MiniLM on Rotten Tomatoes, batch 32; the whole
              validation and test splits; accuracy
    sft       SmolLM2-135M-Instruct on aclsum (abstract → one-sentence summary), batch 4 of
              up to 384 tokens, on all 300 training rows; validation on 24 rows and test on
              48 rows (the first 8 and 16 papers of each split); token loss

Each child trains `--steps` optimizer steps (warmup, then linear decay over those steps),
validates once, then scores the test rows, as `lmtune train` does. `--sweep` runs every
method at each learning rate of its row in GRID and names, per method, the lowest rate whose
*validation* score is within `--tolerance` of the method's best (the test split plays no part
in the choice; of rates that score alike, the lowest is the safer default for runs longer
than the sweep's): that is how each method's default `train.lr` was chosen. With `--out`,
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

# Learning rates tried per method by --sweep: half-decade steps around what the method's
# paper or peft's examples use, extended upward where the best was the highest tried.
GRID = {
    "full": (3e-5, 7e-5, 2e-4),
    "lora": (2e-4, 7e-4, 2e-3),
    "dora": (2e-4, 7e-4, 2e-3),
    "qlora": (2e-4, 7e-4, 2e-3),
    "loha": (7e-4, 2e-3, 7e-3, 2e-2),
    "lokr": (7e-4, 2e-3, 7e-3, 2e-2),
    "vera": (2e-3, 7e-3, 2e-2, 7e-2, 2e-1),
    "ia3": (7e-4, 2e-3, 7e-3, 2e-2, 7e-2),
    "oft": (2e-3, 7e-3),
    "boft": (2e-3, 7e-3),
    "adalora": (2e-3, 7e-3, 2e-2, 7e-2),
    "prompt": (1e-2, 3e-2, 3e-1),
    "ptuning": (3e-4, 3e-3, 3e-2, 1e-1, 3e-1, 1.0, 3.0),
    "prefix": (1e-2, 3e-2, 1e-1, 3e-1),
    "freeze": (2e-4, 7e-4),
    "bitfit": (7e-3, 2e-2),
    "norms": (7e-3, 2e-2),
}


def sft_files(root: Path) -> list[str]:
    """aclsum as JSONL files: every training row, the first 8 papers' validation rows and
    the first 16 papers' test rows (three rows per paper)."""
    from lmtune.data.instructions import aclsum

    splits, keep = aclsum(seed=42), {"train": None, "validation": 24, "test": 48}
    out = []
    for name, n in keep.items():
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in splits[name].rows[:n]))
        out.append(f"data.{name}={path}")
    return out


JOBS = {  # name: (overrides, the metric that ranks, higher is better)
    "classify": ([], "accuracy", True),
    "sft": (["task=sft", "model=smollm2", "data.drop_unlearnable=true", "train.batch_size=4",
             "train.max_length=384", "eval.generate_samples=0", "eval.batch_size=8"],
            "loss", False),
}


def run_method(method: str, steps: int, lr: float | None, job: str = "classify") -> dict:
    as_lmtune_command()
    from lmtune.config import load_config
    from lmtune.train import train

    root = Path(tempfile.mkdtemp())
    out = root / "run"
    data = sft_files(root) if job == "sft" else []
    cfg = load_config(None, [f"method={method}", f"output_dir={out}",
                             f"train.max_steps={steps}", *JOBS[job][0], *data,
                             *([f"train.lr={lr}"] if lr is not None else [])])
    result = train(cfg, progress=False)
    summary = json.loads((out / "summary.json").read_text())
    size = sum(f.stat().st_size for f in (out / "model").rglob("*") if f.is_file())
    metric = JOBS[job][1]
    return {"method": method, "lr": cfg.train.lr, "steps": steps, "job": job,
            "trainable": summary["trainable_params"], f"val_{metric}": result.best[metric],
            metric: result.test[metric], "macro_f1": result.test.get("macro_f1"),
            "seconds": result.train_seconds, "samples_per_s": result.samples_per_second,
            "peak_rss_mb": summary["peak_memory_mb"], "model_mb": size / 2**20}


def print_table(rows: list[dict], steps: int, job: str) -> None:
    metric = JOBS[job][1]
    full = next(r for r in rows if r["method"] == "full")
    print(f"\n{steps} steps per method, job {job}:")
    print(f"  {'method':<8}{'lr':>9}{'trainable':>12}{'val ' + metric:>14}{'test ' + metric:>14}"
          f"{'train s':>9}{'vs full':>9}{'peak MB':>9}{'model MB':>10}")
    for r in rows:
        print(f"  {r['method']:<8}{r['lr']:>9.0e}{r['trainable']:>12,}"
              f"{r['val_' + metric]:>14.4f}{r[metric]:>14.4f}{r['seconds']:>9.1f}"
              f"{r['samples_per_s'] / full['samples_per_s']:>8.2f}x{r['peak_rss_mb']:>9.0f}"
              f"{r['model_mb']:>10.1f}")


def chosen(rows: list[dict], job: str, tolerance: float) -> list[dict]:
    """Per method, the lowest rate whose validation score is within `tolerance` of the
    method's best."""
    metric, higher = JOBS[job][1:]
    sign = 1 if higher else -1
    picked = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["lr"])
        top = max(sign * r["val_" + metric] for r in mine)
        picked.append(next(r for r in mine if sign * r["val_" + metric] >= top - tolerance))
    return picked


def main() -> None:
    from lmtune.methods import METHODS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated (default: every registered method)")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--job", choices=list(JOBS), default="classify")
    parser.add_argument("--sweep", action="store_true",
                        help="each method at every learning rate of its GRID row")
    parser.add_argument("--tolerance", type=float, default=0.01,
                        help="--sweep: validation scores this close to the best count as "
                        "equal (default 0.01: one point of accuracy)")
    parser.add_argument("--out", help="append each finished row to this JSONL file, and "
                        "skip the rows it already holds")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--lr", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_method(args.child, args.steps, args.lr, args.job)))
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
                    and r.get("job", "classify") == args.job
                    and (lr is None or abs(r["lr"] - lr) < 1e-12)), None)
        if row is None:
            row = common_spawn(__file__, method, ["--steps", str(args.steps), "--job",
                                                  args.job, *(["--lr", str(lr)] if lr else [])])
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
        rows.append(row)
        print(json.dumps(row), flush=True)
    print_table(rows, args.steps, args.job)
    metric = JOBS[args.job][1]
    if args.sweep:
        rows = chosen(rows, args.job, args.tolerance)
        print(f"\nthe lowest learning rate within {args.tolerance} of the best validation "
              f"{metric}:")
        print_table(rows, args.steps, args.job)
        print(" ".join(f"{r['method']}={r['lr']:.0e}" for r in rows))
    full = next(r for r in rows if r["method"] == "full")
    print(" ".join(f"{r['method']}_{metric}={r[metric]:.4f} {r['method']}_speed="
                   f"{r['samples_per_s'] / full['samples_per_s']:.2f} {r['method']}_rss="
                   f"{r['peak_rss_mb'] / full['peak_rss_mb']:.2f}" for r in rows))


if __name__ == "__main__":
    main()
