"""Tokens → batches: tokenize once, group by length, pad each batch to its own longest row.

Short review snippets vary from 3 to 100+ tokens; padding every batch to `max_length` wastes
most of the compute. Length-grouped batches plus dynamic padding keep the waste small.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

# Rows are padded to a multiple of this: few distinct widths, so oneDNN reuses its kernels
# (and caches fewer of them) instead of building new ones for every length.
PAD_MULTIPLE = 8


def padded(n: int, multiple: int = PAD_MULTIPLE) -> int:
    """`n` rounded up to a multiple of `multiple`: the width a row of n tokens is padded to."""
    return -(-n // multiple) * multiple


@dataclass
class Encoded:
    """Token ids per row (unpadded) and what the loss reads from them.

    classify: `labels` holds a class id per row (multi-label: a 0/1 per label).
    sft/clm/mlm: `trained` marks the tokens that carry the loss; `targets` (mlm) holds the
    original ids where `input_ids` are masked; `segments` (packed rows) holds the lengths of
    the samples packed into each row.
    seq2seq: `input_ids` feed the encoder, `decoder_ids` the decoder, and `targets` (as long
    as `decoder_ids`) are what it must predict.
    `units[i]` counts row i's loss terms, so a batch's loss can be normalized over the
    whole effective batch before any forward pass.
    """

    input_ids: list[list[int]] | list[np.ndarray]  # int32 arrays from `encode`
    labels: list[int] | list[list[int]] | None = None
    trained: list[list[bool]] | None = None
    targets: list[list[int]] | None = None
    segments: list[list[int]] | None = None
    units: list[int] | None = None
    decoder_ids: list[list[int]] | None = None
    class_weights: list[float] | None = None  # classify: the loss weight of each class

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> list[int]:
        """Tokens per row, encoder and decoder together: the cost that batching balances."""
        if self.decoder_ids is None:
            return [len(x) for x in self.input_ids]
        return [len(x) + len(y) for x, y in zip(self.input_ids, self.decoder_ids)]

    def count_units(self, idx: list[int]) -> int:
        return len(idx) if self.units is None else sum(self.units[i] for i in idx)

    # the fields that hold one entry per row (a subclass adds its own)
    ROWS = ("input_ids", "labels", "trained", "targets", "segments", "units", "decoder_ids")

    def rows(self, idx: list[int]) -> Encoded:
        """A copy holding only the rows `idx`, in that order."""
        import dataclasses

        picked = {name: [getattr(self, name)[i] for i in idx] for name in self.ROWS
                  if getattr(self, name) is not None}
        return dataclasses.replace(self, **picked)


def encode(tokenizer, texts: list[str], max_length: int, labels: list[int] | None = None,
           chunk: int = 256) -> Encoded:
    """Tokenize all texts once, truncating to `max_length` (special tokens included).

    Small chunks: a tokenizer's batch output keeps per-text state until the chunk is done;
    only the ids are kept, each row as an int32 array: about 4 bytes a token instead of the
    36 of a list of Python ints (most ids are past the small-int cache, so every one is an
    object of its own).
    """
    batch_ids = _fast_ids(tokenizer, max_length) or (
        lambda part: tokenizer(part, truncation=True, max_length=max_length)["input_ids"])
    ids: list[np.ndarray] = []
    for start in range(0, len(texts), chunk):
        ids += [np.asarray(row, dtype=np.int32) for row in batch_ids(texts[start:start + chunk])]
    return Encoded(ids, labels)


def _fast_ids(tokenizer, max_length: int):
    """For a fast (Rust) tokenizer: a function from texts to their ids that skips what
    `tokenizer(...)` would build and this code would drop (offsets, masks, token strings),
    on every core as before. It runs a copy of the tokenizer, so the caller's truncation
    and padding settings stay as they were. None for a Python tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not getattr(tokenizer, "is_fast", False):
        return None
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.no_padding()
    copy.enable_truncation(max_length, direction=getattr(tokenizer, "truncation_side",
                                                         "right"))
    return lambda part: [e.ids for e in copy.encode_batch_fast(part)]


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int,
                  group_by_length: bool = True, window: int = 64) -> list[list[int]]:
    """The batches of one training epoch, a pure function of (seed, epoch).

    With `group_by_length`, indices are shuffled, cut into windows of `window` batches,
    sorted by length inside each window, batched, and the batch order is shuffled again:
    batches hold similar lengths while the data order stays random across the epoch.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        span = batch_size * window
        order = [i for s in range(0, len(order), span)
                 for i in sorted(order[s:s + span], key=lambda i: lengths[i])]
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def eval_batches(lengths: list[int], batch_size: int, max_tokens: int | None = None,
                 multiple: int = PAD_MULTIPLE,
                 max_square: int | None = None) -> list[list[int]]:
    """Deterministic batches sorted by length (fastest for inference); callers restore order.

    With `max_tokens`, a batch also stops growing once its padded size (rows x its longest
    row rounded up to `multiple`, as `collate` pads it) would pass it; with `max_square`,
    once rows x width**2 would pass that: eager attention holds [rows, heads, width, width]
    scores, which grow with the square of the width, so long rows come fewer to a batch and
    peak memory stays flat whatever the test set's longest rows.

    Batches are filled from the longest rows down: the one partial batch holds the
    shortest rows, and the widest batches are full. Filled from the short end, the widest
    batch was whatever rows were left over, so the largest batch of a pass, which sets its
    peak memory, depended on the test set's size.
    """
    def fits(rows: int, width: int) -> bool:
        return rows <= batch_size and (max_tokens is None or rows * width <= max_tokens) \
            and (max_square is None or rows * width * width <= max_square)

    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    for i in order:  # longest first: a batch's first row sets its width
        if batches and fits(len(batches[-1]) + 1, padded(lengths[batches[-1][0]], multiple)):
            batches[-1].append(i)
        else:
            batches.append([i])
    return [b[::-1] for b in reversed(batches)]


def collate(data: Encoded, idx: list[int], pad_id: int,
            multiple: int = PAD_MULTIPLE) -> dict[str, torch.Tensor]:
    """Pad the rows `idx` to their longest, rounded up to a multiple of `multiple`:
    input_ids/attention_mask [B, T], labels [B] (multi-label: 0/1 per label [B, C]).

    Rounding keeps the number of distinct shapes small, so oneDNN reuses its kernels instead
    of building new ones for every length.
    """
    rows = [data.input_ids[i] for i in idx]
    width = padded(max(len(r) for r in rows), multiple)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        input_ids[b, : len(r)] = torch.tensor(r, dtype=torch.long)
        attention[b, : len(r)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention}
    if data.labels is not None:
        labels = batch["labels"] = torch.tensor([data.labels[i] for i in idx],
                                                dtype=torch.long)
        if data.class_weights is not None:  # each row's weight in the loss; multi-label
            weights = torch.tensor(data.class_weights)  # rows: each label's on its positives
            batch["weights"] = weights[labels] if labels.dim() == 1 else weights
    return batch


def collate_lm(data: Encoded, idx: list[int], pad_id: int,
               multiple: int = PAD_MULTIPLE) -> dict[str, torch.Tensor]:
    """Rows `idx` for a language-model loss: input_ids and targets [B, T] (-100 where no loss).

    Unpacked rows get an attention mask. Packed rows get position ids that restart at every
    sample (and at the padding) instead, which is how the model isolates the samples (see
    data/packing.py); a sample's first token is never a target of the previous sample's last.
    """
    rows = [data.input_ids[i] for i in idx]
    width = padded(max(len(r) for r in rows), multiple)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), -100, dtype=torch.long)
    for b, i in enumerate(idx):
        n = len(rows[b])
        input_ids[b, :n] = torch.tensor(rows[b])
        source = torch.tensor(data.targets[i] if data.targets is not None else rows[b])
        targets[b, :n] = torch.where(torch.tensor(data.trained[i]), source, -100)
    batch = {"input_ids": input_ids, "targets": targets}
    if data.segments is None:
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            attention[b, :len(r)] = 1
        batch["attention_mask"] = attention
        return batch
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for b, i in enumerate(idx):
        start = 0
        for n in [*data.segments[i], width - len(rows[b])]:  # the padding restarts too
            positions[b, start:start + n] = torch.arange(n)
            if n:
                targets[b, start] = -100
            start += n
    batch["position_ids"] = positions
    return batch


def collate_seq2seq(data: Encoded, idx: list[int], pad_id: int,
                    multiple: int = PAD_MULTIPLE) -> dict[str, torch.Tensor]:
    """Rows `idx` for an encoder-decoder: input_ids/attention_mask [B, S] for the encoder;
    decoder_input_ids and targets [B, T] (-100 past each target) for the decoder.

    The decoder needs no padding mask: its padding comes after every real token, which
    causal attention never lets a real token see.
    """
    batch = collate(data, idx, pad_id, multiple)
    dec = [data.decoder_ids[i] for i in idx]
    width = padded(max(map(len, dec)), multiple)
    decoder_ids = torch.full((len(dec), width), pad_id, dtype=torch.long)
    targets = torch.full((len(dec), width), -100, dtype=torch.long)
    for b, i in enumerate(idx):
        decoder_ids[b, :len(dec[b])] = torch.tensor(dec[b])
        targets[b, :len(dec[b])] = torch.tensor(data.targets[i])
    return batch | {"decoder_input_ids": decoder_ids, "targets": targets}
