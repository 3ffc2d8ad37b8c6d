"""Multi-label classification end to end on a tiny Llama with a classification head (the
tiny BERT's tanh pooler saturates on the first label it learns and never learns a second):
it learns, its thresholds are saved with the model and used by predict and eval, tuning
picks them on validation."""
import json
import random
import subprocess
import sys

import pytest
import torch

from lmtune.cli import main
from lmtune.config import load_config
from lmtune.eval.multilabel import evaluate_multilabel
from lmtune.infer.evaluate import evaluate_run
from lmtune.infer.predict import Predictor
from lmtune.prepare import prepare
from lmtune.train import finish, fit
from tests.conftest import CHAT_WORDS


ANIMALS, PLACES = ["cat", "dog"], ["park", "mat"]
OTHER = [w for w in CHAT_WORDS if w not in ANIMALS + PLACES]


def multilabel_rows(n: int, seed: int = 0) -> list[dict]:
    """animal when "cat" or "dog" is in the text, place when "park" or "mat" is: either,
    both or none."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words, labels = rng.sample(OTHER, rng.randint(3, 8)), []
        for name, pool, on in (("animal", ANIMALS, (0, 3)), ("place", PLACES, (1, 3))):
            if i % 4 in on:
                words.insert(rng.randrange(len(words) + 1), rng.choice(pool))
                labels.append(name)
        rows.append({"text": " ".join(words), "label": labels})
    return rows


@pytest.fixture(scope="module")
def multilabel_jsonl(tmp_path_factory):
    path = tmp_path_factory.mktemp("ml") / "tags.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in multilabel_rows(320)))
    return path


@pytest.fixture
def ml_overrides(tiny_llama, multilabel_jsonl, tmp_path):
    return [f"model={tiny_llama}", f"data.train={multilabel_jsonl}", "data.multi_label=true",
            f"output_dir={tmp_path / 'run'}", "train.threads=1", "train.precision=fp32",
            "train.batch_size=8", "train.lr=3e-3", "train.epochs=8", "train.warmup=0",
            "train.min_steps=0", "train.log_every=5"]


def train(overrides):
    s = prepare(load_config(None, overrides))
    return s, finish(s, fit(s, progress=False))


TEXTS = ["hello the cat", "what a short park", "the dog ran to this mat", "hello world"]


def test_learns_every_label_set_and_predict_uses_the_saved_thresholds(ml_overrides, tmp_path):
    s, result = train(ml_overrides + ["eval.thresholds=place=0.4"])
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    curve = [r["loss"] for r in rows if "split" not in r]
    assert sum(curve[-5:]) < 0.3 * sum(curve[:5])  # the loss falls
    assert result.test["micro_f1"] >= 0.95 and result.test["subset_accuracy"] >= 0.9
    assert s.metric == "micro_f1"  # auto: the labels are balanced (each on half the rows)
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["problem_type"] == "multi_label_classification"
    assert saved["lmtune_thresholds"] == {"animal": 0.5, "place": 0.4}
    clf = Predictor(tmp_path / "run", precision="fp32")
    enc = s.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        scores = s.module.eval()(**enc).logits.sigmoid()
    want = [[name for name, p, t in zip(("animal", "place"), row, (0.5, 0.4)) if p > t]
            for row in scores.tolist()]
    got = clf(TEXTS)
    assert [p["labels"] for p in got] == want == [["animal"], ["place"], ["animal", "place"],
                                                  []]
    assert got[1]["scores"]["place"] == pytest.approx(scores[1, 1].item(), abs=1e-6)
    # `lmtune eval` scores the test split as training did (in bf16 where the CPU has it:
    # the loss moves a little, the predictions do not)
    evaluated, _ = evaluate_run(tmp_path / "run")
    for k in ("micro_f1", "macro_f1", "subset_accuracy", "per_class"):
        assert evaluated["test"][k] == result.test[k]
    assert evaluated["test"]["loss"] == pytest.approx(result.test["loss"], abs=2e-3)


def test_tuned_thresholds_are_each_labels_best_on_validation(ml_overrides, tmp_path):
    s, result = train(ml_overrides + ["eval.thresholds=tune", "train.epochs=3"])
    how = s.eval_settings()
    tuned = evaluate_multilabel(s.module, s.data["validation"], s.label_names, [0.5, 0.5],
                                how.batch_size, how.pad_id, tune=True)["best_thresholds"]
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["lmtune_thresholds"] == dict(zip(s.label_names, tuned))
    assert {k: c["threshold"] for k, c in result.test["per_class"].items()} == \
        saved["lmtune_thresholds"]
    assert tuned != [0.5, 0.5]  # 3 epochs leave the scores short of 0.5: tuning moves them
    # the test split scored at the tuned thresholds is no worse than at 0.5
    at_half = evaluate_multilabel(s.module, s.data["test"], s.label_names, [0.5, 0.5],
                                  how.batch_size, how.pad_id)
    assert result.test["micro_f1"] >= at_half["micro_f1"]


def test_lora_csv_with_a_separator_through_the_cli(tiny_llama, tmp_path, capsys):
    path = tmp_path / "tags.csv"
    path.write_text("text,label\n" + "".join(f"{r['text']},{'|'.join(r['label'])}\n"
                                             for r in multilabel_rows(320)))
    run = tmp_path / "run"
    assert main(["train", "--quiet", f"model={tiny_llama}", f"data.train={path}",
                 "data.multi_label=true", "data.label_separator=|", "method=lora",
                 "lora.r=8", "train.lr=1e-3", "train.epochs=20", "train.batch_size=8",
                 "train.precision=fp32", "train.threads=1", f"output_dir={run}"]) == 0
    capsys.readouterr()
    assert main(["predict", str(run), *TEXTS[:3], "--jsonl"]) == 0
    preds = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [p["labels"] for p in preds] == [["animal"], ["place"], ["animal", "place"]]
    assert main(["predict", str(run), *TEXTS[:3]]) == 0  # the table: each row's labels
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["labels", "text"]
    assert [line.split()[0] for line in table[1:]] == ["animal", "place", "animal,place"]
    assert main(["eval", str(run), "--compare-base", "--json", str(tmp_path / "e.json")]) == 0
    out = capsys.readouterr().out
    assert "micro f1" in out and "threshold" in out
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["test"]["micro_f1"] > result["base"]["test"]["micro_f1"] + 0.3
    assert result["warnings"] == []
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "subset_accuracy" in page and "<th>threshold</th>" in page
    assert "confusion matrix" not in page  # a row's labels are not one class


def test_two_processes_score_and_tune_like_one(tiny_llama, multilabel_jsonl, tmp_path):
    """Validation, the threshold grid and the test pass are shared out over the ranks and
    added up: 2 processes give 1's metrics and tuned thresholds."""
    base = [f"model={tiny_llama}", f"data.train={multilabel_jsonl}", "data.multi_label=true",
            "eval.thresholds=tune", "train.precision=fp32", "train.batch_size=8",
            "train.max_steps=12", "train.group_by_length=false", "train.lr=3e-3",
            "train.threads=1", "eval.batch_size=8", "train.eval_every=6"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", "--quiet", *base, "train.grad_accum=2", f"output_dir={one}"]) == 0
    proc = subprocess.run([sys.executable, "-m", "lmtune", "train", "--nproc", "2", "--quiet",
                           *base, f"output_dir={two}"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ta, tb = (json.loads((r / "eval.json").read_text())["test"] for r in (one, two))
    assert ta["n"] == tb["n"] == 32
    for k in ("micro_f1", "macro_f1", "subset_accuracy"):
        assert ta[k] == pytest.approx(tb[k], abs=1e-9), k
    assert {k: c["threshold"] for k, c in ta["per_class"].items()} == \
        {k: c["threshold"] for k, c in tb["per_class"].items()}
    va, vb = ([r for r in (x / "metrics.jsonl").read_text().splitlines() if "validation" in r]
              for x in (one, two))
    assert len(va) == len(vb) == 2
    for ra, rb in zip(map(json.loads, va), map(json.loads, vb)):
        assert ra["micro_f1"] == pytest.approx(rb["micro_f1"], abs=1e-9)
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-5)
