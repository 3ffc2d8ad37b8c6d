"""Preference pairs (task=dpo): rows → (prompt conversation, chosen, rejected) → tokens.

Formats, detected from the columns (or forced with `data.format`):

    preference         {"prompt": "..." | [messages], "chosen": "..." | [assistant message],
                        "rejected": "..." | [assistant message]}  (TRL's columns)
    openai_preference  {"input": {"messages": [...]}, "preferred_output": [assistant message],
                        "non_preferred_output": [assistant message]}  (OpenAI's preference
                       fine-tuning format)

The prompt goes through the tokenizer's chat template with the generation prompt; each
completion is the text the template writes for the assistant turn, through its end-of-turn
token. Prompt and completion are tokenized separately and the ids concatenated, so the
prompt's tokens are the same in both halves of a pair and never merge with the answer's
first characters (tokenizing the joined text can split the boundary differently for the
chosen and the rejected answer):

    chosen    p0 p1 p2 p3 | c0 c1 c2 <eot>
    rejected  p0 p1 p2 p3 | r0 r1 <eot>
              prompt        completion: the tokens whose log-probabilities are summed
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lmtune.config import Config
from lmtune.data import templates
from lmtune.data.collate import PAD_MULTIPLE, Encoded, padded
from lmtune.data.formats import ROLES, Conversation, Message, _turns
from lmtune.data.lm import LMSplits, Report, SPLITS, batch_padding, read_tables, split_missing
from lmtune.data.packing import best_fit
from lmtune.data.readers import Table
from lmtune.errors import LmtuneError

PREFERENCE_FORMATS = ("preference", "openai_preference")


@dataclass(frozen=True)
class Pair:
    prompt: Conversation
    chosen: str
    rejected: str


def detect_preference_format(table: Table) -> str:
    cols = set(table.columns)
    if "preferred_output" in cols:
        return "openai_preference"
    if {"prompt", "chosen", "rejected"} <= cols:
        return "preference"
    raise LmtuneError(f"{table.source}: cannot tell the preference format from its columns "
                      f"({', '.join(table.columns) or 'none'}); expected prompt+chosen+"
                      "rejected, or input+preferred_output+non_preferred_output (OpenAI); "
                      "or set data.format")


def pairs(table: Table, fmt: str) -> list[Pair]:
    """Every row of `table` as a validated pair; problems name the file and line."""
    out = []
    for i, row in enumerate(table.rows):
        where = table.loc(i)
        if fmt == "openai_preference":
            inp = row.get("input")
            if not isinstance(inp, dict):
                raise LmtuneError(f"{where}: 'input' must be an object with 'messages'")
            prompt = _turns(inp.get("messages"), "input.messages", "role", "content",
                            {r: r for r in ROLES}, where)
            keys = ("preferred_output", "non_preferred_output")
        else:
            prompt = _prompt(row.get("prompt"), where)
            keys = ("chosen", "rejected")
        if prompt[-1].role == "assistant":
            raise LmtuneError(f"{where}: the prompt ends with an assistant turn; it must end "
                              "with the turn the completions answer")
        out.append(Pair(prompt, *(_completion(row.get(k), k, where) for k in keys)))
    return out


def _prompt(value, where: str) -> Conversation:
    if isinstance(value, str):
        if not value.strip():
            raise LmtuneError(f"{where}: 'prompt' is empty")
        return [Message("user", value)]
    return _turns(value, "prompt", "role", "content", {r: r for r in ROLES}, where)


def _completion(value, key: str, where: str) -> str:
    """A completion: a string, or a list holding one assistant message."""
    if isinstance(value, list):
        turns = _turns(value, key, "role", "content", {r: r for r in ROLES}, where)
        if len(turns) != 1 or turns[0].role != "assistant":
            raise LmtuneError(f"{where}: {key!r} must hold one assistant message")
        value = turns[0].content
    if not isinstance(value, str):
        got = "missing" if value is None else f"a {type(value).__name__}"
        raise LmtuneError(f"{where}: {key!r} must be a string or a list with one assistant "
                          f"message, got {got}")
    if not value.strip():
        raise LmtuneError(f"{where}: {key!r} is empty")
    return value


def load_pairs(cfg: Config, train_table: Table | None = None,
               test_only: bool = False) -> LMSplits:
    """The preference pairs of each split, validation (and test) carved out of train when
    no source names them, as for the other tasks."""
    tables = read_tables(cfg, train_table, test_only)
    first = tables.get("train", tables.get("test"))
    fmt = cfg.data.format
    if fmt == "auto":
        fmt = detect_preference_format(first)
    elif fmt not in PREFERENCE_FORMATS:
        raise LmtuneError(f"data.format={fmt} is not a preference format; task=dpo reads "
                          f"{' or '.join(PREFERENCE_FORMATS)}")
    items = {n: pairs(tables[n], fmt) for n in SPLITS if n in tables}
    where = {n: [tables[n].loc(i) for i in range(len(tables[n].rows))] for n in items}
    if "train" in items:
        split_missing(items, where, cfg.data, cfg.seed)
    return LMSplits(items, where, fmt)


# ------------------------------------------------------------------------- tokenizing


@dataclass
class PairEncoded(Encoded):
    """Preference pairs: `input_ids[i]` is pair i's prompt + chosen completion,
    `rejected_ids[i]` its prompt + rejected completion, the first `prompt_lengths[i]` tokens
    of each the prompt. `ref` [N, 2] holds the reference model's summed completion
    log-probabilities (chosen, rejected) once computed; `pack_to` > 0 packs a batch's
    sequences into rows of that many tokens."""

    rejected_ids: list[np.ndarray] | None = None
    prompt_lengths: list[int] | None = None
    ref: object | None = None  # torch.Tensor [N, 2] float32, computed after any `rows`
    pack_to: int = 0
    ROWS = (*Encoded.ROWS, "rejected_ids", "prompt_lengths")

    def lengths(self) -> list[int]:
        return [len(c) + len(r) for c, r in zip(self.input_ids, self.rejected_ids)]


def completion_text(tokenizer, prompt: Conversation, answer: str) -> tuple[str, str]:
    """(prompt text with the generation prompt, the assistant turn's text through its
    end-of-turn token), both as the chat template writes them."""
    prompt_text = templates.render(tokenizer, prompt, generation_prompt=True)
    full = templates.render(tokenizer, [*prompt, Message("assistant", answer)])
    if not full.startswith(prompt_text):
        raise LmtuneError("the chat template renders the prompt differently once an answer "
                          "follows, so prompt and answer cannot be told apart; use another "
                          "template")
    end = templates.end_of_turn(tokenizer, full, len(prompt_text), len(full),
                                Message("assistant", answer))
    return prompt_text, full[len(prompt_text):end]


def fit_pair(p: list[int], c: list[int], r: list[int], max_length: int, truncation: str
             ) -> tuple[list[int], list[int], list[int], bool]:
    """Cut a pair to `max_length` tokens per sequence: `prompt_middle` drops the middle of
    the prompt first (keeping both its ends), then what is still too long is cut from the
    completions' ends; `end` cuts the completions alone. The prompt stays the same in both."""
    longest = max(len(c), len(r))
    truncated = len(p) + longest > max_length
    if truncated and truncation == "prompt_middle":
        keep = max(max_length - longest, min(len(p), 2))
        if keep < len(p):
            head = keep // 2
            p = p[:head] + p[len(p) - (keep - head):]
    room = max(max_length - len(p), 0)
    return p, c[:room], r[:room], truncated


