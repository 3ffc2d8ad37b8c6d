"""Resume is exact: a run stopped anywhere (crash, SIGKILL, SIGTERM), then resumed, ends with
the same weights and the same per-step losses as a run never stopped. The tiny model has
dropout, so the RNG streams must come back too."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from lmtune.cli import main
from tests.conftest import sentiment_rows, write_csv

# 192 train rows, micro-batch 8: 24 micro-batches per epoch. eval_every and checkpoint_every
# are not multiples of each other, so checkpoints fall between evaluations too.
COMMON = ["train.precision=fp32", "train.threads=1", "train.batch_size=8", "train.lr=3e-3",
          "train.epochs=3", "train.warmup=3", "train.eval_every=5", "train.checkpoint_every=4",
          "train.keep_checkpoints=2", "lora.r=4", "train.min_steps=0",
          "train.dropout=null"]  # the model's dropout: its masks draw from the RNG streams


def run_args(model, data, out, extra=()):
    return [f"model={model}", f"data.train={data}", f"output_dir={out}", *COMMON, *extra]


def rows(run_dir):
    """metrics.jsonl without timings (they differ between any two runs) or resume markers."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        row.pop("samples_per_s", None)
        row.pop("tokens_per_s", None)
        if "event" not in row:
            out.append(row)
    return out


def assert_same_run(ref, other):
    files = sorted(p.name for p in (ref / "model").glob("*.safetensors"))
    assert files and files == sorted(p.name for p in (other / "model").glob("*.safetensors"))
    worst = 0.0
    for name in files:
        a, b = load_file(ref / "model" / name), load_file(other / "model" / name)
        assert a.keys() == b.keys()
        worst = max(worst, *((a[k].float() - b[k].float()).abs().max().item() for k in a))
        assert worst <= 1e-6, f"{name}: weights differ by {worst}"
    assert rows(ref) == rows(other)  # every step's loss and LR, every evaluation
    assert json.loads((ref / "eval.json").read_text()) == \
        json.loads((other / "eval.json").read_text())
    return worst


def reference(tiny_bert_dropout, sentiment_csv, tmp_path, extra):
    ref = tmp_path / "ref"
    assert main(["train", "--quiet", *run_args(tiny_bert_dropout, sentiment_csv, ref, extra)]) == 0
    return ref


def break_at(monkeypatch, call: int, action):
    """Run `action` when the loop builds its `call`-th micro-batch (1-based)."""
    from lmtune.tasks import Task

    calls = {"n": 0}
    real = Task.batch

    def batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            action()
        return real(*args, **kwargs)

    monkeypatch.setattr(Task, "batch", batch)


class Crash(Exception):
    pass


def crash():
    raise Crash


# call 22 with grad_accum 2 is the 2nd micro-batch of step 11: a crash mid-accumulation.
@pytest.mark.parametrize("method,extra,call", [
    ("full", ["train.grad_accum=2", "train.log_every=1"], 22),
    ("lora", ["train.grad_accum=2", "train.log_every=3"], 31),
    ("freeze", ["train.log_every=1"], 50),
    ("bitfit", ["train.log_every=1"], 30),
    ("ia3", ["train.log_every=1"], 30),
    ("prompt", ["train.log_every=1", "prompt.virtual_tokens=4"], 30),
    # step 40 of 72, amid the rank reallocation: its importance scores come back too
    ("adalora", ["train.log_every=1"], 40),
])
def test_resume_after_a_crash_is_exact(tiny_bert_dropout, sentiment_csv, tmp_path,
                                       monkeypatch, method, extra, call):
    extra = [f"method={method}", *extra]
    ref = reference(tiny_bert_dropout, sentiment_csv, tmp_path, extra)
    out = tmp_path / "run"
    args = run_args(tiny_bert_dropout, sentiment_csv, out, extra)
    break_at(monkeypatch, call, crash)
    with pytest.raises(Crash):
        main(["train", "--quiet", *args])
    monkeypatch.undo()
    assert not (out / "model").exists()
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 99, "loss": 0.')  # what a crash in the middle of a write leaves
    assert main(["resume", "--quiet", str(out)]) == 0
    assert_same_run(ref, out)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_the_current_step_then_resume_is_exact(
        tiny_bert_dropout, sentiment_csv, tmp_path, monkeypatch, capsys, sig):
    extra = ["train.grad_accum=2", "train.log_every=1"]
    ref = reference(tiny_bert_dropout, sentiment_csv, tmp_path, extra)
    out = tmp_path / "run"
    break_at(monkeypatch, 13, lambda: os.kill(os.getpid(), sig))  # mid-way through step 7
    assert main(["train", "--quiet", *run_args(tiny_bert_dropout, sentiment_csv, out,
                                               extra)]) == 128 + sig  # 143, 130
    monkeypatch.undo()
    assert "resume with: lmtune resume" in capsys.readouterr().err
    assert (out / "checkpoints" / "step-000007").is_dir()  # the step finished, then saved
    assert main(["resume", "--quiet", str(out)]) == 0
    assert "resumed from" in capsys.readouterr().err
    assert_same_run(ref, out)


