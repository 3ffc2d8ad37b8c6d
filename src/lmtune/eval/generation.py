"""Generation metrics during training: what the loop's own model generates for validation
prompts, scored against their references (ROUGE, BLEU, chrF, exact match)."""
from __future__ import annotations

from typing import Callable

import torch

from lmtune.config import Config
from lmtune.data.formats import Conversation
from lmtune.data.seq2seq import target_text
from lmtune.distributed import rank_share
from lmtune.eval.batched import check_stop
from lmtune.eval.metrics import generation_metrics
from lmtune.infer.decoder import Decoder


def evaluate_generation(model, tokenizer, kind: str, cfg: Config, convs: list[Conversation],
                        precision: str, ranks: tuple[int, int] | None = None,
                        stop: Callable[[], bool] | None = None) -> dict:
    """ROUGE/BLEU/chrF/exact match of what `model` generates for `convs` against their last
    assistant turns (validation during training: the loop's own model, not a saved one).
    With `ranks` (rank, world), each rank generates its share (a collective). `stop()`,
    asked before each batch of prompts, ends the pass with EvalStopped."""
    decoder = Decoder(model, tokenizer, kind, cfg.generate, precision, cfg.train.max_length)
    before = (lambda: check_stop(stop)) if stop is not None else None
    predictions = decoder.generate(convs, before_batch=before) if ranks is None else \
        _generate_shared(decoder, convs, *ranks, before)
    scores = generation_metrics(predictions, [target_text(c) for c in convs])
    return {k: v for k, v in scores.items() if k != "n"}


def _generate_shared(decoder: Decoder, convs: list[Conversation], rank: int, world: int,
                     before_batch: Callable[[], None] | None = None) -> list[str]:
    """This rank generates its share of the prompts (`rank_share`: as many `generate`
    calls on every rank); the answers of all ranks come back in input order (a
    collective)."""
    share = rank_share(list(range(len(convs))), (rank, world))
    answers = decoder.generate([convs[i] for i, _ in share], synced=True,
                               before_batch=before_batch)
    parts: list = [None] * world
    torch.distributed.all_gather_object(
        parts, [(i, a) for (i, counts), a in zip(share, answers) if counts])
    return merge(parts, len(convs))


def merge(parts: list[list[tuple[int, str]]], n: int) -> list[str]:
    """Every rank's (index, answer) pairs, back in input order."""
    out = [""] * n
    for part in parts:
        for i, answer in part:
            out[i] = answer
    return out
