"""The CLI: exit codes, clean errors, nothing half-written, eval and predict on a saved run."""
import json
import subprocess
import sys

import pytest

from lmtune.cli import main
from lmtune.data.collate import collate
from tests.conftest import sentiment_rows, write_csv


def test_bad_data_exits_2_without_traceback_or_run_dir(tmp_path, tiny_bert):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\ngood,pos\nbad film,neg,oops\n")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "lmtune", "train", f"model={tiny_bert}",
                           f"data.train={bad}", f"output_dir={out}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"error: {bad}:3: expected 2 fields" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_a_run_keeps_deepspeeds_cpu_notice_off_its_output(tmp_path, tiny_bert):
    """Saving the model imports DeepSpeed where it is installed (transformers checks for its
    engines), which announced on stdout that it uses the CPU."""
    pytest.importorskip("deepspeed")
    train = write_csv(tmp_path / "train.csv", sentiment_rows(16))
    proc = subprocess.run([sys.executable, "-m", "lmtune", "train", "--quiet",
                           f"model={tiny_bert}", f"data.train={train}", "train.max_steps=1",
                           f"output_dir={tmp_path / 'run'}", "train.threads=1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "model").is_dir()
    assert "accelerator" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("args, fragment", [
    (["train", "train.lrr=1"], "Did you mean 'train.lr'"),
    (["train", "model=./no/such/dir"], "directory not found"),
    (["train", "model=no such model"],
     "not a local dir, an alias (minilm, smollm2, minilm2minilm) or a valid hub id"),
    (["train", "model=x..y"], "or a valid hub id"),
    (["train", "train.max_length=4096"], "more than the 512 positions minilm was trained"),
    (["train", "data.train=missing.csv"], "missing.csv: file not found"),
    (["predict", "/nonexistent-run"], "not a run dir or model dir"),
    # checked before torchrun starts: exit 2, not its child-failure report
    (["train", "--nproc", "2", "train.distributed=zero3"], "must be one of ddp, fsdp, deepspeed"),
    (["serve", "minilm", "--max-batch", "0"], "serve: --max-batch must be positive"),
    (["generate", "smollm2"], "generate: give --prompt TEXT or --input FILE"),
])
def test_cli_errors_exit_2(args, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output_dir is relative: keep it out of the repo
    assert main(args) == 2
    assert fragment in capsys.readouterr().err


def test_serve_on_a_taken_port_exits_2_before_loading_a_model(capsys, monkeypatch):
    import socket

    import lmtune.serve.command

    monkeypatch.setattr(lmtune.serve.command, "run_server",
                        lambda *a: pytest.fail("a model was loaded"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", "minilm", "--host", "127.0.0.1", "--port", str(port)]) == 2
    assert f"serve: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_deepspeed_missing_is_an_error_before_torchrun(capsys, tmp_path, monkeypatch):
    import importlib.util

    import lmtune.cli as cli

    monkeypatch.chdir(tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "deepspeed" else real(name, *a))
    monkeypatch.setattr(cli, "launch", lambda *a: pytest.fail("torchrun was started"))
    assert main(["train", "--nproc", "2", "train.distributed=deepspeed"]) == 2
    assert "pip install 'lmtune[deepspeed]'" in capsys.readouterr().err


def test_different_config_is_not_overwritten(tiny_overrides, tmp_path, capsys):
    assert main(["train", "--quiet", *tiny_overrides, "train.max_steps=2"]) == 0
    before = (tmp_path / "run" / "config.yaml").read_text()
    assert main(["train", "--quiet", *tiny_overrides, "train.max_steps=3"]) == 2
    assert "holds a run with a different config" in capsys.readouterr().err
    assert (tmp_path / "run" / "config.yaml").read_text() == before
    assert main(["train", "--quiet", *tiny_overrides, "train.max_steps=2"]) == 0  # same: ok
    assert main(["train", "--quiet", *tiny_overrides, "train.max_steps=3",
                 "overwrite=true"]) == 0


def test_train_eval_predict(tiny_overrides, tmp_path, capsys, monkeypatch):
    import lmtune.eval.batched as eval_batched

    assert main(["train", "--quiet", *tiny_overrides]) == 0
    run = tmp_path / "run"
    other = write_csv(tmp_path / "other.csv", sentiment_rows(50, seed=9))
    preds = tmp_path / "preds.jsonl"
    capsys.readouterr()
    batches = []  # every forward pass collates its batches
    monkeypatch.setattr(eval_batched, "collate",
                        lambda *a, **k: batches.append(a[1]) or collate(*a, **k))
    assert main(["eval", str(run), f"data.test={other}", "--json", str(tmp_path / "e.json"),
                 "--output", str(preds)]) == 0
    assert sum(map(len, batches)) == 50  # one pass gives the metrics and the predictions
    captured = capsys.readouterr()
    table = captured.out
    assert "accuracy" in table and "confusion matrix" in table and "majority baseline" in table
    assert "eval: 100%" in captured.err and "50/50" in captured.err  # the progress bar
    metrics = json.loads((tmp_path / "e.json").read_text())["test"]
    assert metrics["n"] == 50 and metrics["accuracy"] >= 0.9
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    assert len(lines) == 50 and {"text", "label", "predicted", "score"} <= set(lines[0])
    texts = [r["text"] for r in sentiment_rows(50, seed=9)]
    assert [x["text"] for x in lines] == texts  # in input order
    hits = sum(x["label"] == x["predicted"] for x in lines)  # the true label is kept
    assert hits / 50 == pytest.approx(metrics["accuracy"])
    # new data with its own column names: the mapping applies to it, not to the training data
    renamed = write_csv(tmp_path / "renamed.csv", [{"review": r["text"], "verdict": r["label"]}
                                                   for r in sentiment_rows(50, seed=9)])
    assert main(["eval", str(run), f"data.test={renamed}", "data.text_column=review",
                 "data.label_column=verdict", "--json", str(tmp_path / "e2.json")]) == 0
    again = json.loads((tmp_path / "e2.json").read_text())["test"]
    assert again["accuracy"] == metrics["accuracy"]
    assert again["majority_baseline"] == metrics["majority_baseline"]
    import lmtune.runtime

    mapped = []  # --low-memory asks glibc to map large buffers apart; metrics are unchanged
    monkeypatch.setattr(lmtune.runtime, "map_large_buffers", lambda: mapped.append(1) or True)
    assert main(["eval", str(run), f"data.test={other}", "--low-memory",
                 "--json", str(tmp_path / "e3.json")]) == 0
    assert mapped == [1]
    assert json.loads((tmp_path / "e3.json").read_text())["test"] == metrics
    capsys.readouterr()

    assert main(["predict", str(run), "a great film", "a dull film", "--jsonl"]) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [o["label"] for o in out] == ["pos", "neg"]
    txt = tmp_path / "in.txt"
    txt.write_text("superb story\n\nawful plot\n")
    assert main(["predict", str(run), "--input", str(txt)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["label", "score", "text"] and len(table) == 3
    assert table[1].startswith("pos") and table[2].startswith("neg")
    # A data file: its text column, every row, in order.
    assert main(["predict", str(run), "--input", str(other), "--jsonl"]) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [o["text"] for o in out] == [r["text"] for r in sentiment_rows(50, seed=9)]
    untitled = write_csv(tmp_path / "untitled.csv", [{"review": "fine"}])
    assert main(["predict", str(run), "--input", str(untitled)]) == 2
    assert "no column 'text'; columns found: review" in capsys.readouterr().err
    gap = write_csv(tmp_path / "gap.csv", [{"text": "good"}, {"text": " "}])
    assert main(["predict", str(run), "--input", str(gap)]) == 2
    assert f"{gap}:3: empty or missing text" in capsys.readouterr().err


def test_help_lists_config_keys(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "train.lr" in out and "data.text_column" in out and "peak learning rate" in out


def test_python_api_on_lists(tiny_bert, tmp_path):
    import lmtune

    rows = sentiment_rows(200, seed=4)
    clf = lmtune.fine_tune([r["text"] for r in rows], [r["label"] for r in rows],
                           model=str(tiny_bert), output_dir=str(tmp_path / "api"),
                           overrides=["train.threads=1", "train.lr=3e-3", "train.epochs=6",
                                      "train.batch_size=16", "train.warmup=0"],
                           progress=False)
    assert clf.result.test["accuracy"] >= 0.9
    assert clf("a brilliant movie")["label"] == "pos"
    again = lmtune.pipeline(tmp_path / "api")
    assert again(["a boring movie"])[0]["label"] == "neg"


def test_eval_compare_base_puts_the_untrained_base_beside_the_run(tiny_overrides, tmp_path,
                                                                  capsys):
    assert main(["train", "--quiet", *tiny_overrides]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--compare-base"]) == 0
    out = capsys.readouterr().out
    assert "majority baseline" in out and "change" in out
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    base, tuned = result["base"]["test"], result["test"]
    assert tuned["accuracy"] > base["accuracy"]  # the tiny run learns; a new head does not
    assert sum(map(sum, base["confusion_matrix"])) == tuned["n"]
