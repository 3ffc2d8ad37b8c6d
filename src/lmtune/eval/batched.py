"""Batched, streaming evaluation passes: memory stays flat however large the test set is.

    evaluate_classifier  loss, accuracy, macro-F1, per class, confusion matrix
    evaluate_loss        token loss and perplexity, for any task's `loss_sum`
    predict_proba        class probabilities in input order
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lmtune import runtime
from lmtune.distributed import rank_share
from lmtune.data.collate import Encoded, collate, eval_batches
from lmtune.eval.metrics import add_to_confusion, classification_metrics

# Tokens per evaluation batch, at most: the peak memory of a pass is then set by this budget,
# not by the size of the test set. 4,096 ran MiniLM evaluation as fast as 8,192 and peaked
# lower (bench/eval_memory.py).
EVAL_TOKENS = 4096
# rows x width**2 per batch, at most, under eager attention: its scores are [rows, heads,
# width, width], so without this a test set with longer rows peaked higher. The bound is a
# full batch of 64-token rows: shorter rows are bound by EVAL_TOKENS alone, longer ones come
# fewer. sdpa does not hold the scores, and SmolLM2's 512-token rows would come one a batch.
EVAL_SQUARE_WIDTH = 64


def batches_of(data: Encoded, batch_size: int, model) -> list[list[int]]:
    """The evaluation batches of `data`, within the memory budgets for `model` (or the
    model inside a DDP / DeepSpeed wrapper)."""
    config = getattr(getattr(model, "module", model), "config", None)
    eager = getattr(config, "_attn_implementation", None) == "eager"
    return eval_batches(data.lengths(), batch_size, max_tokens=EVAL_TOKENS,
                        max_square=EVAL_TOKENS * EVAL_SQUARE_WIDTH if eager else None)


def _new_shape_trims(last: torch.Size | None, shape: torch.Size) -> torch.Size:
    """Before the first batch of a new shape, hand the heap's free pages back to the OS.

    Length-sorted batches change shape a few dozen times in a pass; each change frees one set
    of buffer sizes and allocates another, and glibc kept the freed pages, so RSS grew with
    the number of shapes. Trimming at every batch cost about 3% of eval time (5,000 texts);
    at each change of shape it is a handful of calls, with no cost that could be measured.
    """
    if shape != last:
        runtime.release_free_memory()
    return shape


def _sum_over_ranks(values: list[float], device, ranks: tuple[int, int] | None) -> list[float]:
    """Each rank's partial sums, added up over the ranks (as they are with one process)."""
    if ranks is None:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def eval_bar(rows: int, progress: bool):
    """A progress bar over the rows of an evaluation pass (off inside training)."""
    return tqdm(total=rows, desc="eval", unit="row", disable=not progress, dynamic_ncols=True,
                mininterval=runtime.bar_interval())


class EvalStopped(Exception):
    """An evaluation pass stopped between batches because `stop()` asked."""


def check_stop(stop: Callable[[], bool] | None) -> None:
    if stop is not None and stop():
        raise EvalStopped


