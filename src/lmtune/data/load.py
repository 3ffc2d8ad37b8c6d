"""Data for classification: sources → validated (text, label) splits with a label map.

All validation happens here, before a model is loaded or the run dir is touched, so bad
input stops the run with a message naming the file and line and nothing half-written.
"""
from __future__ import annotations

import difflib
import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lmtune.config import DataConfig
from lmtune.data.builtin import rotten_tomatoes, rotten_tomatoes_pairs
from lmtune.data.highlights import aclsum_highlights
from lmtune.data.instructions import aclsum, bible_en_es
from lmtune.data.readers import Locations, Table, read_path
from lmtune.errors import LmtuneError


@dataclass
class LabeledSet:
    """Validated texts with their label names, in source order (multi-label: a tuple of
    names per row, maybe empty)."""

    source: str
    texts: list[str]
    labels: list[str] | list[tuple[str, ...]]
    where: Sequence[str] = field(default_factory=list)  # each row's file:line, where known

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class Splits:
    train: LabeledSet
    validation: LabeledSet
    test: LabeledSet | None
    label_names: list[str]  # class id i ↔ label_names[i]

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.label_names)}


BUILTINS = {"rotten_tomatoes": rotten_tomatoes, "rotten_tomatoes_pairs": rotten_tomatoes_pairs,
            "aclsum": aclsum, "aclsum_highlights": aclsum_highlights,
            "bible_en_es": bible_en_es}


def read_source(name: str, seed: int, cache_dir: str = "") -> Table | dict[str, Table]:
    """A built-in dataset name or a path (file or saved HF datasets dir)."""
    if name in BUILTINS:
        return BUILTINS[name](seed, cache_dir)
    return read_path(name)


def load_splits(data: DataConfig, seed: int,
                train_table: Table | None = None) -> Splits:
    """Read, validate and (where needed) split the data the config names.

    `train_table` replaces `data.train` (the Python API passes in-memory lists this way).
    When only a training source is given it is split, seeded and stratified, into
    train / validation / test. A source that carries its own splits (a built-in dataset or a
    saved DatasetDict) provides them.
    """
    source = train_table if train_table is not None else read_source(data.train, seed)
    parts = dict(source) if isinstance(source, dict) else {"train": source}
    if "train" not in parts:
        raise LmtuneError(f"{data.train}: has splits {', '.join(parts)} but no 'train' split")
    for key in ("validation", "test"):
        path = getattr(data, key)
        if path is not None:
            table = read_source(path, seed)
            parts[key] = table[key] if isinstance(table, dict) and key in table else table
            if isinstance(parts[key], dict):
                raise LmtuneError(f"{path}: has splits {', '.join(parts[key])} but no {key!r}")
    if "valid" in parts and "validation" not in parts:
        parts["validation"] = parts.pop("valid")
    sets = {name: labeled(table, data) for name, table in parts.items()
            if name in ("train", "validation", "test")}
    train = sets["train"]
    names = label_order(names_of(train.labels))
    if data.multi_label and not names:
        raise LmtuneError(f"{train.source}: no row has a label in column "
                          f"{data.label_column!r}")
    if len(names) < 2 and not data.multi_label:  # one label may be present or absent
        raise LmtuneError(f"{train.source}: every row has label {names[0]!r}; classification "
                          "needs at least two classes")
    if "validation" not in sets:
        fractions = {"validation": val_share(data, len(train))}
        if "test" not in sets and data.validation is None:
            fractions["test"] = data.test_fraction
        train, carved = stratified_split(train, fractions, seed)
        sets.update(carved)
    for key in ("validation", "test"):
        if key in sets:
            check_known_labels(sets[key], parts.get(key), data, names)
    return Splits(train, sets["validation"], sets.get("test"), names)


def labeled(table: Table, data: DataConfig) -> LabeledSet:
    """Pull (text, label) out of each row, rejecting empty texts and missing labels."""
    for key, column in (("text_column", data.text_column), ("label_column", data.label_column)):
        if column not in table.columns:
            close = difflib.get_close_matches(column, table.columns, n=1, cutoff=0.4)
            hint = f" Did you mean {close[0]!r}? Set data.{key}={close[0]}." if close else \
                f" Set data.{key} to one of them."
            raise LmtuneError(f"{table.source}: no column {column!r} (data.{key}); columns "
                              f"found: {', '.join(table.columns)}.{hint}")
    texts, labels, names = [], [], {}  # names: one object per label name, not per row
    cells, named = table.column(data.label_column), {}  # named: a name per distinct cell
    for i, text in enumerate(table.column(data.text_column)):
        if not isinstance(text, str):
            kind = "missing" if text is None else f"not a string ({type(text).__name__})"
            raise LmtuneError(f"{table.loc(i)}: text in column {data.text_column!r} is {kind}")
        if not text.strip():
            raise LmtuneError(f"{table.loc(i)}: empty text in column {data.text_column!r}")
        cell = cells[i]
        label = named.get(cell) if isinstance(cell, str) else None
        if label is None:
            label = label_set(cell, data.label_separator) if data.multi_label \
                else label_name(cell)
            if label is not None:
                label = names.setdefault(label, label)
                if isinstance(cell, str):
                    named[cell] = label
        if label is None:
            raise LmtuneError(f"{table.loc(i)}: missing label in column {data.label_column!r}"
                              + (f" (a list, or names joined by {data.label_separator!r})"
                                 if data.multi_label and cell is not None else ""))
        texts.append(text)
        labels.append(label)
    return LabeledSet(table.source, texts, labels, table.locations())


