"""Log-probabilities of given completions under a causal LM, for objectives that compare
completions (preference tuning) rather than predict the next token of one."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lmtune.models.prompts import prepended_positions


def sequence_logps(model, batch: dict[str, torch.Tensor], autocast) -> torch.Tensor:
    """Summed log-probabilities of each sequence's completion tokens: [S] fp32.

    `batch`: input_ids and targets [R, W] (targets: -100 off the completions), `sequence`
    [R, W] (which of the S sequences each target belongs to; rows may hold several),
    `completion_tokens` [S], and attention_mask or position_ids. Position t predicts token
    t+1; only positions whose next token is a completion token are projected onto the
    vocabulary (`logits_to_keep`), as for SFT."""
    nxt = batch["targets"][:, 1:]
    keep = torch.zeros_like(batch["targets"], dtype=torch.bool)
    keep[:, :-1] = nxt != -100
    keep = F.pad(keep, (prepended_positions(model), 0))  # prompt learning's V positions
    with autocast():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                       position_ids=batch.get("position_ids"), logits_to_keep=keep,
                       use_cache=False).logits  # [N kept, V]
    token = -F.cross_entropy(logits.float(), nxt[nxt != -100], reduction="none")
    sequence = batch["sequence"][:, 1:][nxt != -100]
    out = torch.zeros(len(batch["completion_tokens"]), device=token.device)
    return out.index_add(0, sequence, token)
