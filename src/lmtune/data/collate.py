"""Tokens → batches: tokenize once, group by length, pad each batch to its own longest row.

Short review snippets vary from 3 to 100+ tokens; padding every batch to `max_length` wastes
most of the compute. Length-grouped batches plus dynamic padding keep the waste small.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch


@dataclass
class Encoded:
    """Token ids per sample (unpadded) with optional class ids."""

    input_ids: list[list[int]]
    labels: list[int] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


def encode(tokenizer, texts: list[str], max_length: int, labels: list[int] | None = None,
           chunk: int = 4096) -> Encoded:
    """Tokenize all texts once, truncating to `max_length` (special tokens included)."""
    ids: list[list[int]] = []
    for start in range(0, len(texts), chunk):
        out = tokenizer(texts[start:start + chunk], truncation=True, max_length=max_length)
        ids += out["input_ids"]
    return Encoded(ids, labels)


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


def eval_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Deterministic batches sorted by length (fastest for inference); callers restore order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def collate(data: Encoded, idx: list[int], pad_id: int,
            multiple: int = 8) -> dict[str, torch.Tensor]:
    """Pad the rows `idx` to their longest, rounded up to a multiple of `multiple`:
    input_ids/attention_mask [B, T], labels [B].

    Rounding keeps the number of distinct shapes small, so oneDNN reuses its kernels instead
    of building new ones for every length.
    """
    rows = [data.input_ids[i] for i in idx]
    width = -(-max(len(r) for r in rows) // multiple) * multiple
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        input_ids[b, : len(r)] = torch.tensor(r, dtype=torch.long)
        attention[b, : len(r)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention}
    if data.labels is not None:
        batch["labels"] = torch.tensor([data.labels[i] for i in idx], dtype=torch.long)
    return batch
