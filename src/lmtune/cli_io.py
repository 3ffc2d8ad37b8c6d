"""What the CLI's commands read and write besides configs: prompts and texts from files,
predictions as JSONL or a table."""
from __future__ import annotations

import json
from pathlib import Path

from lmtune.errors import LmtuneError


def read_prompts(path: Path) -> list:
    """Conversations from a chat-format file, or one user prompt per line of a .txt file."""
    from lmtune.data.formats import Message, conversations, detect_format, texts
    from lmtune.data.readers import read_path

    if path.suffix == ".txt":
        return [[Message("user", t)] for t in read_lines(path)]
    table = read_path(path)
    if isinstance(table, dict):
        table = next(iter(table.values()))
    fmt = detect_format(table, "text", need_answer=False)
    if fmt == "text":
        return [[Message("user", t)] for t in texts(table, "text")]
    return conversations(table, fmt, need_answer=False)


def read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise LmtuneError(f"{path}: file not found")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise LmtuneError(f"{path}: not valid UTF-8 ({e.reason})") from None
    return [line for line in lines if line.strip()]


def print_predictions(rows: list[dict], names: list[str]) -> None:
    """label, score and text per row (multi-label: the labels over their thresholds)."""
    multi = bool(rows) and "labels" in rows[0]
    w = max(len("label"), *(len(n) for n in names)) if not multi else \
        max(len("labels"), *(len(",".join(r["labels"]) or "(none)") for r in rows))
    print(f"{'labels' if multi else 'label':<{w}}  " + ("text" if multi else "score   text"))
    for r in rows:
        text = r["text"] if len(r["text"]) <= 70 else r["text"][:67] + "..."
        if multi:
            print(f"{','.join(r['labels']) or '(none)':<{w}}  {text}")
        else:
            print(f"{r['label']:<{w}}  {r['score']:.4f}  {text}")


def read_texts(path: Path, clf) -> list[str]:
    """Texts from a .txt file (one per non-empty line) or a data file's text column."""
    from lmtune.data.readers import read_path

    if path.suffix == ".txt":
        return read_lines(path)
    table = read_path(path)
    if isinstance(table, dict):
        table = next(iter(table.values()))
    column = clf.config.data.text_column if clf.config else "text"
    if column not in table.columns:
        raise LmtuneError(f"{path}: no column {column!r}; columns found: "
                          f"{', '.join(table.columns)}")
    texts = []
    for i, row in enumerate(table.rows):
        if not isinstance(row[column], str) or not row[column].strip():
            raise LmtuneError(f"{table.loc(i)}: empty or missing text in column {column!r}")
        texts.append(row[column])
    return texts


def write_jsonl(path: Path, rows: list[dict]) -> None:
    from lmtune.rundir import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

