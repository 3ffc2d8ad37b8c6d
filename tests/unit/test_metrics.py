import math

import pytest

from lmtune.eval.metrics import classification_metrics, confusion_matrix, majority_baseline
from lmtune.optim import lr_factor


def test_confusion_and_metrics_by_hand():
    # true: a a a b b c ; pred: a a b b c c
    m = confusion_matrix([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], 3)
    assert m == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    r = classification_metrics(m, ["a", "b", "c"])
    assert r["accuracy"] == pytest.approx(4 / 6)
    # a: P=2/2 R=2/3 F1=0.8 ; b: P=1/2 R=1/2 F1=0.5 ; c: P=1/2 R=1 F1=2/3
    assert r["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3,
                                                 "f1": 0.8, "support": 3})
    assert r["per_class"]["b"]["f1"] == pytest.approx(0.5)
    assert r["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert r["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert r["n"] == 6


def test_collapsed_classifier_scores_zero_f1_for_the_ignored_class():
    m = confusion_matrix([0, 0, 1, 1], [0, 0, 0, 0], 2)
    r = classification_metrics(m, ["x", "y"])
    assert r["accuracy"] == 0.5
    assert r["per_class"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert r["macro_f1"] == pytest.approx((2 / 3) / 2)


def test_majority_baseline():
    assert majority_baseline(["a", "a", "b"], ["a", "b", "b", "b"]) == 0.25
    assert majority_baseline(["a", "b"], ["a"]) == 1.0  # tie: the smaller label
    assert math.isnan(majority_baseline(["a"], []))


def test_lr_schedule_shapes():
    assert [lr_factor(s, 4, 10, "linear") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 4, 10, "linear") == 1.0 and lr_factor(10, 4, 10, "linear") == 0.0
    assert lr_factor(7, 4, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(7, 4, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(5, 4, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 6)))
    assert lr_factor(9, 0, 10, "constant") == 1.0


# ------------------------------------------------------------------- generation metrics


def test_generation_metrics_known_values():
    from lmtune.eval.metrics import generation_metrics

    m = generation_metrics(["the cat was on the mat"], ["the cat sat on the mat"])
    assert m["rouge1"] == pytest.approx(100 * 5 / 6)  # 5 of 6 unigrams on each side
    assert m["rouge2"] == pytest.approx(100 * 3 / 5)  # the cat, on the, the mat
    # BLEU by hand: n-gram precisions 5/6, 3/5, 1/4 and 0/3 (exp-smoothed to 1/(2*3)),
    # brevity penalty 1
    assert m["bleu"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25)
    assert m["exact_match"] == 0.0 and 0 < m["chrf"] < 100
    same = generation_metrics(["The cat  sat."], ["the cat sat."])
    assert same["exact_match"] == 1.0  # case and spacing do not count
    none = generation_metrics(["zzz"], ["the cat sat"])
    assert none["rouge1"] == none["rougeL"] == none["bleu"] == 0.0
    assert generation_metrics(["a b", "x"], ["a b", "y"])["exact_match"] == 0.5


def test_a_collapsed_classifier_is_warned_about_with_what_to_try():
    from lmtune.eval.metrics import classification_metrics, classifier_warnings

    collapsed = classification_metrics([[60, 0, 0], [28, 1, 0], [9, 0, 2]], ["a", "b", "c"])
    warnings = classifier_warnings(collapsed, majority=0.6)
    assert "predicts 'a' for 97% of the 100 rows, of which 60% are 'a'" in warnings[0]
    assert "class_weights" in warnings[-1]
    poor = classification_metrics([[40, 20, 0], [20, 9, 0], [9, 0, 2]], ["a", "b", "c"])
    assert "no better than always predicting" in classifier_warnings(poor, majority=0.6)[0]
    base = {"macro_f1": 0.5}
    assert "untrained base" in classifier_warnings(poor, majority=0.4, base=base)[0]
    good = classification_metrics([[55, 5, 0], [5, 24, 0], [1, 0, 10]], ["a", "b", "c"])
    assert classifier_warnings(good, majority=0.6, base=base) == []
    # a test set of one class, predicted as that class, is not a collapse
    one = classification_metrics([[50, 0], [0, 0]], ["a", "b"])
    assert classifier_warnings(one) == []