def test_resume_falls_back_past_a_corrupted_newest_checkpoint(
        tiny_bert_dropout, sentiment_csv, tmp_path, capsys):
    ref = reference(tiny_bert_dropout, sentiment_csv, tmp_path, ["train.log_every=1"])
    out = tmp_path / "run"  # a copy of the finished run, its newest checkpoint corrupted
    shutil.copytree(ref, out)
    ckpts = sorted((out / "checkpoints").iterdir())
    newest = ckpts[-1] / "trainable.safetensors"
    newest.write_bytes(newest.read_bytes()[:-8] + b"garbage!")
    shutil.rmtree(out / "model")
    capsys.readouterr()
    assert main(["resume", "--quiet", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"skipping checkpoint {ckpts[-1]}" in err and "sha256" in err
    assert f"resumed from {ckpts[-2]}" in err
    assert_same_run(ref, out)


def test_resume_refuses_a_changed_config_and_starts_fresh_without_checkpoints(
        tiny_bert, sentiment_csv, tmp_path, capsys):
    out = tmp_path / "run"
    args = run_args(tiny_bert, sentiment_csv, out, ["train.max_steps=3"])
    assert main(["train", "--quiet", *args, "resume=true"]) == 0  # nothing to resume
    assert "no valid checkpoint" in capsys.readouterr().err
    assert main(["train", "--quiet", *args, "resume=true", "train.lr=1e-3"]) == 2
    assert "resume=true needs the config the run started with" in capsys.readouterr().err


# --------------------------------------------------------------- real processes, real signals


def last_step(metrics) -> int:
    try:
        lines = metrics.read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(x).get("step", 0) for x in lines[:-1]]  # the last may be mid-write
    return max(steps, default=0)


def run_until(args, out, step: int, sig: int) -> subprocess.CompletedProcess:
    """Start `lmtune train` in a child process and send it `sig` once it logged `step`."""
    proc = subprocess.Popen([sys.executable, "-m", "lmtune", "train", "--quiet", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if last_step(out / "metrics.jsonl") >= step:
            proc.send_signal(sig)
            break
        time.sleep(0.002)
    stdout, stderr = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def long_csv(tmp_path_factory):
    """Enough data that a run lasts a few seconds: time to land a signal mid-run."""
    return write_csv(tmp_path_factory.mktemp("long") / "long.csv", sentiment_rows(2400))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_a_random_step_then_resume_is_exact(tiny_bert_dropout, long_csv,
                                                      tmp_path, seed):
    extra = ["train.epochs=1", "train.log_every=1", "train.checkpoint_every=7",
             "train.eval_every=20", "train.grad_accum=2"]  # 120 steps
    ref = tmp_path / "ref"
    assert main(["train", "--quiet", *run_args(tiny_bert_dropout, long_csv, ref, extra)]) == 0
    out = tmp_path / "run"
    kill_at = random.Random(seed).randrange(8, 100)
    done = run_until(run_args(tiny_bert_dropout, long_csv, out, extra), out, kill_at,
                     signal.SIGKILL)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert not (out / "model").exists()  # killed mid-run, not after it
    resumed = subprocess.run([sys.executable, "-m", "lmtune", "resume", "--quiet", str(out)],
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr
    assert_same_run(ref, out)


def test_sigterm_in_a_real_process_exits_143_after_a_checkpoint(tiny_bert_dropout, long_csv,
                                                                 tmp_path):
    extra = ["train.epochs=1", "train.log_every=1", "train.eval_every=20"]
    ref = tmp_path / "ref"
    assert main(["train", "--quiet", *run_args(tiny_bert_dropout, long_csv, ref, extra)]) == 0
    out = tmp_path / "run"
    done = run_until(run_args(tiny_bert_dropout, long_csv, out, extra), out, 30,
                     signal.SIGTERM)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-2000:]
    assert "SIGTERM" in done.stderr and "resume with: lmtune resume" in done.stderr
    stopped = max(json.loads(x)["step"] for x in
                  (out / "metrics.jsonl").read_text().splitlines())
    assert (out / "checkpoints" / f"step-{stopped:06d}").is_dir()
    resumed = subprocess.run([sys.executable, "-m", "lmtune", "resume", "--quiet", str(out)],
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(ref, out)


@pytest.mark.parametrize("nproc", [1, 2])
def test_sigterm_during_a_long_validation_exits_within_seconds(tiny_bert_dropout, long_csv,
                                                               tmp_path, nproc):
    """Step 4 starts a validation of 6,000 rows one at a time (many seconds); SIGTERM soon
    after it began ends the process within a few seconds, with a checkpoint of step 4 that
    still owes its validation. With 2 processes the signal goes to the launcher, which
    hands it on; the ranks agree at every batch and stop at the same one. Their
    validation is 4 times longer (about a minute), so that the bound, which leaves room
    for two processes to checkpoint and torchrun to wind down, still tells a stop between
    batches from one after the pass."""
    val = write_csv(tmp_path / "val.csv", sentiment_rows(6000 * nproc ** 2, seed=5))
    extra = ["train.max_steps=8", "train.log_every=1", "train.eval_every=4",
             "train.checkpoint_every=0", f"data.validation={val}", "eval.batch_size=1"]
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "lmtune", "train", "--quiet",
                             "--nproc", str(nproc),
                             *run_args(tiny_bert_dropout, long_csv, out, extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    while proc.poll() is None:  # the step-4 row is whole: validation has begun
        text = metrics.read_text() if metrics.exists() else ""
        if any(json.loads(x).get("step") == 4 for x in text.split("\n")[:-1]):
            break
        time.sleep(0.002)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert time.monotonic() - sent < (5 if nproc == 1 else 20), stderr[-3000:]  # not the pass
    progress = json.loads((out / "checkpoints" / "step-000004" / "progress.json").read_text())
    assert progress["pending_validation"] == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert not any(r.get("split") == "validation" for r in rows)
