"""Raw rows from files: CSV, TSV, JSONL/JSON, Parquet and saved HF `datasets` dirs.

Every reader returns a `Table` whose rows remember where they came from, so later
validation can say `reviews.csv:118: empty text`. Anything unreadable raises `LmtuneError`
naming the file and line; no reader lets a traceback through.
"""
from __future__ import annotations

import csv
import io
import json
import os
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmtune.errors import LmtuneError

SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
# CSV/TSV files this large are parsed by Arrow first (data/arrow_csv.py): several times
# faster and without a dict per row. Smaller ones gain nothing that shows.
ARROW_MIN_BYTES = 4 * 2**20


@dataclass
class Table:
    """Rows of one source. `lines[i]` is row i's line (text files) or row number (others)."""

    source: str
    columns: list[str]
    rows: Sequence[dict[str, Any]]  # a list, or `ColumnRows` (dicts made when read)
    lines: Sequence[int] = field(default_factory=list)
    unit: str = "line"  # "line" for text files, "row" for Parquet / datasets / in-memory

    def column(self, name: str) -> list:
        """One column's values, in row order (None where a row lacks it)."""
        if isinstance(self.rows, ColumnRows):
            return self.rows.cols[name]
        return [row.get(name) for row in self.rows]

    def loc(self, i: int) -> str:
        return place(self.source, self.unit, self.lines[i])

    def locations(self) -> Locations:
        return Locations(self.source, self.unit, array("q", self.lines))


def place(source: str, unit: str, n: int) -> str:
    return f"{source}:{n}" if unit == "line" else f"{source} (row {n})"


class ColumnRows(Sequence):
    """The rows of a table read by columns, each a dict made when asked for (a million
    dicts held at once would cost about 200 MB)."""

    def __init__(self, cols: dict[str, list]):
        self.cols = cols

    def __len__(self) -> int:
        return len(next(iter(self.cols.values()), []))

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return {name: values[i] for name, values in self.cols.items()}


class Locations(Sequence):
    """Each row's `file:line` (or `file (row n)`), made when asked for: a million rows'
    strings held at once would cost about 100 MB; their line numbers cost 8 bytes each."""

    def __init__(self, source: str, unit: str, lines: array):
        self.source, self.unit, self.lines = source, unit, lines

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Locations(self.source, self.unit, self.lines[i])
        return place(self.source, self.unit, self.lines[i])

    def take(self, idx: list[int]) -> Locations:
        """The rows `idx`, in that order."""
        return Locations(self.source, self.unit, array("q", (self.lines[i] for i in idx)))


def read_path(path: str | Path) -> Table | dict[str, Table]:
    """Read one data file, or a saved HF datasets dir (a DatasetDict gives a dict of Tables)."""
    p = Path(path)
    if os.path.islink(p) and not p.exists():
        raise LmtuneError(f"{p}: dangling symlink (points to {os.readlink(p)}, which does not "
                          "exist)")
    if not p.exists():
        raise LmtuneError(f"{p}: file not found")
    if p.is_dir():
        if (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists():
            return _read_hf_dir(p)
        raise LmtuneError(f"{p}: is a directory, not a data file (a saved HF datasets dir "
                          "holds dataset_info.json or dataset_dict.json)")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(p)
    if suffix in (".csv", ".tsv") and p.stat().st_size >= ARROW_MIN_BYTES:
        from lmtune.data.arrow_csv import read_csv_arrow

        table = read_csv_arrow(p, "\t" if suffix == ".tsv" else None)
        if table is not None:
            return table
    if suffix not in SUFFIXES:
        raise LmtuneError(f"{p}: unsupported file type {suffix or '(none)'!r}; use one of "
                          f"{', '.join(SUFFIXES)}, or a saved HF datasets dir")
    text = _decode(p)
    if not text.strip():
        raise LmtuneError(f"{p}: file is empty")
    if suffix in (".jsonl", ".json"):
        return read_jsonl(text, str(p))
    return read_csv(text, str(p), delimiter="\t" if suffix == ".tsv" else None)


def _decode(p: Path) -> str:
    try:
        data = p.read_bytes()
    except OSError as e:
        raise LmtuneError(f"{p}: cannot read: {e.strerror}") from None
    try:
        return data.decode("utf-8-sig")  # a BOM is common from Excel: drop it, don't reject
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise LmtuneError(f"{p}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at offset "
                          f"{e.start}); re-save the file as UTF-8") from None


def sniff_delimiter(text: str) -> str:
    """Pick `,` `;` or tab by which occurs most in the header line (outside quotes)."""
    header = text.split("\n", 1)[0]
    unquoted = "".join(part for i, part in enumerate(header.split('"')) if i % 2 == 0)
    counts = {d: unquoted.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def read_csv(text: str, source: str, delimiter: str | None = None) -> Table:
    """Rows of a CSV/TSV file. A field may be as long as the file: Python's csv module
    refuses fields over 128 KiB by default, and a long document in one cell is valid CSV
    (truncation to `train.max_length` comes later). The limit is the module's process-wide
    setting, so it is raised only while this file is read."""
    delimiter = delimiter or sniff_delimiter(text)
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, len(text) + 1))
    try:
        return _read_csv(text, source, delimiter)
    finally:
        csv.field_size_limit(limit)


