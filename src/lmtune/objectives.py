"""The loss of each task, as a sum over its units, plus the matching collate.

    classify  cross-entropy of the class logits              units: samples
    causal    next-token cross-entropy on trained tokens     units: trained tokens
              (sft, clm)
    mlm       cross-entropy on the masked tokens             units: masked tokens
    seq2seq   teacher-forced cross-entropy on the target     units: target tokens

Sums, not means: the loop divides by the units of the whole effective batch (all micro-
batches, all ranks), so accumulation and data parallelism give the gradient of one big batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lmtune.data.collate import Encoded, collate, collate_lm, collate_seq2seq

OBJECTIVES = {"classify": "classify", "sft": "causal", "clm": "causal", "mlm": "mlm",
              "seq2seq": "seq2seq"}
COLLATE = {"classify": collate, "causal": collate_lm, "mlm": collate_lm,
           "seq2seq": collate_seq2seq}


def make_batch(objective: str, data: Encoded, idx: list[int], pad_id: int,
               device) -> dict[str, torch.Tensor]:
    batch = COLLATE[objective](data, idx, pad_id)
    return {k: v.to(device) for k, v in batch.items()}


def loss_sum(objective: str, model, batch: dict[str, torch.Tensor], autocast) -> torch.Tensor:
    """The summed loss of `batch` (fp32), over its units."""
    if objective == "classify":
        with autocast():
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits
        return F.cross_entropy(logits.float(), batch["labels"], reduction="sum")
    if objective == "causal":
        return causal_loss_sum(model, batch, autocast)
    with autocast():
        if objective == "seq2seq":  # teacher forcing: the decoder reads the shifted targets
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"],
                           decoder_input_ids=batch["decoder_input_ids"],
                           use_cache=False).logits  # [B, T, V]
        else:
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits
    keep = batch["targets"] != -100
    return F.cross_entropy(logits[keep].float(), batch["targets"][keep], reduction="sum")


def causal_loss_sum(model, batch: dict[str, torch.Tensor], autocast) -> torch.Tensor:
    """Next-token loss computed only where a target exists.

    Position t predicts token t+1. `logits_to_keep` (a [B, T] bool mask) makes the model
    project only those hidden states onto the vocabulary: with SmolLM2's 49k-token
    vocabulary, the full [B, T, V] logits would dwarf the rest of the step's memory, while
    an SFT batch trains only the assistant tokens.
    """
    targets = batch["targets"]
    nxt = targets[:, 1:]
    keep = torch.zeros_like(targets, dtype=torch.bool)
    keep[:, :-1] = nxt != -100
    with autocast():
        logits = model(input_ids=batch["input_ids"],
                       attention_mask=batch.get("attention_mask"),
                       position_ids=batch.get("position_ids"),
                       logits_to_keep=keep, use_cache=False).logits  # [N kept, V]
    return F.cross_entropy(logits.float(), nxt[nxt != -100], reduction="sum")