def forward_batches(model, data: Encoded, batch_size: int, pad_id: int,
                    autocast=contextlib.nullcontext, progress: bool = False,
                    ranks: tuple[int, int] | None = None,
                    stop: Callable[[], bool] | None = None
                    ) -> Iterator[tuple[list[int], torch.Tensor, dict]]:
    """Yield (row indices, fp32 logits [B, C], batch) over length-sorted batches, no grad;
    with `ranks` (rank, world), over this rank's share of them. `stop()`, asked before each
    batch, ends the pass with EvalStopped."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    bar = eval_bar(len(data), progress)
    try:
        with torch.inference_mode():
            shape = None
            batches = batches_of(data, batch_size, model)
            for idx, counts in rank_share(batches, ranks):
                check_stop(stop)
                batch = {k: v.to(device) for k, v in collate(data, idx, pad_id).items()}
                shape = _new_shape_trims(shape, batch["input_ids"].shape)
                with autocast():
                    out = model(input_ids=batch["input_ids"],
                                attention_mask=batch["attention_mask"])
                if counts:
                    yield idx, out.logits.float(), batch
                    bar.update(len(idx))
    finally:
        model.train(was_training)
        bar.close()


def evaluate_classifier(model, data: Encoded, label_names: list[str], batch_size: int,
                        pad_id: int, autocast=contextlib.nullcontext, progress: bool = False,
                        probs: torch.Tensor | None = None,
                        ranks: tuple[int, int] | None = None,
                        stop: Callable[[], bool] | None = None) -> dict:
    """loss, accuracy, macro_f1, per_class, confusion_matrix for labelled `data`; with
    `probs` ([N, C]), also each row's class probabilities, in input order, from the same
    forward pass. With `ranks` (rank, world), each rank runs its share of the batches and
    the sums are added up over the ranks (a collective)."""
    if probs is not None and ranks is not None:
        raise ValueError("evaluate_classifier: probs are filled by one process; ranks must be None")
    k = len(label_names)
    m = [[0] * k for _ in label_names]
    loss_sum = 0.0
    for idx, logits, batch in forward_batches(model, data, batch_size, pad_id, autocast,
                                              progress, ranks, stop):
        labels = batch["labels"]
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        add_to_confusion(m, labels.tolist(), logits.argmax(-1).tolist())
        if probs is not None:
            probs[torch.tensor(idx)] = logits.softmax(-1).cpu()
    loss_sum, *flat = _sum_over_ranks([loss_sum, *(c for row in m for c in row)],
                                      next(model.parameters()).device, ranks)
    m = [[round(c) for c in flat[i * k:(i + 1) * k]] for i in range(k)]
    metrics = classification_metrics(m, label_names)
    metrics["loss"] = loss_sum / max(1, len(data))
    return metrics


def predict_proba(model, data: Encoded, batch_size: int, pad_id: int,
                  autocast=contextlib.nullcontext, multi_label: bool = False) -> torch.Tensor:
    """Class probabilities [N, C] in the input order (multi-label: each label's sigmoid)."""
    probs: torch.Tensor | None = None
    for idx, logits, _ in forward_batches(model, data, batch_size, pad_id, autocast):
        if probs is None:
            probs = torch.empty(len(data), logits.shape[-1])
        probs[torch.tensor(idx)] = (logits.sigmoid() if multi_label
                                    else logits.softmax(-1)).cpu()
    assert probs is not None
    return probs


def evaluate_loss(model, data: Encoded, make_batch, loss_sum, how) -> dict:
    """Token-level loss and perplexity (causal: next token; mlm: masked tokens; seq2seq:
    target tokens), streamed: only running sums are kept, never logits.

    `make_batch(data, idx, pad_id, device)` and `loss_sum(model, batch, autocast)` are the
    task's; `how` (a `tasks.EvalSettings`) gives batch size, padding, precision and the ranks
    that share the pass (each runs its share of the batches and the sums are added up).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, units, shape = 0.0, 0, None
    bar = eval_bar(len(data), how.progress)
    try:
        with torch.inference_mode():
            # A token budget keeps the [kept positions, vocabulary] logits of a batch small:
            # with a 49k vocabulary, 128 long rows would need gigabytes. It counts encoder
            # and decoder tokens together (seq2seq): the logits are the decoder's.
            batches = batches_of(data, how.batch_size, model)
            for idx, counts in rank_share(batches, how.ranks):
                check_stop(how.stop)
                batch = make_batch(data, idx, how.pad_id, device)
                shape = _new_shape_trims(shape, batch["input_ids"].shape)
                value = loss_sum(model, batch, how.autocast).item()
                if counts:
                    total += value
                    units += data.count_units(idx)
                    bar.update(len(idx))
    finally:
        model.train(was_training)
        bar.close()
    total, units = _sum_over_ranks([total, units], device, how.ranks)
    units = round(units)
    loss = total / max(1, units)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": units,
            "n": len(data)}


def pair_passes(model, data: Encoded, task, how, progress_desc: str = "eval"
                ) -> Iterator[tuple[list[int], dict]]:
    """Yield (pair indices, batch) over length-sorted batches of preference pairs, in eval
    mode and without grad; with `how.ranks`, this rank's share (uncounted repeats left
    out: a caller that runs collectives must use `rank_share` itself)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(data), desc=progress_desc, unit="pair", disable=not how.progress,
               dynamic_ncols=True, mininterval=runtime.bar_interval())
    try:
        with torch.no_grad():
            shape = None
            for idx, counts in rank_share(batches_of(data, how.batch_size, model), how.ranks):
                check_stop(how.stop)
                batch = task.batch(data, idx, how.pad_id, device)
                shape = _new_shape_trims(shape, batch["input_ids"].shape)
                yield (idx if counts else []), batch
                bar.update(len(idx) if counts else 0)
    finally:
        model.train(was_training)
        bar.close()


def evaluate_pairs(model, data: Encoded, task, how) -> dict:
    """Preference metrics of `data` (a `PairEncoded`) under `task` (a bound `Dpo`).

    `preference_accuracy`: with a reference, the share of pairs whose chosen completion has
    the higher log-probability ratio to the reference (summed over its tokens); without one
    (a base model evaluated alone), the share whose chosen completion has the higher mean
    per-token log-probability. Loss and rewards where the loss can be computed."""
    from lmtune.models.logprobs import sequence_logps

    device = next(model.parameters()).device
    sums = torch.zeros(7, dtype=torch.float64)  # pairs, loss, 4 rewards, preference
    has_loss = False
    for idx, batch in pair_passes(model, data, task, how):
        policy = sequence_logps(model, batch, how.autocast)
        ref = task.reference_of(model, batch, how.autocast)
        tokens = batch["completion_tokens"].to(policy.device).float()
        has_loss = ref is not None or task.loss_kind == "simpo"  # the same on every rank
        if not idx:  # a repeat that keeps collectives in step
            continue
        pc, pr = (policy if ref is None else policy - ref.float()).chunk(2)
        if ref is None:  # per-token means: the base model's own comparison
            nc, nr = tokens.chunk(2)
            pc, pr = pc / nc, pr / nr
        row = [len(idx), 0.0, 0.0, 0.0, 0.0, 0.0, (pc > pr).sum().item()]
        if has_loss:
            losses, chosen, rejected = task.pair_losses(policy, ref, tokens)
            row[1:6] = [losses.sum().item(), chosen.sum().item(), rejected.sum().item(),
                        (chosen - rejected).sum().item(), (chosen > rejected).sum().item()]
        sums += torch.tensor(row, dtype=torch.float64)
    n, *rest = _sum_over_ranks(sums.tolist(), device, how.ranks)
    n = max(round(n), 1)
    metrics = {"n": n, "preference_accuracy": rest[5] / n}
    if has_loss:
        metrics |= {"loss": rest[0] / n, "rewards/chosen": rest[1] / n,
                    "rewards/rejected": rest[2] / n, "rewards/margins": rest[3] / n,
                    "rewards/accuracies": rest[4] / n}
    return metrics