def encode_pairs(items: list[Pair], where: list[str], cfg: Config, tokenizer, train: bool
                 ) -> tuple[PairEncoded, Report]:
    """Tokenize one split's pairs. A pair left with no completion token after truncation
    stops the run naming its line (or is dropped with `data.drop_unlearnable`): its log-
    probability sum would be empty. Pairs whose two answers are the same teach nothing and
    are dropped, with a note."""
    report, max_length = Report(), cfg.train.max_length
    chosen, rejected, prompt_lengths, same = [], [], [], 0
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    for pair, loc in zip(items, where):
        if pair.chosen == pair.rejected:
            same += 1
            continue
        p_text, c_text = completion_text(tokenizer, pair.prompt, pair.chosen)
        r_ids = ids(completion_text(tokenizer, pair.prompt, pair.rejected)[1])
        n_rejected = len(r_ids)
        p, c, r, truncated = fit_pair(ids(p_text), ids(c_text), r_ids, max_length,
                                      cfg.data.truncation)
        report.samples += 1
        report.truncated += truncated
        report.trained_cut += len(c) + len(r) < len(ids(c_text)) + n_rejected
        if not c or not r:
            report.unlearnable += 1
            if train and not cfg.data.drop_unlearnable:
                raise LmtuneError(
                    f"{loc}: the prompt leaves no room for the {'chosen' if not c else 'rejected'}"
                    f" answer within train.max_length={max_length}; raise train.max_length, "
                    "or set data.drop_unlearnable=true")
            report.dropped += 1
            continue
        for role, n in (("prompt", 2 * len(p)), ("chosen", len(c)), ("rejected", len(r))):
            report.role_tokens[role] = report.role_tokens.get(role, 0) + n
        report.tokens += 2 * len(p) + len(c) + len(r)
        report.trained_tokens += len(c) + len(r)
        chosen.append(np.asarray(p + c, dtype=np.int32))
        rejected.append(np.asarray(p + r, dtype=np.int32))
        prompt_lengths.append(len(p))
    if not chosen:
        raise LmtuneError(f"{where[0] if where else cfg.data.train}: no usable pairs")
    if same:
        report.note = f"{same} pair(s) whose chosen and rejected answers are the same were " \
                      "dropped: they teach nothing"
    enc = PairEncoded(chosen, rejected_ids=rejected, prompt_lengths=prompt_lengths,
                      pack_to=max_length if cfg.data.packing else 0)
    report.padding_unpacked = batch_padding(Encoded(chosen + rejected),
                                            2 * cfg.train.batch_size)
    if enc.pack_to:
        report.padding_packed = packed_padding(enc, cfg.train.batch_size)
    return enc, report