def label_name(value: Any) -> str | None:
    """Normalize a label cell to its name; None for a missing one. 1, 1.0 and "1" agree."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float, str)):
        return str(value).strip() or None
    return None


def label_set(value: Any, separator: str) -> tuple[str, ...] | None:
    """A multi-label cell → its label names, sorted and unique; () for an empty list or
    cell (a row with no label); None for a missing cell or one of another kind.

    ["b", "a"], "b,a" and "a, b" agree (separator ","); numbers are named as in `label_name`.
    """
    if isinstance(value, str):
        value = [] if not value.strip() else value.split(separator)
    if not isinstance(value, (list, tuple)):
        return None
    names = [label_name(x) for x in value]
    if any(x is None for x in names):
        return None
    return tuple(sorted(set(names)))


def names_of(labels: list) -> set[str]:
    """The label names that occur in `labels` (names, or tuples of names: multi-label)."""
    if labels and isinstance(labels[0], tuple):
        return {name for row in labels for name in row}
    return set(labels)


def label_order(names: set[str]) -> list[str]:
    """Numeric labels in numeric order ("2" before "10"), others alphabetically."""
    try:
        return sorted(names, key=float)
    except ValueError:
        return sorted(names)


def check_known_labels(part: LabeledSet, table: Table | None, data: DataConfig,
                        names: list[str]) -> None:
    known = set(names)
    for i, label in enumerate(part.labels):
        label = next((x for x in label if x not in known), None) if isinstance(label, tuple) \
            else label
        if label is not None and label not in known:
            where = table.loc(i) if table is not None else part.source
            raise LmtuneError(f"{where}: label {label!r} in column {data.label_column!r} does "
                              f"not occur in the training data (labels: {', '.join(names)})")


def pick(where, idx: list[int]):
    """The locations of rows `idx` (a `Locations`, a list, or none)."""
    if isinstance(where, Locations):
        return where.take(idx)
    return [where[i] for i in idx] if where else []


def val_share(data: DataConfig, rows: int) -> float:
    """The share of `rows` to split off for validation: `val_fraction`, capped at
    `val_max_rows` rows."""
    if not data.val_max_rows or rows * data.val_fraction <= data.val_max_rows:
        return data.val_fraction
    return data.val_max_rows / rows


def stratified_split(part: LabeledSet, fractions: dict[str, float],
                     seed: int) -> tuple[LabeledSet, dict[str, LabeledSet]]:
    """Seeded split keeping each class's share: returns (rest, {name: carved set})."""
    by_label = defaultdict(list)
    for i, label in enumerate(part.labels):
        by_label[label].append(i)
    rng = random.Random(seed)
    chosen: dict[str, list[int]] = {name: [] for name in fractions}
    rest: list[int] = []
    seen = 0  # rows of the classes done so far
    for label in sorted(by_label):
        idx = by_label[label]
        rng.shuffle(idx)
        start = 0
        for name, frac in fractions.items():
            # each class gives its share, rounded so that the running total stays on the
            # whole set's share: many small classes (multi-label combinations) still add up
            n = round((seen + len(idx)) * frac) - round(seen * frac)
            chosen[name] += idx[start:start + n]
            start += n
        seen += len(idx)
        rest += idx[start:]
    for name, idx in chosen.items():
        if not idx:
            raise LmtuneError(f"{part.source}: too few rows ({len(part)}) to split off a "
                              f"{name} set; give data.{name} explicitly")

    def subset(idx: list[int], name: str) -> LabeledSet:
        idx = sorted(idx)
        return LabeledSet(f"{part.source}[{name}]", [part.texts[i] for i in idx],
                          [part.labels[i] for i in idx],
                          pick(part.where, idx))

    return subset(rest, "train"), {name: subset(idx, name) for name, idx in chosen.items()}
