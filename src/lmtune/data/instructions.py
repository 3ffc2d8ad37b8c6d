"""Built-in instruction datasets from shipped data, in alpaca form (instruction/input/output).

    aclsum       summarization: an ACL paper's abstract → one sentence on its challenge,
                 approach or outcome (aclsum package; 100/50/100 papers → 300/150/300 rows)
    bible_en_es  translation: an English verse (KJV) → the same verse in Spanish (Reina-Valera
                 1909), from the Debian sword packages; 31k verse pairs, 200 held out for
                 validation and 200 for test (seeded)
"""
from __future__ import annotations

import functools
import json
import random
import re
import sys
from pathlib import Path
from typing import Iterator

from lmtune.config import cache_root
from lmtune.data.builtin import package_dir
from lmtune.data.readers import Table
from lmtune.errors import LmtuneError

COLUMNS = ["instruction", "input", "output"]
ASPECTS = ("challenge", "approach", "outcome")
SWORD_DIR = Path("/usr/share/sword")
SWORD_MODULES = ("engKJV2006eb", "spaRV1909eb")


def detokenize(text: str) -> str:
    """Undo the PTB-style spacing of aclsum's sentences ("results ( 20 % ) ." → "results (20%).")."""
    text = re.sub(r" ([.,;:!?%)\]}])", r"\1", text)
    text = re.sub(r"([(\[{]) ", r"\1", text)
    return re.sub(r" (n't|'s|'re|'ve|'d|'ll|'m)\b", r"\1", text)


def aclsum_papers() -> Iterator[tuple[str, list[tuple[int, dict]]]]:
    """(split, [(line, paper), ...]) for aclsum's train, validation and test files."""
    root = package_dir("aclsum", "aclsum==0.1.2") / "dataset"
    for name, file in (("train", "train.jsonl"), ("validation", "val.jsonl"),
                       ("test", "test.jsonl")):
        text = (root / file).read_text(encoding="utf-8")
        yield name, [(n, json.loads(line)) for n, line in enumerate(text.splitlines(), 1)]


def aclsum(seed: int, cache_dir: str = "") -> dict[str, Table]:
    out = {}
    for name, papers in aclsum_papers():
        rows, lines = [], []
        for n, paper in papers:
            abstract = detokenize(" ".join(paper["sentences"]["abstract"]))
            for aspect in ASPECTS:
                rows.append({"instruction": f"Summarize the {aspect} of this paper in one "
                                            "sentence.",
                             "input": abstract, "output": paper["summary"][aspect].strip()})
                lines.append(n)
        out[name] = Table(f"aclsum[{name}]", COLUMNS, rows, lines)
    return out


def bible_en_es(seed: int, cache_dir: str = "") -> dict[str, Table]:
    pairs = _verse_pairs(cache_root(cache_dir) / "datasets" / "bible_en_es.jsonl")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    held = {"validation": sorted(order[:200]), "test": sorted(order[200:400]),
            "train": sorted(order[400:])}
    out = {}
    for name, idx in held.items():
        rows = [{"instruction": "Translate this verse from English to Spanish.",
                 "input": pairs[i][0], "output": pairs[i][1]} for i in idx]
        out[name] = Table(f"bible_en_es[{name}]", COLUMNS, rows, [i + 1 for i in idx], "row")
    return out


def _verse_pairs(cache: Path) -> list[tuple[str, str]]:
    """(English, Spanish) verse pairs; read from the sword modules once (about 11 s), then
    from a JSONL cache."""
    if cache.exists():
        return [tuple(json.loads(x)) for x in cache.read_text(encoding="utf-8").splitlines()]
    if not all((SWORD_DIR / "mods.d" / f"{m}.conf").exists() for m in SWORD_MODULES):
        raise LmtuneError("bible_en_es needs the Debian packages sword-text-kjv and "
                          "sword-text-sparv (`sudo apt-get install sword-text-kjv "
                          "sword-text-sparv`; `make setup` does it as root)")
    try:
        from pysword.modules import SwordModules
    except ImportError:
        raise LmtuneError("bible_en_es reads the sword modules with pysword: "
                          "pip install 'lmtune[bible]'") from None

    print("reading the KJV and Reina-Valera sword modules (once, about 11 s)", file=sys.stderr)
    modules = SwordModules(str(SWORD_DIR))
    modules.parse_modules()
    en, es = (_read_in_order(modules.get_bible_from_module(m)) for m in SWORD_MODULES)
    clean = lambda t: " ".join(t.replace("¶", " ").split())  # noqa: E731
    pairs = [(clean(a), clean(b)) for a, b in zip(en, es) if clean(a) and clean(b)]
    from lmtune.rundir import atomic_write_text

    atomic_write_text(cache, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    return pairs


def _read_in_order(bible) -> list[str]:
    """Every verse of a pysword bible, in canonical order.

    Both modules store one zlib block per book (BlockType=BOOK), and pysword decompresses the
    verse's whole block for every verse it reads: 31k decompressions of up to 250 KB, 125 s
    for the two modules on a 2-core AVX2 AMD host, against 7 s when each book is decompressed
    once. Verses come in order, so remembering the last block is enough.
    """
    bible._decompressed_text = functools.lru_cache(maxsize=2)(bible._decompressed_text)
    return list(bible.get_iter())