def packed_padding(enc: PairEncoded, batch: int) -> float:
    """Share of pad tokens when length-sorted batches of `batch` pairs are packed as
    `collate_pairs` packs them."""
    lengths = enc.lengths()
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    real = slots = 0
    for s in range(0, len(order), batch):
        rows, width = _pack_rows(enc, order[s:s + batch])
        real += sum(lengths[i] for i in order[s:s + batch])
        slots += len(rows) * width
    return 1 - real / max(1, slots)


def _sequences(data: PairEncoded, idx: list[int]) -> list[tuple[np.ndarray, int]]:
    """(ids, prompt length) of the batch's sequences: its chosen ones, then its rejected."""
    return [(data.input_ids[i], data.prompt_lengths[i]) for i in idx] + \
        [(data.rejected_ids[i], data.prompt_lengths[i]) for i in idx]


def _pack_rows(data: PairEncoded, idx: list[int]) -> tuple[list[list[int]], int]:
    """Rows of sequence numbers and their padded width: one sequence a row, or, packed,
    best-fit into rows of the width, up to `pack_to`, that leaves the fewest pad slots
    (the narrowest of equals: attention costs the square of the width)."""
    lengths = [len(ids) for ids, _ in _sequences(data, idx)]
    best = [[k] for k in range(len(lengths))], padded(max(lengths))
    # Past the batch's total, a wider row only adds padding: one row already holds it all.
    widest = min(data.pack_to, padded(sum(lengths)))
    for width in range(best[1] + PAD_MULTIPLE, widest + 1, PAD_MULTIPLE):
        rows = best_fit(lengths, width)
        fill = padded(max(sum(lengths[k] for k in r) for r in rows))
        if len(rows) * fill < len(best[0]) * best[1]:
            best = rows, fill
    return best


def collate_pairs(data: PairEncoded, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """The B pairs `idx` as 2B sequences (chosen 0..B-1, then rejected 0..B-1):

        input_ids, targets  [R, W]  targets: the completion tokens, -100 elsewhere
        sequence            [R, W]  which of the 2B sequences token t belongs to (-1: none)
        completion_tokens   [2B]    tokens summed per sequence
        ref                 [2B]    the reference's sums, when computed

    Unpacked, R = 2B rows with an attention mask. Packed (`pack_to`), several sequences
    share a row and `position_ids` restart at each (see data/packing.py), so no pad token
    sits between a short chosen answer and its longer rejected one.
    """
    seqs = _sequences(data, idx)
    rows, width = _pack_rows(data, idx)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), -100, dtype=torch.long)
    sequence = torch.full((len(rows), width), -1, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        start = 0
        for k in row:
            ids, prompt = seqs[k]
            n = len(ids)
            input_ids[b, start:start + n] = torch.from_numpy(ids.astype(np.int64))
            targets[b, start + prompt:start + n] = input_ids[b, start + prompt:start + n]
            sequence[b, start + prompt:start + n] = k
            positions[b, start:start + n] = torch.arange(n)
            start += n
        positions[b, start:] = torch.arange(width - start)  # the padding restarts too
        attention[b, :start] = 1
    batch = {"input_ids": input_ids, "targets": targets, "sequence": sequence,
             "completion_tokens": torch.tensor([len(ids) - p for ids, p in seqs])}
    if data.pack_to:
        batch["position_ids"] = positions
    else:
        batch["attention_mask"] = attention
    if data.ref is not None:
        batch["ref"] = data.ref[idx].T.reshape(-1)  # [chosen..., rejected...]
    return batch


__all__ = ["PREFERENCE_FORMATS", "Pair", "PairEncoded", "collate_pairs", "encode_pairs",
           "load_pairs"]
