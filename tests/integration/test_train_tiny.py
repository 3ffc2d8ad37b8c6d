"""End to end on a tiny random BERT: the loss falls, the right parameters change, the run dir
is complete, and a saved model predicts exactly what the trained one did."""
import json

import pytest
import torch

from lmtune.config import load_config
from lmtune.infer.predict import Predictor
from lmtune.models.params import count_parameters
from lmtune.prepare import prepare
from lmtune.train import finish, fit
from tests.methods import case, names


def run(overrides, extra=()):
    s = prepare(load_config(None, list(overrides) + list(extra)))
    model = s.module
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = fit(s, progress=False)
    result = finish(s, state)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return s, result, changed, trainable


def losses(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "split" not in r]


def test_full_fine_tune_end_to_end(tiny_overrides, tmp_path):
    s, result, changed, trainable = run(tiny_overrides)
    out = tmp_path / "run"
    assert changed == trainable and len(trainable) == len(list(s.model.parameters()))
    curve = losses(out)
    assert all(map(torch.isfinite, torch.tensor(curve)))
    assert sum(curve[-3:]) / 3 < 0.5 * sum(curve[:3]) / 3  # the loss falls
    assert result.test["accuracy"] >= 0.9  # one sentiment word decides: learnable
    assert sorted(p.name for p in out.iterdir()) == \
        ["checkpoints", "config.yaml", "eval.json", "metrics.jsonl", "model", "summary.json"]
    # 4 epoch ends, keep_checkpoints=1: the last one, plus the best one
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == \
        sorted({f"step-{result.best['step']:06d}", f"step-{result.steps:06d}"})
    files = sorted(p.name for p in (out / "model").iterdir())
    assert "model.safetensors" in files and "config.json" in files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    saved = json.loads((out / "model" / "config.json").read_text())
    assert saved["id2label"] == {"0": "neg", "1": "pos"}
    assert saved["label2id"] == {"neg": 0, "pos": 1}
    ev = json.loads((out / "eval.json").read_text())["test"]
    assert set(ev) >= {"accuracy", "macro_f1", "per_class", "confusion_matrix"}
    assert sum(map(sum, ev["confusion_matrix"])) == len(s.data["test"])


@pytest.mark.parametrize("method", names("bert-classify"))
def test_save_load_predict_round_trip_is_exact(tiny_overrides, tmp_path, method):
    s, result, _, _ = run(tiny_overrides, [f"method={method}", "train.epochs=1",
                                           "lora.r=4", "freeze.layers=1"])
    texts = ["the film was great", "a dull and boring plot", "music", "its ending was poor"]
    model = s.module.eval()
    enc = s.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = model(**enc).logits
    clf = Predictor(tmp_path / "run", precision="fp32")
    with torch.no_grad():
        got = clf.model(**enc).logits
    if case(method).reload_exact:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    preds = clf(texts)
    assert [p["label"] for p in preds] == [model.config.id2label[i]
                                           for i in want.argmax(-1).tolist()]
    assert preds[0]["score"] == pytest.approx(want.softmax(-1)[0].max().item(), abs=1e-6)


def test_lora_trains_only_adapters_and_head(tiny_overrides):
    s, result, changed, trainable = run(tiny_overrides, ["method=lora", "lora.r=8",
                                                         "lora.dropout=0", "train.lr=5e-3",
                                                         "train.epochs=10"])
    assert changed == trainable
    assert all("lora_" in n or "classifier" in n for n in trainable)
    assert any("lora_A" in n for n in trainable) and any("classifier" in n for n in trainable)
    curve = losses(s.out)
    assert sum(curve[-5:]) / 5 < 0.5 * sum(curve[:5]) / 5, curve
    assert result.test["accuracy"] >= 0.8


def test_freeze_trains_head_and_top_layers_only(tiny_overrides):
    s, _, changed, trainable = run(tiny_overrides, ["method=freeze", "freeze.layers=1"])
    assert changed == trainable
    assert any(".layer.1." in n for n in trainable)
    assert not any(".layer.0." in n or "embeddings" in n for n in trainable)
    assert {n for n in trainable if "classifier" in n or "pooler" in n} == \
        {"classifier.weight", "classifier.bias", "bert.pooler.dense.weight",
         "bert.pooler.dense.bias"}


