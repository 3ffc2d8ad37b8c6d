"""Multi-label classification: a sigmoid per label, a label predicted when its score passes
the label's threshold.

    evaluate_multilabel  loss, micro/macro F1, subset accuracy, per label (streamed: only
                         counts are kept), and each label's best threshold on a grid
    multilabel_metrics   the metrics as a pure function of per-label counts
    multilabel_warnings  labels never predicted, no better than the base model

Scores from a multi-label head are independent per label: a row may get none, one or all.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F

from lmtune.eval.batched import _sum_over_ranks, forward_batches

PROBLEM_TYPE = "multi_label_classification"  # transformers' name, in a model's config
# Thresholds tried when tuning: a label's best F1 on validation picks one of these. A finer
# grid fits the validation split more closely than it generalizes.
GRID = torch.linspace(0.05, 0.95, 19)


def bce_sum(logits: torch.Tensor, targets: torch.Tensor,
            pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy of each row, averaged over its labels, summed over the rows:
    a row is one unit of the loss, as in single-label classification, and the mean per row
    equals `BCEWithLogitsLoss`'s default mean. logits, targets [B, C]."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(),
                                              pos_weight=pos_weight,
                                              reduction="sum") / logits.shape[-1]


def evaluate_multilabel(model, data, label_names: list[str], thresholds: list[float],
                        batch_size: int, pad_id: int, autocast=contextlib.nullcontext,
                        progress: bool = False, probs: torch.Tensor | None = None,
                        ranks: tuple[int, int] | None = None,
                        stop: Callable[[], bool] | None = None, tune: bool = False) -> dict:
    """Metrics of labelled `data` (`labels`: a 0/1 per label) at `thresholds` (one per
    label); with `tune`, also `best_thresholds`: each label's threshold on `GRID` with the
    highest F1 (ties: the one nearest 0.5). With `probs` ([N, C]) each row's scores are
    written there, in input order; with `ranks`, each rank runs its share and the counts
    are summed."""
    k = len(label_names)
    thr = torch.tensor(thresholds, dtype=torch.float32)
    counts = torch.zeros(3, k, dtype=torch.float64)  # tp, fp, fn at the thresholds
    grid = torch.zeros(3, k, len(GRID), dtype=torch.float64)  # the same on the grid
    loss, exact = 0.0, 0
    for idx, logits, batch in forward_batches(model, data, batch_size, pad_id, autocast,
                                              progress, ranks, stop):
        truth = batch["labels"].bool().cpu()
        scores = logits.sigmoid().cpu()
        loss += bce_sum(logits, batch["labels"]).item()
        pred = scores > thr
        counts += _tp_fp_fn(pred, truth).double()
        grid += _tp_fp_fn(scores[..., None] > GRID, truth[..., None]).double()
        exact += (pred == truth).all(-1).sum().item()
        if probs is not None:
            probs[torch.tensor(idx)] = scores
    flat = _sum_over_ranks([loss, exact, *counts.flatten().tolist(),
                            *grid.flatten().tolist()], next(model.parameters()).device, ranks)
    loss, exact = flat[0], round(flat[1])
    counts = torch.tensor(flat[2:2 + 3 * k]).view(3, k)
    grid = torch.tensor(flat[2 + 3 * k:]).view(3, k, len(GRID))
    metrics = multilabel_metrics(counts.tolist(), exact, len(data), label_names, thresholds)
    metrics["loss"] = loss / max(1, len(data))
    if tune:
        metrics["best_thresholds"] = best_on_grid(grid)
    return metrics


def _tp_fp_fn(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """[3, C, ...] counts over the rows (dim 0) of boolean [N, C, ...] tensors."""
    return torch.stack([(pred & truth).sum(0), (pred & ~truth).sum(0),
                        (~pred & truth).sum(0)])


def f1(tp: float, fp: float, fn: float) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def best_on_grid(grid: torch.Tensor) -> list[float]:
    """Each label's F1-best threshold on `GRID` from [3, C, G] counts (ties: nearest 0.5;
    a label never present keeps 0.5)."""
    tp, fp, fn = grid
    scores = torch.where(tp > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), 0.0)
    out = []
    for row in scores:
        if row.max() <= 0:
            out.append(0.5)
            continue
        best = [g for g in range(len(GRID)) if row[g] == row.max()]
        out.append(round(min((GRID[g].item() for g in best), key=lambda t: abs(t - 0.5)), 2))
    return out


def multilabel_metrics(counts: list[list[float]], exact: int, n: int, label_names: list[str],
                       thresholds: list[float]) -> dict:
    """micro_f1, macro_f1, subset_accuracy (the share of rows whose whole label set is
    right), per_class {name: precision/recall/f1/support/predicted/threshold} from per-label
    [tp, fp, fn] counts (`counts[0]` the tp of each label, and so on).

    A label never predicted has precision 0 and F1 0 (sklearn's zero_division=0), so
    macro-F1 punishes a model that has learned to predict nothing."""
    tps, fps, fns = counts
    per_class = {}
    for name, tp, fp, fn, t in zip(label_names, tps, fps, fns, thresholds):
        per_class[name] = {"precision": tp / (tp + fp) if tp + fp else 0.0,
                           "recall": tp / (tp + fn) if tp + fn else 0.0, "f1": f1(tp, fp, fn),
                           "support": round(tp + fn), "predicted": round(tp + fp),
                           "threshold": t}
    return {"micro_f1": f1(sum(tps), sum(fps), sum(fns)),
            "macro_f1": sum(c["f1"] for c in per_class.values()) / max(1, len(per_class)),
            "subset_accuracy": exact / n if n else float("nan"), "per_class": per_class,
            "n": n}


TRY = ("try: eval.thresholds=tune (each label's threshold from the validation split), "
       "train.class_weights='label=w,...' to weigh a rare label's positives, more optimizer "
       "steps, or another train.lr")


def multilabel_warnings(m: dict, base: dict | None = None) -> list[str]:
    """What a user must hear about multi-label scores `m`: a label present in the data but
    never predicted, or micro-F1 no better than the untrained base model's."""
    out = [f"the model never predicts {name!r} ({c['support']} of the {m['n']} rows have it)"
           for name, c in m["per_class"].items() if c["support"] and not c["predicted"]]
    if base is not None and m["micro_f1"] <= base["micro_f1"]:
        out.append(f"micro-F1 {m['micro_f1']:.4f} is no better than the untrained base "
                   f"model's ({base['micro_f1']:.4f})")
    return [*out, TRY] if out else []
