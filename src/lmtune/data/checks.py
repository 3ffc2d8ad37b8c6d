"""What can be wrong with a dataset before any model sees it: duplicates, rows leaked between
splits, one text with two labels, empty or garbled rows, secrets and personal data.

Rows are compared after normalization (Unicode NFKC, case folded, punctuation dropped,
whitespace collapsed), so "Great film!" and "great  film" count as the same row. Everything
here is one pass of hashing and regular expressions over the texts: no model, no tokenizer.
"""
from __future__ import annotations

import functools
import re
import statistics
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field

EXAMPLES = 5  # example lines kept per finding

_SPACE = re.compile(r"\s+")

SECRETS = {  # name → pattern; matched text is never echoed whole
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "AWS access key": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "OpenAI key": re.compile(r"\bsk-(?:proj-)?[A-Za-z0-9_-]{20,}"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}"),
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}"),
}
PII = {
    "e-mail address": re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"),
    # international or grouped numbers with 9-15 digits: +44 20 7946 0958, (555) 123-4567
    "phone number": re.compile(r"(?<![\w.])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}"
                               r"[ .-])\d{3,4}[ .-]\d{3,4}(?![\w.])"),
}
# U+FFFD, C0/C1 control characters other than tab and newlines, and UTF-8 read as Latin-1
_GARBLED = re.compile(r"[\ufffd\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]|Ã[\x80-\xbf]|â€")


@functools.cache
def _punctuation() -> dict[int, None]:
    """Every Unicode punctuation code point, for `str.translate` (built on first use)."""
    return dict.fromkeys(i for i in range(0x110000)
                         if unicodedata.category(chr(i)).startswith("P"))


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold().translate(_punctuation())
    return _SPACE.sub(" ", text).strip()


@dataclass
class Rows:
    """One split as the checks see it: each row's text (a conversation or pair joined into
    one), its label (classification) and its file:line."""

    texts: list[str]
    where: list[str]
    labels: list[str] | None = None


def item_text(item) -> str:
    """One text for a raw item: a text as it is, a conversation's turns or a preference
    pair's prompt and answers joined by newlines."""
    if isinstance(item, str):
        return item
    if hasattr(item, "prompt"):  # a preference pair
        return "\n".join([*(m.content for m in item.prompt), item.chosen, item.rejected])
    return "\n".join(m.content for m in item)


@dataclass
class Finding:
    count: int = 0
    examples: list[str] = field(default_factory=list)  # file:line, maybe with a note

    def add(self, example: str) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(example)


def check_splits(splits: dict[str, Rows], cheap: bool = False) -> dict:
    """Every finding, as a dict of plain values (the `--json` file). `cheap`: leakage and
    label conflicts only (what `lmtune train` checks before it trains)."""
    keys = {name: [normalize(t) for t in rows.texts] for name, rows in splits.items()}
    out = {"train_test_overlap": _overlap(splits, keys),
           "label_conflicts": _conflicts(splits, keys)}
    if cheap:
        return out
    out["duplicates"] = {name: _duplicates(rows, keys[name]) for name, rows in splits.items()}
    out["label_balance"] = {name: dict(Counter(rows.labels).most_common())
                            for name, rows in splits.items() if rows.labels is not None}
    out["rows"] = {name: len(rows.texts) for name, rows in splits.items()}
    out |= _row_problems(splits, keys)
    out["secrets"] = _patterns(splits, SECRETS, mask=True)
    out["pii"] = _patterns(splits, PII, mask=False)
    return out


def _overlap(splits: dict[str, Rows], keys: dict[str, list[str]]) -> dict:
    """Rows of validation and test whose normalized text is also in an earlier split."""
    out, seen = {}, {}  # key → (split, row) of its first occurrence
    for name in ("train", "validation", "test"):
        if name not in splits:
            continue
        if seen:
            f = Finding()
            for i, key in enumerate(keys[name]):
                if key in seen:
                    first, j = seen[key]
                    f.add(f"{splits[name].where[i]} = {splits[first].where[j]}")
            out[name] = vars(f)
        for i, key in enumerate(keys[name]):
            seen.setdefault(key, (name, i))
    return out