def test_gradient_accumulation_equals_a_larger_batch(tiny_overrides, tmp_path):
    """2 micro-batches of 4 must step exactly like 1 batch of 8 (loss normalized over the
    whole effective batch)."""
    common = ["train.max_steps=5", "train.group_by_length=false", "train.max_grad_norm=0"]
    a = run(tiny_overrides, common + ["train.batch_size=8", f"output_dir={tmp_path}/a"])[0]
    b = run(tiny_overrides, common + ["train.batch_size=4", "train.grad_accum=2",
                                      f"output_dir={tmp_path}/b"])[0]
    pa = dict(a.module.named_parameters())
    pb = dict(b.module.named_parameters())
    for name in pa:
        torch.testing.assert_close(pa[name], pb[name], atol=1e-5, rtol=1e-4)


def test_same_seed_same_run(tiny_overrides, tmp_path):
    short = ["train.epochs=1"]
    run(tiny_overrides, short + [f"output_dir={tmp_path}/a"])
    run(tiny_overrides, short + [f"output_dir={tmp_path}/b"])
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_trainable_count(tiny_overrides):
    s, *_ = run(tiny_overrides, ["method=freeze", "freeze.layers=0", "train.max_steps=1"])
    trainable, total = count_parameters(s.model)
    assert 0 < trainable < total


@pytest.mark.parametrize("method", names("bert-classify"))
def test_train_dropout_zero_turns_off_every_dropout(tiny_bert_dropout, sentiment_csv, tmp_path,
                                                    method):
    """With train.dropout=0 (the default) a training-mode forward is deterministic; with the
    model's own dropout (null: 0.1 here) it is not. LoRA's own dropout stays lora.dropout."""

    outs = {}
    for dropout in (None, 0.0):
        extra = ["train.dropout=null" if dropout is None else f"train.dropout={dropout}"]
        s = prepare(load_config(None, [f"model={tiny_bert_dropout}", f"data.train={sentiment_csv}",
                                       f"output_dir={tmp_path / str(dropout)}",
                                       "train.precision=fp32", f"method={method}",
                                       "lora.dropout=0.3", *extra]))
        s.model.train()
        batch = s.task.batch(s.data["train"], list(range(8)), s.pad_id, "cpu")
        first, second = (s.model(input_ids=batch["input_ids"],
                                 attention_mask=batch["attention_mask"]).logits
                         for _ in range(2))
        outs[dropout] = torch.equal(first, second)
        if method == "lora":
            lora_p = {m.p for n, m in s.model.named_modules()
                      if "lora_dropout" in n and isinstance(m, torch.nn.Dropout)}
            assert lora_p == {0.3}
    # (LoRA's B starts at zero, so its own dropout cannot show in a forward at init)
    assert outs == {None: False, 0.0: True}
    assert load_config(None, []).train.dropout == 0.0  # off unless asked for


def test_train_reports_to_a_logger_stops_on_request_and_resumes(tiny_overrides, tmp_path):
    """The hooks a server runs jobs through: every metrics row reaches the caller's logger
    as it reaches metrics.jsonl; a stop hook ends the run after a checkpoint, and the run
    resumes from it to the same end as an uninterrupted one."""
    import lmtune
    from lmtune.errors import Interrupted

    class Rows:
        def __init__(self):
            self.rows, self.closed = [], False

        def log(self, row):
            self.rows.append(row)

        def close(self):
            self.closed = True

    common = [*tiny_overrides, "train.max_steps=12", "train.log_every=1"]
    want = lmtune.train(load_config(None, [*common, f"output_dir={tmp_path}/ref"]),
                        progress=False)
    logger = Rows()
    stop = lambda: len(logger.rows) >= 5  # noqa: E731 - after 5 rows
    cfg = load_config(None, [*common, f"output_dir={tmp_path}/run"])
    with pytest.raises(Interrupted) as e:
        lmtune.train(cfg, progress=False, logger=logger, stop=stop)
    assert e.value.exit_code == 1 and "stopped by request" in str(e.value)
    assert logger.closed  # the run ended: its logs are closed
    steps = [r["step"] for r in logger.rows if "lr" in r]
    assert steps == [1, 2, 3, 4, 5]
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text()
              .splitlines()]
    assert logged == logger.rows
    got = lmtune.train(load_config(None, [*common, f"output_dir={tmp_path}/run",
                                          "resume=true"]), progress=False)
    assert got.steps == want.steps == 12 and got.test == want.test
    def steps_losses(run_dir):  # the resumed run adds an event row
        return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text()
                                       .splitlines()) if "lr" in r]

    assert steps_losses(tmp_path / "run") == steps_losses(tmp_path / "ref")