def _lines(text: str):
    """The lines of `text`, ends kept, one at a time. io.StringIO would hold a copy of the
    whole text at 4 bytes a character (its buffer is UCS-4): 900 MB for a 220 MB file."""
    start = 0
    while start < len(text):
        end = text.find("\n", start) + 1 or len(text)
        yield text[start:end]
        start = end


def _read_csv(text: str, source: str, delimiter: str) -> Table:
    # a file whose lines end in a lone \r (classic Mac) has no \n to split at
    lines_of = _lines(text) if "\n" in text else io.StringIO(text, newline="")
    reader = csv.reader(lines_of, delimiter=delimiter, strict=True)
    rows, lines, header = [], [], None
    start = 1
    try:
        for record in reader:
            line, start = start, reader.line_num + 1
            if not record or record == [""]:
                continue
            if header is None:
                header = check_header(record, source)
                continue
            if len(record) != len(header):
                raise LmtuneError(f"{source}:{line}: expected {len(header)} fields as in the "
                                  f"header, found {len(record)} (a stray delimiter or quote?)")
            rows.append(dict(zip(header, record)))
            lines.append(line)
    except csv.Error as e:
        raise LmtuneError(f"{source}:{start}: malformed CSV row ({e}); check for an unclosed "
                          "quote") from None
    if header is None:
        raise LmtuneError(f"{source}: file is empty")
    if not rows:
        raise LmtuneError(f"{source}: has a header but no data rows")
    return Table(source, header, rows, lines)


def check_header(record: list[str], source: str) -> list[str]:
    """The column names. An empty one is named as pandas names it, `Unnamed: I` (0-based):
    `DataFrame.to_csv` writes its index under an empty header cell."""
    header = [h.strip() or f"Unnamed: {i}" for i, h in enumerate(record)]
    for i, name in enumerate(header):
        if name in header[:i]:
            raise LmtuneError(f"{source}:1: header names column {name!r} twice")
    return header


def read_jsonl(text: str, source: str) -> Table:
    stripped = text.lstrip()
    if stripped.startswith("["):  # a .json file holding one array of objects
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise LmtuneError(f"{source}:{e.lineno}: not valid JSON ({e.msg})") from None
        numbered = list(enumerate(items, start=1))
        unit = "row"
    else:
        numbered = []
        for n, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                truncated = e.pos >= len(line.rstrip()) or e.msg.startswith("Unterminated")
                cut = " (the line looks cut off)" if truncated else ""
                raise LmtuneError(f"{source}:{n}: not valid JSON: {e.msg}{cut}") from None
        unit = "line"
    rows, lines, columns = [], [], {}
    for n, obj in numbered:
        if not isinstance(obj, dict):
            where = f"{source}:{n}" if unit == "line" else f"{source} (item {n})"
            raise LmtuneError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        columns.update(dict.fromkeys(obj))
        rows.append(obj)
        lines.append(n)
    if not rows:
        raise LmtuneError(f"{source}: file is empty")
    return Table(source, list(columns), rows, lines, unit)


def _read_parquet(p: Path) -> Table:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as e:  # pyarrow raises several types for a broken file
        raise LmtuneError(f"{p}: not a readable Parquet file ({e})") from None
    rows = table.to_pylist()
    if not rows:
        raise LmtuneError(f"{p}: file is empty (no rows)")
    return Table(str(p), table.column_names, rows, list(range(1, len(rows) + 1)), "row")


def _read_hf_dir(p: Path) -> Table | dict[str, Table]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:  # corrupted arrow files, version mismatch...
        raise LmtuneError(f"{p}: not a loadable HF datasets dir ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        return {name: _from_dataset(split, f"{p}[{name}]") for name, split in ds.items()}
    return _from_dataset(ds, str(p))


def _from_dataset(ds: Any, source: str) -> Table:
    if len(ds) == 0:
        raise LmtuneError(f"{source}: dataset is empty")
    rows = ds.to_list()
    return Table(source, list(ds.column_names), rows, list(range(1, len(rows) + 1)), "row")


def from_lists(columns: dict[str, list[Any]], source: str = "<in-memory>") -> Table:
    """A Table from equal-length column lists (the Python API's `texts`/`labels`)."""
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise LmtuneError(f"{source}: columns have different lengths: {lengths}")
    names = list(columns)
    rows = [dict(zip(names, vals)) for vals in zip(*columns.values())]
    if not rows:
        raise LmtuneError(f"{source}: no rows")
    return Table(source, names, rows, list(range(1, len(rows) + 1)), "row")
