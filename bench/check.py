"""How long `lmtune check` takes on a large classification set (goal: 100k rows in seconds).

    .venv/bin/python bench/check.py              # 100,000 rows, 3 rounds
    .venv/bin/python bench/check.py --rows 20000

Writes a seeded CSV of review-like rows (40-300 characters, two labels) with planted
problems (exact and near duplicates, rows leaked into the test split, a conflicting label, an
API key), then times `run_check` in a fresh process per round: the findings alone
(`--no-tokens`), and with MiniLM's tokenizer counting every row's tokens. There is no peer:
no other fine-tuning tool checks data this way. The last line holds the medians, and the
counts found, which must equal the planted ones.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the film a story its cast was is and of to with but plot acting music ending "
         "script director scenes moments performance visual effects humor pacing dialogue "
         "characters camera tone world heart").split()


def write_data(out: Path, rows: int) -> dict:
    rng = random.Random(0)
    data = [{"text": f"#{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 50))),
             "label": rng.choice(["fresh", "rotten"])} for i in range(rows)]
    cut, cut2 = int(rows * 0.8), int(rows * 0.9)
    train, val, test = data[:cut], data[cut:cut2], data[cut2:]
    train += [dict(train[i]) for i in range(0, 50)]  # 50 exact duplicates
    train += [{"text": train[i]["text"].upper() + "!", "label": train[i]["label"]}
              for i in range(50, 80)]  # 30 near duplicates
    test += [dict(train[i]) for i in range(100, 120)]  # 20 leaked rows
    train.append({"text": train[200]["text"], "label": "rotten" if train[200]["label"] ==
                  "fresh" else "fresh"})  # one conflict (also an exact duplicate)
    train.append({"text": "my key AKIA" + "ABCDEFGHIJKLMNOP please", "label": "fresh"})
    for name, part in (("train", train), ("val", val), ("test", test)):
        with open(out / f"{name}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["text", "label"])
            w.writeheader()
            w.writerows(part)
    return {"exact": 51, "near": 30, "leaked": 20, "conflicts": 1, "secrets": 1}


def child(out: str, tokens: bool) -> None:
    from lmtune.check import run_check
    from lmtune.config import load_config

    cfg = load_config(None, [f"data.train={out}/train.csv", f"data.validation={out}/val.csv",
                             f"data.test={out}/test.csv"])
    began = time.perf_counter()
    f = run_check(cfg, tokens=tokens)
    print(json.dumps({"seconds": time.perf_counter() - began,
                      "exact": f["duplicates"]["train"]["exact"]["count"],
                      "near": f["duplicates"]["train"]["near"]["count"],
                      "leaked": sum(o["count"] for o in f["train_test_overlap"].values()),
                      "conflicts": f["label_conflicts"]["count"],
                      "secrets": sum(s["count"] for s in f["secrets"].values())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.tokens)
        return
    out = Path(tempfile.mkdtemp())
    planted = write_data(out, args.rows)
    results: dict[str, list[dict]] = {"findings only": [], "with token lengths": []}
    for r in range(args.rounds):
        for kind, flag in (("findings only", []), ("with token lengths", ["--tokens"])):
            proc = subprocess.run([sys.executable, __file__, "--child", str(out), *flag],
                                  capture_output=True, text=True, check=True)
            results[kind].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {kind}: {json.dumps(results[kind][-1])}", flush=True)
    found = {k: v for k, v in results["findings only"][0].items() if k != "seconds"}
    med = {k: statistics.median(x["seconds"] for x in v) for k, v in results.items()}
    print(f"rows={args.rows + 122} findings_s={med['findings only']:.2f} "
          f"with_tokens_s={med['with token lengths']:.2f} found={json.dumps(found)} "
          f"planted={json.dumps(planted)} match={found == planted}")


if __name__ == "__main__":
    main()