def test_summary_json_says_what_the_run_did(tiny_overrides, tmp_path):
    """summary.json beside eval.json; and train() gives the caller back its thread count."""
    import lmtune

    torch.set_num_threads(2)
    try:
        result = lmtune.train(load_config(None, [*tiny_overrides, "train.max_steps=4",
                                                 "train.threads=1"]), progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == result.steps == 4
    saved = Predictor(tmp_path / "run").model
    assert summary["trainable_params"] == summary["total_params"] == \
        sum(p.numel() for p in saved.parameters())
    assert summary["best"]["metric"] == "accuracy" and \
        summary["best"]["value"] == result.best["accuracy"]
    assert summary["test"]["accuracy"] == result.test["accuracy"]
    assert summary["samples_per_second"] == result.samples_per_second > 0
    assert summary["peak_memory_mb"] == result.peak_memory_mb > 50
    assert summary["distributed"] == "ddp" and summary["processes"] == 1
    env = summary["environment"]
    assert env["torch"] == torch.__version__ and env["cores"] >= 1 and env["cpu"]


def test_lora_plus_gives_the_b_matrices_their_own_learning_rate(tiny_overrides):
    s = prepare(load_config(None, [*tiny_overrides, "method=lora", "lora.plus_ratio=16",
                                   "train.lr=1e-3", "train.max_steps=3", "train.warmup=0"]))
    lr_of = {id(p): g["lr"] for g in s.optimizer.param_groups for p in g["params"]}
    named = dict(s.module.named_parameters())
    b = [n for n in named if ".lora_B." in n]
    a = [n for n in named if ".lora_A." in n]
    assert b and a
    assert [lr_of[id(named[n])] for n in b] == pytest.approx([1.6e-2] * len(b))
    assert [lr_of[id(named[n])] for n in a] == pytest.approx([1e-3] * len(a))
    assert lr_of[id(named["base_model.model.classifier.modules_to_save.default.weight"])] \
        == pytest.approx(1e-3)
    result = finish(s, fit(s, progress=False))
    assert torch.isfinite(torch.tensor(result.test["loss"]))
    # the schedule scales every group alike: the ratio holds after the steps
    lrs = sorted({g["lr"] for g in s.optimizer.param_groups})
    assert lrs[-1] == pytest.approx(16 * lrs[0])


def imbalanced_csv(tmp_path, n=200, keep_neg=0.25):
    """pos : neg = 4 : 1 (the classes are imbalanced)."""
    from tests.conftest import sentiment_rows, write_csv

    rows = sentiment_rows(n)
    rows = [r for i, r in enumerate(rows) if r["label"] == "pos" or i % 8 == 1]
    return write_csv(tmp_path / "imbalanced.csv", rows)


def test_imbalanced_classes_are_weighted_and_select_by_macro_f1(tiny_bert, tmp_path):
    """class_weights=auto: n / (k × n_c) per class, in every training batch, the loss a
    weighted sum; eval.metric=auto picks the best model by macro-F1."""
    import contextlib

    import torch.nn.functional as F

    data = imbalanced_csv(tmp_path)
    common = [f"model={tiny_bert}", f"data.train={data}", "train.threads=1",
              "train.precision=fp32", "train.max_steps=3"]
    s = prepare(load_config(None, [*common, f"output_dir={tmp_path / 'run'}"]))
    labels = s.data["train"].labels
    n, counts = len(labels), [labels.count(c) for c in range(2)]
    assert max(counts) >= 3 * min(counts)
    assert s.data["train"].class_weights == pytest.approx([n / (2 * c) for c in counts])
    assert s.metric == "macro_f1"
    batch = s.task.batch(s.data["train"], list(range(8)), s.pad_id, "cpu")
    weights = torch.tensor(s.data["train"].class_weights)[batch["labels"]]
    assert torch.equal(batch["weights"], weights)
    logits = s.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    want = (F.cross_entropy(logits, batch["labels"], reduction="none") * weights).sum()
    torch.testing.assert_close(s.task.loss_sum(s.model, batch, contextlib.nullcontext), want)
    finish(s, fit(s, progress=False))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best"]["metric"] == "macro_f1" and "warnings" in summary
    plain = prepare(load_config(None, [*common, f"output_dir={tmp_path / 'none'}",
                                       "train.class_weights=none", "eval.metric=accuracy"]))
    assert plain.data["train"].class_weights is None and plain.metric == "accuracy"
    given = prepare(load_config(None, [*common, f"output_dir={tmp_path / 'given'}",
                                       "train.class_weights=neg=3"]))
    assert given.data["train"].class_weights == [3.0, 1.0]  # neg, pos


def test_class_weights_naming_an_unknown_label_is_an_error(tiny_bert, tmp_path):
    from lmtune.errors import LmtuneError

    cfg = load_config(None, [f"model={tiny_bert}", f"data.train={imbalanced_csv(tmp_path)}",
                             f"output_dir={tmp_path / 'run'}", "train.class_weights=neutral=2"])
    with pytest.raises(LmtuneError, match="'neutral', not a label of the data"):
        prepare(cfg)
    assert not (tmp_path / "run").exists()


def test_a_stop_during_validation_ends_it_within_a_batch_and_resume_redoes_it(
        tiny_overrides, tmp_path, monkeypatch):
    """A long validation is where a preempted job loses its grace period: the request is
    honoured between validation batches, with a checkpoint of the step, and the resumed
    run validates first, ending exactly as an uninterrupted run."""
    import importlib

    import lmtune
    from lmtune.errors import Interrupted

    loop = importlib.import_module("lmtune.train")  # the module, not lmtune.train()
    common = [*tiny_overrides, "train.max_steps=6", "train.eval_every=3", "eval.batch_size=2",
              "train.log_every=1"]
    want = lmtune.train(load_config(None, [*common, f"output_dir={tmp_path}/ref"]),
                        progress=False)
    seen = {"validations": 0, "asked": 0}
    real = loop.validate

    def counting(*args, **kwargs):
        seen["validations"] += 1
        return real(*args, **kwargs)

    def stop():  # True from the 3rd batch of the second validation on
        if seen["validations"] == 2:
            seen["asked"] += 1
        return seen["asked"] >= 3

    monkeypatch.setattr(loop, "validate", counting)
    cfg = load_config(None, [*common, f"output_dir={tmp_path}/run"])
    with pytest.raises(Interrupted) as e:
        lmtune.train(cfg, progress=False, stop=stop)
    monkeypatch.undo()
    assert e.value.exit_code == 1 and seen["asked"] == 3  # not one batch more
    progress = json.loads((tmp_path / "run" / "checkpoints" / "step-000006" /
                           "progress.json").read_text())
    assert progress["pending_validation"] == 0 and progress["step"] == 6
    got = lmtune.train(load_config(None, [*common, f"output_dir={tmp_path}/run",
                                          "resume=true"]), progress=False)
    assert got.test == want.test and got.best == want.best
    def rows(run_dir):
        return [{k: v for k, v in r.items() if k not in ("samples_per_s", "tokens_per_s")}
                for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
                if "event" not in r]

    assert rows(tmp_path / "run") == rows(tmp_path / "ref")


def test_a_small_training_set_gets_at_least_min_steps(tiny_overrides, capsys):
    """~160 rows at batch 16 make 10 steps an epoch: 4 epochs would be 40 steps; with
    train.min_steps=100 the run takes 100 (10 epochs), and says so."""
    from lmtune.prepare import count_steps

    s = prepare(load_config(None, [*tiny_overrides, "train.min_steps=100"]))
    assert s.steps_per_epoch * 4 < 100 and s.total_steps == 100
    assert "training 100 steps" in capsys.readouterr().err
    cfg = load_config(None, [*tiny_overrides, "train.min_steps=100", "train.max_steps=7"])
    assert count_steps(cfg, 160, 1) == (10, 7)  # max_steps wins


def test_eval_max_samples_caps_validation_and_keeps_the_test_split_whole(tiny_overrides):
    whole = prepare(load_config(None, tiny_overrides))
    whole.logger.close()
    capped = prepare(load_config(None, [*tiny_overrides, "eval.max_samples=7",
                                        "overwrite=true"]))
    assert len(whole.data["validation"]) > 7 and len(capped.data["validation"]) == 7
    assert len(capped.data["test"]) == len(whole.data["test"])
    rows = {tuple(x) for x in whole.data["validation"].input_ids}
    picked = capped.data["validation"]
    assert {tuple(x) for x in picked.input_ids} <= rows  # a sample of the same rows
    assert len(picked.labels) == 7
    capped.logger.close()
