"""A stop request is honoured in every phase after training began: between batches of
generated validation prompts, and between batches of the test pass. The run checkpoints (or
already has the checkpoint it needs), and resuming it ends exactly as an uninterrupted run."""
import importlib
import json
import signal

import pytest

from lmtune.config import load_config
from lmtune.errors import Interrupted
from lmtune.infer.decoder import Decoder
from lmtune.train import train
from tests.integration.test_resume import assert_same_run

train_module = importlib.import_module("lmtune.train")  # `lmtune.train` is also a function


def sft(tiny_llama, chat_jsonl, out, *extra):
    return load_config(None, [f"model={tiny_llama}", f"data.train={chat_jsonl}", "task=sft",
                              f"output_dir={out}", "train.precision=fp32", "train.threads=1",
                              "train.batch_size=8", "train.max_steps=4", "train.eval_every=2",
                              "train.lr=3e-3", "train.log_every=1", "eval.generate_samples=6",
                              "generate.batch_size=2", "generate.max_new_tokens=4",
                              "data.cache=false", *extra])


def test_a_stop_between_generated_batches_checkpoints_the_validation_owed(
        tiny_llama, chat_jsonl, tmp_path, monkeypatch):
    batches = []
    real = Decoder._batch

    def counted(self, *args, **kwargs):
        batches.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Decoder, "_batch", counted)
    ref = tmp_path / "ref"
    train(sft(tiny_llama, chat_jsonl, ref), progress=False)
    per_pass = len(batches) // 2  # two validations, at steps 2 and 4
    assert per_pass == 3
    batches.clear()
    out = tmp_path / "run"
    with pytest.raises(Interrupted) as stopped:
        train(sft(tiny_llama, chat_jsonl, out), progress=False, stop=lambda: len(batches) == 1)
    assert len(batches) == 1  # stopped before the second batch of prompts
    progress = json.loads((stopped.value.checkpoint / "progress.json").read_text())
    assert progress["step"] == 2 and progress["pending_validation"] == 0
    train(load_config(out / "config.yaml", ["resume=true"]), progress=False)
    assert_same_run(ref, out)


def test_a_stop_during_the_test_pass_resumes_straight_to_the_test(
        tiny_overrides, tmp_path, monkeypatch):
    overrides = [*tiny_overrides, "eval.batch_size=4", "data.cache=false"]
    ref = tmp_path / "ref"
    train(load_config(None, [*overrides, f"output_dir={ref}"]), progress=False)
    testing = {"on": False}
    real = train_module.evaluate_split

    def watched(s, name, stop=None):
        testing["on"] = name == "test"
        return real(s, name, stop)

    monkeypatch.setattr(train_module, "evaluate_split", watched)
    out = tmp_path / "run"
    with pytest.raises(Interrupted) as stopped:
        train(load_config(None, [*overrides, f"output_dir={out}"]), progress=False,
              stop=lambda: testing["on"])
    steps = json.loads((ref / "summary.json").read_text())["steps"]
    assert stopped.value.checkpoint.name == f"step-{steps:06d}"  # training's last one
    assert stopped.value.checkpoint.is_dir()
    assert not (out / "eval.json").exists() and not (out / "model").exists()
    testing["on"] = False
    train(load_config(out / "config.yaml", ["resume=true"]), progress=False)
    assert_same_run(ref, out)


def test_sigterm_before_training_exits_at_once_and_writes_nothing(tiny_bert, tmp_path):
    """SIGTERM while the data is read and tokenized ends the process at once (no handler is
    installed before training), and no run dir exists yet: it is created once the data is
    ready. The data comes through a named pipe, so the test knows the phase on any machine:
    the signal goes the moment the last of 200,000 rows is written, while lmtune still has
    them all to parse and tokenize (seconds of work)."""
    import os
    import subprocess
    import sys
    import time

    from tests.conftest import sentiment_rows, write_csv

    text = write_csv(tmp_path / "big.csv", sentiment_rows(200_000)).read_bytes()
    pipe = tmp_path / "pipe.csv"
    os.mkfifo(pipe)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "lmtune", "train", "--quiet",
                             f"model={tiny_bert}", f"data.train={pipe}", f"output_dir={out}",
                             "data.cache=false", "train.threads=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with open(pipe, "wb") as f:  # opens once lmtune opens the pipe to read it
        f.write(text)
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, stderr[-2000:]  # the shell reports 143
    assert time.monotonic() - sent < 3
    assert not out.exists()
