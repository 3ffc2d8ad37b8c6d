"""Rows → the one intermediate: a conversation (`list[Message]`) or a plain text.

Formats, detected from the columns (or forced with `data.format`):

    chat               {"messages": [{"role": "user", "content": "..."}, ...]}  (OpenAI)
    sharegpt           {"conversations": [{"from": "human", "value": "..."}, ...]}
    alpaca             {"instruction": "...", "input": "...", "output": "..."}
    prompt_completion  {"prompt": "...", "completion": "..."}
    source_target      {"source": "...", "target": "..."}  (seq2seq data; the column names
                       are data.source_column / data.target_column)
    text               a text column (`data.text_column`), or .txt lines, for clm/mlm

Every problem names the row's file and line.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmtune.data.readers import Table
from lmtune.errors import LmtuneError

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "bot": "assistant", "model": "assistant"}


@dataclass(frozen=True)
class Message:
    role: str
    content: str


Conversation = list[Message]


def detect_format(table: Table, text_column: str, need_answer: bool = True,
                  pair: tuple[str, str] = ("source", "target")) -> str:
    """The format whose columns the table has; chat-style formats win over plain text.

    With `need_answer=False` (prompts to generate from) alpaca needs only `instruction`,
    prompt_completion only `prompt` and source_target only the source column. `pair` names
    the source and target columns.
    """
    cols = set(table.columns)
    for fmt, needs, answer in (("chat", "messages", None), ("sharegpt", "conversations", None),
                               ("alpaca", "instruction", "output"),
                               ("prompt_completion", "prompt", "completion"),
                               ("source_target", pair[0], pair[1])):
        if needs in cols and (answer in cols or answer is None or not need_answer):
            return fmt
    if text_column in cols:
        return "text"
    raise LmtuneError(f"{table.source}: cannot tell the data format from its columns "
                      f"({', '.join(table.columns) or 'none'}); expected one of: messages "
                      "(chat), conversations (sharegpt), instruction+output (alpaca), "
                      f"prompt+completion, {pair[0]}+{pair[1]}, or a {text_column!r} text "
                      "column; or set data.format")


def conversations(table: Table, fmt: str, need_answer: bool = True,
                  pair: tuple[str, str] = ("source", "target")) -> list[Conversation]:
    """Every row of `table` as a validated conversation with at least one assistant turn
    (with `need_answer=False`: prompts, whose assistant turn is optional). A source_target
    row (columns `pair`) becomes a user turn and an assistant turn."""
    convert = {"chat": _chat, "sharegpt": _sharegpt, "alpaca": _alpaca,
               "prompt_completion": _prompt_completion,
               "source_target": lambda row, where, need: _with_answer(
                   _field(row, pair[0], where), row, pair[1], where, need)}[fmt]
    out = []
    for i, row in enumerate(table.rows):
        where = table.loc(i)
        conv = convert(row, where, need_answer)
        if need_answer and not any(m.role == "assistant" for m in conv):
            raise LmtuneError(f"{where}: no assistant turn: nothing to learn from")
        out.append(conv)
    return out


def texts(table: Table, column: str) -> list[str]:
    """The non-empty texts of `column` (clm/mlm)."""
    if column not in table.columns:
        raise LmtuneError(f"{table.source}: no column {column!r}; columns found: "
                          f"{', '.join(table.columns)}")
    out = []
    for i, row in enumerate(table.rows):
        value = row.get(column)
        if not isinstance(value, str) or not value.strip():
            raise LmtuneError(f"{table.loc(i)}: empty or missing text in column {column!r}")
        out.append(value)
    return out


def _field(row: dict[str, Any], key: str, where: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        got = "missing" if value is None else f"a {type(value).__name__}"
        raise LmtuneError(f"{where}: {key!r} must be a string, got {got}")
    if required and not value.strip():
        raise LmtuneError(f"{where}: {key!r} is empty")
    return value


def _turns(items: Any, key: str, role_key: str, text_key: str, roles: dict[str, str],
           where: str) -> Conversation:
    if not isinstance(items, list) or not items:
        raise LmtuneError(f"{where}: {key!r} must be a non-empty list of turns")
    out = []
    for j, turn in enumerate(items):
        if not isinstance(turn, dict):
            raise LmtuneError(f"{where}: {key}[{j}] must be an object with {role_key!r} and "
                              f"{text_key!r}")
        role = turn.get(role_key)
        if not isinstance(role, str) or role not in roles:
            raise LmtuneError(f"{where}: {key}[{j}]: bad role {role!r}; expected one of "
                              f"{', '.join(roles)}")
        content = turn.get(text_key)
        if not isinstance(content, str):
            got = "missing" if content is None else f"a {type(content).__name__}"
            raise LmtuneError(f"{where}: {key}[{j}].{text_key} must be a string, got {got}")
        out.append(Message(roles[role], content))
    return out


def _chat(row: dict[str, Any], where: str, need_answer: bool = True) -> Conversation:
    return _turns(row.get("messages"), "messages", "role", "content",
                  {r: r for r in ROLES}, where)


def _sharegpt(row: dict[str, Any], where: str, need_answer: bool = True) -> Conversation:
    return _turns(row.get("conversations"), "conversations", "from", "value",
                  SHAREGPT_ROLES, where)


def _alpaca(row: dict[str, Any], where: str, need_answer: bool = True) -> Conversation:
    instruction = _field(row, "instruction", where)
    extra = _field(row, "input", where, required=False)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return _with_answer(prompt, row, "output", where, need_answer)


def _prompt_completion(row: dict[str, Any], where: str, need_answer: bool = True
                       ) -> Conversation:
    return _with_answer(_field(row, "prompt", where), row, "completion", where, need_answer)


def _with_answer(prompt: str, row: dict[str, Any], key: str, where: str,
                 need_answer: bool) -> Conversation:
    conv = [Message("user", prompt)]
    if need_answer or row.get(key) is not None:
        conv.append(Message("assistant", _field(row, key, where)))
    return conv
