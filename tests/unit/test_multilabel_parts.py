"""Multi-label pieces: reading label sets, the metrics, threshold tuning, the loss, config."""
import json

import pytest
import torch

from lmtune.config import load_config
from lmtune.data.load import label_set, load_splits
from lmtune.errors import LmtuneError
from lmtune.eval.multilabel import GRID, bce_sum, best_on_grid, multilabel_metrics


def test_label_sets_agree_across_cell_kinds():
    assert label_set(["b", "a", "b"], ",") == label_set("b,a", ",") == \
        label_set(" a , b ", ",") == ("a", "b")
    assert label_set("a|b", "|") == ("a", "b")
    assert label_set([1, 2.0, "x"], ",") == ("1", "2", "x")  # numbers named as for one label
    assert label_set([], ",") == label_set("", ",") == label_set("  ", ",") == ()
    assert label_set(None, ",") is None and label_set({"a": 1}, ",") is None
    assert label_set(["a", None], ",") is None


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rows(n):
    return [{"text": f"text {i}", "label": [["a"], ["b"], ["a", "b"], []][i % 4]}
            for i in range(n)]


def test_jsonl_lists_and_csv_cells_read_alike(tmp_path):
    jsonl = write(tmp_path / "d.jsonl", rows(40))
    csv = tmp_path / "d.csv"
    csv.write_text("text,label\n" + "".join(f"{r['text']},{'|'.join(r['label'])}\n"
                                           for r in rows(40)))
    a = load_splits(load_config(None, [f"data.train={jsonl}", "data.multi_label=true"]).data, 1)
    b = load_splits(load_config(None, [f"data.train={csv}", "data.multi_label=true",
                                       "data.label_separator=|"]).data, 1)
    assert a.label_names == b.label_names == ["a", "b"]
    assert a.train.labels == b.train.labels and a.test.labels == b.test.labels
    assert set(a.train.labels) == {("a",), ("b",), ("a", "b"), ()}  # every combination kept


def test_a_bad_label_cell_names_its_line(tmp_path):
    data = rows(10)
    data[6]["label"] = None
    path = write(tmp_path / "d.jsonl", data)
    cfg = load_config(None, [f"data.train={path}", "data.multi_label=true"])
    with pytest.raises(LmtuneError, match=r"d.jsonl:7: missing label"):
        load_splits(cfg.data, 1)
    data[6]["label"] = {"a": 1}
    write(path, data)
    with pytest.raises(LmtuneError, match=r"d.jsonl:7: missing label .*a list, or names"):
        load_splits(cfg.data, 1)


def test_a_test_label_unseen_in_training_is_an_error(tmp_path):
    train = write(tmp_path / "train.jsonl", rows(20))
    test = write(tmp_path / "test.jsonl", [{"text": "x", "label": ["a"]},
                                           {"text": "y", "label": ["a", "zzz"]}])
    cfg = load_config(None, [f"data.train={train}", f"data.test={test}",
                             "data.multi_label=true"])
    with pytest.raises(LmtuneError, match=r"test.jsonl:2: label 'zzz'"):
        load_splits(cfg.data, 1)


def test_metrics_from_counts():
    # label a: tp 3, fp 1, fn 1; label b: tp 0, fp 0, fn 2 (never predicted)
    m = multilabel_metrics([[3, 0], [1, 0], [1, 2]], exact=4, n=10, label_names=["a", "b"],
                           thresholds=[0.5, 0.3])
    assert m["per_class"]["a"] == {"precision": 0.75, "recall": 0.75, "f1": 0.75,
                                   "support": 4, "predicted": 4, "threshold": 0.5}
    assert m["per_class"]["b"]["f1"] == 0.0 and m["per_class"]["b"]["support"] == 2
    assert m["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 3))
    assert m["macro_f1"] == pytest.approx(0.375)
    assert m["subset_accuracy"] == 0.4


def test_tuning_picks_each_labels_best_threshold():
    # label 0: positives score 0.32-0.40, negatives 0.10-0.18: 0.20, 0.25 and 0.30 all
    # separate them; the one nearest 0.5 is 0.30. Label 1: never present → 0.5.
    scores = torch.tensor([[0.32, 0.9], [0.40, 0.8], [0.10, 0.7], [0.18, 0.6]])
    truth = torch.tensor([[1, 0], [1, 0], [0, 0], [0, 0]]).bool()
    pred = scores[..., None] > GRID
    t = truth[..., None]
    grid = torch.stack([(pred & t).sum(0), (pred & ~t).sum(0), (~pred & t).sum(0)]).double()
    assert best_on_grid(grid) == [0.3, 0.5]


def test_loss_is_bce_mean_over_labels_summed_over_rows():
    logits, targets = torch.randn(5, 3), torch.randint(0, 2, (5, 3))
    want = torch.nn.BCEWithLogitsLoss()(logits, targets.float()) * 5
    assert bce_sum(logits, targets).item() == pytest.approx(want.item(), rel=1e-6)
    weight = torch.tensor([1.0, 4.0, 1.0])
    want = torch.nn.BCEWithLogitsLoss(pos_weight=weight)(logits, targets.float()) * 5
    assert bce_sum(logits, targets, weight).item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("overrides, key", [
    (["task=sft", "data.multi_label=true"], "data.multi_label"),
    (["data.multi_label=true", "eval.metric=accuracy"], "eval.metric"),
    (["eval.thresholds=1.5"], "eval.thresholds"),
    (["eval.thresholds=a=0"], "eval.thresholds"),
    (["data.label_separator= "], "data.label_separator"),
])
def test_config_errors(overrides, key):
    with pytest.raises(LmtuneError, match=rf"command line .*: {key}: "):
        load_config(None, overrides)