def _conflicts(splits: dict[str, Rows], keys: dict[str, list[str]]) -> dict:
    """Normalized texts that carry more than one label, over all splits. Rows are kept as
    (split, row) until shown: a million rows would otherwise hold a million strings."""
    first: dict[str, tuple] = {}  # key → (label, split, row) of its first occurrence
    others: dict[str, dict] = {}  # key → label → (split, row), for keys with two labels
    for name, rows in splits.items():
        if rows.labels is None:
            continue
        for i, (key, label) in enumerate(zip(keys[name], rows.labels)):
            seen = first.setdefault(key, (label, name, i))
            if seen[0] != label:
                others.setdefault(key, {seen[0]: seen[1:]}).setdefault(label, (name, i))
    f = Finding()
    for by_label in others.values():
        f.add(", ".join(f"{splits[n].where[i]} ({label})" for label, (n, i) in by_label.items()))
    return vars(f)


def _duplicates(rows: Rows, keys: list[str]) -> dict:
    """Rows that repeat an earlier row of their split: exactly, or once normalized."""
    exact, near = Finding(), Finding()
    first_text: dict[str, str] = {}
    first_key: dict[str, str] = {}
    for text, key, where in zip(rows.texts, keys, rows.where):
        if text in first_text:
            exact.add(f"{where} = {first_text[text]}")
        elif key in first_key:
            near.add(f"{where} ~ {first_key[key]}")
        first_text.setdefault(text, where)
        first_key.setdefault(key, where)
    return {"exact": vars(exact), "near": vars(near)}


def _row_problems(splits: dict[str, Rows], keys: dict[str, list[str]]) -> dict:
    """Near-empty rows (under 3 characters once normalized), garbled text (replacement or
    control characters, UTF-8 read as Latin-1), and rows over 20x their split's median
    length and 10,000 characters."""
    empty, garbled, long = ({name: Finding() for name in splits} for _ in range(3))
    for name, rows in splits.items():
        median = statistics.median(map(len, rows.texts)) if rows.texts else 0
        for text, key, where in zip(rows.texts, keys[name], rows.where):
            if len(key) < 3:
                empty[name].add(where)
            if _GARBLED.search(text):
                garbled[name].add(where)
            if len(text) > max(20 * median, 10_000):
                long[name].add(f"{where} ({len(text):,} characters)")
    as_dict = lambda d: {k: vars(v) for k, v in d.items()}  # noqa: E731
    return {"near_empty": as_dict(empty), "garbled": as_dict(garbled),
            "very_long": as_dict(long)}


def _patterns(splits: dict[str, Rows], patterns: dict, mask: bool) -> dict:
    """Matches of each pattern: counts and lines; a secret shows its first 4 characters."""
    found = {kind: Finding() for kind in patterns}
    for rows in splits.values():
        for text, where in zip(rows.texts, rows.where):
            for kind, pattern in patterns.items():
                for m in pattern.finditer(text):
                    shown = f"{m.group()[:4]}… ({len(m.group())} characters)" if mask \
                        else m.group()
                    found[kind].add(f"{where}: {shown}")
    return {kind: vars(f) for kind, f in found.items() if f.count}


def leaks_or_conflicts(findings: dict) -> list[str]:
    """One line per problem that should stop a careful user: rows leaked between splits,
    texts with two labels."""
    lines = [f"{n} {name} row(s) also appear in an earlier split (e.g. "
             f"{f['examples'][0]})" for name, f in findings["train_test_overlap"].items()
             if (n := f["count"])]
    c = findings["label_conflicts"]
    if c["count"]:
        lines.append(f"{c['count']} text(s) carry more than one label (e.g. "
                     f"{c['examples'][0]})")
    return lines
