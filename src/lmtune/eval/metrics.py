"""Classification metrics as pure functions of a confusion matrix.

Evaluation streams predictions into the matrix batch by batch, so memory does not grow with
the size of the test set (no logits are kept).
"""
from __future__ import annotations

import math
from collections import Counter


def confusion_matrix(true: list[int], pred: list[int], n_classes: int) -> list[list[int]]:
    """`m[t][p]` counts samples of true class t predicted as p."""
    m = [[0] * n_classes for _ in range(n_classes)]
    for t, p in zip(true, pred, strict=True):
        m[t][p] += 1
    return m


def add_to_confusion(m: list[list[int]], true: list[int], pred: list[int]) -> None:
    for t, p in zip(true, pred, strict=True):
        m[t][p] += 1


def classification_metrics(m: list[list[int]], label_names: list[str]) -> dict:
    """accuracy, macro_f1, per_class {name: precision/recall/f1/support}, confusion_matrix.

    A class never predicted has precision 0 (and never present, recall 0): the sklearn
    `zero_division=0` convention, so macro-F1 punishes a collapsed classifier.
    """
    n = len(m)
    total = sum(map(sum, m))
    correct = sum(m[i][i] for i in range(n))
    per_class = {}
    for i, name in enumerate(label_names):
        tp = m[i][i]
        predicted = sum(m[t][i] for t in range(n))
        support = sum(m[i])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1,
                           "support": support}
    return {
        "accuracy": correct / total if total else math.nan,
        "macro_f1": sum(c["f1"] for c in per_class.values()) / n if n else math.nan,
        "per_class": per_class,
        "confusion_matrix": [list(row) for row in m],
        "n": total,
    }


COLLAPSED = 0.95  # one class predicted for this share of the rows or more: "nearly all"
TRY = ("try: train.class_weights=auto (the default weighs imbalanced classes), more "
       "optimizer steps (more train.epochs, or a smaller train.batch_size on a small set), "
       "or another train.lr")


def classifier_warnings(m: dict, majority: float | None = None,
                        base: dict | None = None) -> list[str]:
    """What a user must hear about a classifier's scores `m` (classification_metrics), with
    what to try: one class predicted for nearly every row, accuracy no better than always
    predicting the training set's most frequent class (`majority`), or macro-F1 no better
    than the untrained base model's (`base`'s). Empty when none holds."""
    names, cm, n = list(m["per_class"]), m["confusion_matrix"], m["n"]
    if not n:
        return []
    out = []
    predicted = [sum(row[j] for row in cm) for j in range(len(names))]
    top = max(range(len(names)), key=lambda j: predicted[j])
    share, true_share = predicted[top] / n, sum(cm[top]) / n
    if share >= COLLAPSED and true_share < COLLAPSED:
        out.append(f"the model predicts {names[top]!r} for {share:.0%} of the {n} rows, of "
                   f"which {true_share:.0%} are {names[top]!r}")
    elif majority is not None and m["accuracy"] <= majority:
        out.append(f"accuracy {m['accuracy']:.4f} is no better than always predicting the "
                   f"most frequent class ({majority:.4f})")
    if base is not None and m["macro_f1"] <= base["macro_f1"]:
        out.append(f"macro-F1 {m['macro_f1']:.4f} is no better than the untrained base "
                   f"model's ({base['macro_f1']:.4f})")
    return [*out, TRY] if out else []


def majority_baseline(train_labels: list, test_labels: list) -> float:
    """Accuracy of always predicting the training set's most frequent class (ties: the
    smallest label)."""
    if not test_labels:
        return math.nan
    counts = Counter(train_labels)
    majority = min(counts, key=lambda x: (-counts[x], x))
    return sum(t == majority for t in test_labels) / len(test_labels)


# --------------------------------------------------------------------------- generation


def generation_metrics(predictions: list[str], references: list[str]) -> dict:
    """ROUGE-1/2/L F1 (rouge-score, stemmed), corpus BLEU and chrF (sacrebleu), all 0-100,
    and exact match (0-1, after lowercasing and collapsing whitespace)."""
    if len(predictions) != len(references) or not references:
        raise ValueError("need as many predictions as references, and at least one")
    return {**rouge(predictions, references), "bleu": bleu(predictions, references),
            "chrf": chrf(predictions, references),
            "exact_match": exact_match(predictions, references), "n": len(references)}


def rouge(predictions: list[str], references: list[str]) -> dict:
    from rouge_score import rouge_scorer

    keys = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
    sums = dict.fromkeys(keys, 0.0)
    for p, r in zip(predictions, references):
        scores = scorer.score(r, p)  # (target, prediction)
        for k in keys:
            sums[k] += scores[k].fmeasure
    return {k: 100 * v / len(references) for k, v in sums.items()}


def bleu(predictions: list[str], references: list[str]) -> float:
    import sacrebleu

    return sacrebleu.corpus_bleu(predictions, [references]).score


def chrf(predictions: list[str], references: list[str]) -> float:
    import sacrebleu

    return sacrebleu.corpus_chrf(predictions, [references]).score


def exact_match(predictions: list[str], references: list[str]) -> float:
    norm = lambda t: " ".join(t.lower().split())  # noqa: E731
    return sum(norm(p) == norm(r) for p, r in zip(predictions, references)) / len(references)
