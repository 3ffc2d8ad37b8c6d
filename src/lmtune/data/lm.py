"""Data for language-model tasks (sft, seq2seq, clm, mlm): sources → splits → tokens + loss
masks.

    rows ─formats─▶ conversations | texts ─templates─▶ tokens + trained mask
         ─(packing)─▶ rows of Encoded ─collate─▶ batches
    (seq2seq: conversations ─seq2seq─▶ encoder tokens + decoder targets)

Everything that can fail on user input (formats, roles, samples with nothing to learn)
fails here, before training, naming the file and line.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

import torch

from lmtune.config import Config
from lmtune.data import formats, templates
from lmtune.data.collate import Encoded, padded
from lmtune.data.load import read_source, val_share
from lmtune.data.packing import best_fit, padding_share
from lmtune.data.readers import Table
from lmtune.errors import LmtuneError

SPLITS = ("train", "validation", "test")


@dataclass
class LMSplits:
    """Per split: conversations (sft) or texts (clm/mlm), and where each came from."""

    items: dict[str, list]
    where: dict[str, list[str]]
    format: str


def load_lm_splits(cfg: Config, conversations: bool, train_table: Table | None = None,
                   test_only: bool = False) -> LMSplits:
    """Read the splits: conversations (`conversations`) or plain texts; `test_only`
    (evaluation on `data.test`) reads nothing else."""
    data = cfg.data
    tables = read_tables(cfg, train_table, test_only)
    first = tables.get("train", tables.get("test"))
    pair = (data.source_column, data.target_column)
    fmt = data.format
    if fmt == "auto":
        fmt = formats.detect_format(first, data.text_column, pair=pair)
    if fmt.endswith("preference"):
        raise LmtuneError(f"data.format={fmt}: preference pairs are for task=dpo")
    if conversations != (fmt != "text"):
        raise LmtuneError(f"{first.source}: format {fmt!r} does not suit "
                          f"task={cfg.task} (sft and seq2seq take chat-style or source/"
                          "target rows; clm/mlm take text)")
    items, where = {}, {}
    for name in SPLITS:
        if name not in tables:
            continue
        rows = tables[name]
        items[name] = formats.conversations(rows, fmt, pair=pair) if fmt != "text" else \
            formats.texts(rows, data.text_column)
        where[name] = [rows.loc(i) for i in range(len(rows.rows))]
    if "train" in items:
        split_missing(items, where, data, cfg.seed)
    return LMSplits(items, where, fmt)


def read_tables(cfg: Config, train_table: Table | None = None, test_only: bool = False
                ) -> dict[str, Table]:
    """The tables of each split the config names (`test_only`: only `data.test`, when set),
    each cut to `data.max_samples` rows."""
    data = cfg.data
    if test_only and data.test is not None:
        tables = {"test": _read_split(data.test, "test", cfg)}
    else:
        source = train_table if train_table is not None else \
            read_source(data.train, cfg.seed, cfg.cache_dir)
        tables = dict(source) if isinstance(source, dict) else {"train": source}
        if "valid" in tables and "validation" not in tables:
            tables["validation"] = tables.pop("valid")
        for key in ("validation", "test"):
            if getattr(data, key) is not None:
                tables[key] = _read_split(getattr(data, key), key, cfg)
        if "train" not in tables:
            raise LmtuneError(f"{data.train}: has splits {', '.join(tables)} but no 'train' "
                              "split")
    n = data.max_samples
    return {name: Table(t.source, t.columns, t.rows[:n], t.lines[:n], t.unit) if n else t
            for name, t in tables.items()}


def _read_split(name: str, split: str, cfg: Config) -> Table:
    """One split from a source: a file, or the `split` part of a built-in dataset."""
    t = read_source(name, cfg.seed, cfg.cache_dir)
    return t.get(split, next(iter(t.values()))) if isinstance(t, dict) else t


def split_missing(items: dict, where: dict, data, seed: int) -> None:
    """Carve validation (and test, when no source names one) out of train, seeded."""
    want = {}
    if "validation" not in items:
        want["validation"] = val_share(data, len(items["train"]))
    if "test" not in items and data.test is None and data.validation is None:
        want["test"] = data.test_fraction
    if not want:
        return
    order = list(range(len(items["train"])))
    random.Random(seed).shuffle(order)
    start = 0
    for name, frac in want.items():
        n = max(1, round(len(order) * frac))
        take = sorted(order[start:start + n])
        start += n
        items[name] = [items["train"][i] for i in take]
        where[name] = [where["train"][i] for i in take]
    rest = sorted(order[start:])
    if not rest:
        raise LmtuneError(f"{data.train}: too few rows to split off validation/test")
    items["train"] = [items["train"][i] for i in rest]
    where["train"] = [where["train"][i] for i in rest]


# ------------------------------------------------------------------------- tokenizing


@dataclass
class Report:
    """What the loss will see, computed before training (saved as data_report.json)."""

    samples: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    role_tokens: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    trained_cut: int = 0  # samples whose cut took trained tokens (answers) too
    unlearnable: int = 0
    dropped: int = 0
    padding_unpacked: float = 0.0
    padding_packed: float | None = None
    note: str = ""

    def lines(self) -> list[str]:
        pct = lambda k: f"{k / max(1, self.samples):.1%}"  # noqa: E731
        roles = ", ".join(f"{r} {n:,}" for r, n in sorted(self.role_tokens.items()))
        out = [f"samples {self.samples:,}, tokens {self.tokens:,} ({roles})",
               f"trained tokens {self.trained_tokens:,} "
               f"({self.trained_tokens / max(1, self.tokens):.1%} of all)",
               f"truncated {pct(self.truncated)}, with no trained token "
               f"{pct(self.unlearnable)} (dropped {self.dropped})",
               f"padding {self.padding_unpacked:.1%} unpacked (length-grouped batches)"]
        if self.padding_packed is not None:
            out[-1] += f", {self.padding_packed:.1%} packed"
        if self.note:
            out.append(self.note)
        return out


def encode_lm(items: list, where: list[str], cfg: Config, train: bool,
              tokenize: Callable[[object], list[templates.Tokenized]], causal: bool = True
              ) -> tuple[Encoded, Report]:
    """Tokenize one split with `tokenize` (an item → its rows); for the training split,
    enforce that every sample teaches.

    `causal`: a trained token teaches only where a token precedes it (next-token loss), and
    each row's loss terms are counted in `units`; otherwise (masked LM) the masks are drawn
    later and every trained token counts.
    """
    data, max_length, report = cfg.data, cfg.train.max_length, Report()
    rows: list[templates.Tokenized] = []
    for item, loc in zip(items, where):
        for t in tokenize(item):
            report.samples += 1
            report.tokens += len(t.input_ids)
            report.truncated += t.truncated
            report.trained_cut += t.trained_cut
            for role, n in t.role_tokens.items():
                report.role_tokens[role] = report.role_tokens.get(role, 0) + n
            if not any(t.trained[1:] if causal else t.trained):
                report.unlearnable += 1
                if train and not data.drop_unlearnable:
                    raise LmtuneError(
                        f"{loc}: no token left to train on after truncation to "
                        f"train.max_length={max_length} (data.train_on={data.train_on}); "
                        "raise train.max_length, or set data.drop_unlearnable=true")
                report.dropped += 1
                continue
            report.trained_tokens += sum(t.trained[1:]) if causal else 0
            rows.append(t)
    if not rows:
        raise LmtuneError(f"{where[0] if where else cfg.data.train}: no usable samples")
    enc = Encoded([t.input_ids for t in rows], trained=[t.trained for t in rows])
    report.padding_unpacked = batch_padding(enc, cfg.train.batch_size)
    if causal:
        enc.units = [causal_units(t, [len(t)]) for t in enc.trained]
    return enc, report


def batch_padding(enc: Encoded, batch: int) -> float:
    """Share of pad tokens in length-grouped batches padded to a multiple of 8."""
    lengths = [len(r) for r in enc.input_ids]
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    rows = [order[s:s + batch] for s in range(0, len(order), batch)]
    return padding_share(lengths, rows, lambda r: len(r) * padded(max(lengths[i] for i in r)))


def causal_units(trained: list[bool], segments: list[int]) -> int:
    """Trained tokens that have a token before them in their own sample (so are predicted)."""
    total, start = 0, 0
    for n in segments:
        total += sum(trained[start + 1:start + n])
        start += n
    return total


def pack(enc: Encoded, max_length: int, batch: int, report: Report) -> Encoded:
    """Pack the rows of `enc` into rows of at most `max_length` tokens (best-fit)."""
    lengths = [len(r) for r in enc.input_ids]
    bins = best_fit(lengths, max_length)
    ids, trained, segments = [], [], []
    for b in bins:
        ids.append([t for i in b for t in enc.input_ids[i]])
        trained.append([t for i in b for t in enc.trained[i]])
        segments.append([lengths[i] for i in b])
    out = Encoded(ids, trained=trained, segments=segments)
    out.units = [causal_units(t, s) for t, s in zip(trained, segments)]
    report.padding_packed = batch_padding(out, batch)
    return out


def mlm_view(enc: Encoded, tokenizer, probability: float, seed: int) -> Encoded:
    """A masked copy for MLM, a pure function of `seed`: of the chosen tokens 80% become
    [MASK], 10% a random token, 10% stay; only chosen tokens carry the loss."""
    g = torch.Generator().manual_seed(seed)
    special = set(tokenizer.all_special_ids)
    ids, trained = [], []
    for row in enc.input_ids:
        x = torch.tensor(row)
        can = torch.tensor([t not in special for t in row])
        chosen = (torch.rand(len(row), generator=g) < probability) & can
        if not chosen.any() and can.any():  # every row teaches something
            chosen[int(torch.nonzero(can)[0])] = True
        roll = torch.rand(len(row), generator=g)
        rand_tok = torch.randint(len(tokenizer), (len(row),), generator=g)
        masked = torch.where(chosen & (roll < 0.8), tokenizer.mask_token_id, x)
        masked = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), rand_tok, masked)
        ids.append(masked.tolist())
        trained.append(chosen.tolist())
    out = Encoded(ids, trained=trained, targets=enc.input_ids)
    out.units = [sum(t) for t in trained]
    return out
