"""OpenAI's files and fine-tuning-jobs API on `lmtune serve --jobs-dir`, driven by the
official `openai` client in strict mode: a job on a tiny model survives a SIGKILL of the
server mid-training (resumed from its checkpoint) and its model is then served; files,
pagination, cancelling, a bad line in a training file, idempotent creation."""
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest

from tests.conftest import chat_rows
from tests.serve_support import client


def start(jobs_dir, tiny_llama):
    """`lmtune serve` in a child process; its stderr is drained into a list."""
    proc = subprocess.Popen([sys.executable, "-m", "lmtune", "serve", f"tiny={tiny_llama}",
                             "--port", "0", "--precision", "fp32", "--threads", "1",
                             "--jobs-dir", str(jobs_dir), "--checkpoint-every", "5"],
                            stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("serving"):
            break
    else:
        raise AssertionError("".join(lines))
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    return proc, line.split(" at ")[1].split()[0], lines


def wait_for(check, timeout=300, every=0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if result := check():
            return result
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s")


def trainers(job_id):
    """Processes running a training for `job_id`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"lmtune" in args and any(job_id.encode() in a for a in args):
            found.append(cmdline.parent.name)
    return found


@pytest.fixture
def chat_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(200)))
    return path


def test_a_job_survives_a_sigkilled_server_and_its_model_is_served(tiny_llama, chat_file,
                                                                    tmp_path):
    jobs_dir = tmp_path / "jobs"
    proc, url, _ = start(jobs_dir, tiny_llama)
    try:
        c = client(url)
        f = c.files.create(file=chat_file.open("rb"), purpose="fine-tune")
        job = c.fine_tuning.jobs.create(model="tiny", training_file=f.id, suffix="t1",
                                        hyperparameters={"n_epochs": 2, "batch_size": 4})
        assert job.status == "validating_files" and job.model == "tiny"
        wait_for(lambda: c.fine_tuning.jobs.checkpoints.list(job.id).data)
        assert c.fine_tuning.jobs.retrieve(job.id).status == "running"
        assert trainers(job.id)
    finally:
        proc.kill()  # SIGKILL: no chance to say anything
        proc.wait()
    # the orphaned training child is told to stop: it checkpoints and exits
    wait_for(lambda: not trainers(job.id), timeout=60)
    assert "resume with: lmtune resume" in (jobs_dir / "runs" / f"{job.id}.log").read_text()
    proc, url, log = start(jobs_dir, tiny_llama)
    try:
        c = client(url)
        done = wait_for(lambda: (j := c.fine_tuning.jobs.retrieve(job.id)).status
                        not in ("running", "queued") and j)
        assert done.status == "succeeded", (done.error, "".join(log))
        assert done.fine_tuned_model == f"ft:tiny:lmtune:t1:{job.id}"
        assert done.trained_tokens > 0 and done.finished_at >= done.created_at
        events = list(c.fine_tuning.jobs.list_events(job.id, limit=100))
        messages = [e.message for e in events]
        assert "Resuming training from its last checkpoint" in messages
        steps = sorted(e.data["step"] for e in events if e.type == "metrics" and
                       "train_loss" in e.data)
        summary = json.loads((jobs_dir / "runs" / job.id / "summary.json").read_text())
        assert steps == sorted(set(steps)) and steps[-1] == summary["steps"]  # each once
        assert done.fine_tuned_model in [m.id for m in c.models.list()]
        answer = c.chat.completions.create(model=done.fine_tuned_model, max_tokens=8,
                                           messages=[{"role": "user",
                                                      "content": "repeat: the cat"}])
        assert answer.model == done.fine_tuned_model
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_files_pagination_cancel_bad_lines_and_idempotency(tiny_llama, chat_file, tmp_path):
    proc, url, _ = start(tmp_path / "jobs", tiny_llama)
    try:
        c = client(url)
        good = c.files.create(file=chat_file.open("rb"), purpose="fine-tune")
        bad_path = tmp_path / "bad.jsonl"
        lines = chat_file.read_text().splitlines()
        bad_path.write_text("\n".join(lines[:2] + ['{"messages": [oops'] + lines[3:]) + "\n")
        bad = c.files.create(file=bad_path.open("rb"), purpose="fine-tune")
        assert c.files.retrieve(good.id).bytes == chat_file.stat().st_size
        assert c.files.content(good.id).read() == chat_file.read_bytes()
        assert {f.id for f in c.files.list()} == {good.id, bad.id}

        failing = c.fine_tuning.jobs.create(model="tiny", training_file=bad.id)
        failed = wait_for(lambda: (j := c.fine_tuning.jobs.retrieve(failing.id)).status
                          == "failed" and j)
        assert "bad.jsonl:3" in failed.error.message and failed.error.param == \
            "training_file"

        long = c.fine_tuning.jobs.create(model="tiny", training_file=good.id,
                                         hyperparameters={"n_epochs": 50})
        queued = c.fine_tuning.jobs.create(model="tiny", training_file=good.id)
        assert c.fine_tuning.jobs.cancel(queued.id).status == "cancelled"
        wait_for(lambda: c.fine_tuning.jobs.retrieve(long.id).status == "running")
        assert c.fine_tuning.jobs.cancel(long.id).status == "cancelled"
        time.sleep(2)
        assert c.fine_tuning.jobs.retrieve(long.id).status == "cancelled"
        with pytest.raises(openai.BadRequestError):
            c.fine_tuning.jobs.cancel(long.id)  # already over

        page = c.fine_tuning.jobs.list(limit=1)
        assert page.has_more and len(page.data) == 1
        assert [j.id for j in c.fine_tuning.jobs.list(limit=1)] == [queued.id, long.id,
                                                                    failing.id]

        with pytest.raises(openai.BadRequestError) as e:
            c.fine_tuning.jobs.create(model="nope", training_file=good.id)
        assert e.value.response.headers["x-should-retry"] == "false"
        with pytest.raises(openai.BadRequestError):
            c.fine_tuning.jobs.create(model="tiny", training_file="file-missing")
        key = {"Idempotency-Key": "same-request"}
        once = c.fine_tuning.jobs.create(model="tiny", training_file=bad.id,
                                         extra_headers=key)
        again = c.fine_tuning.jobs.create(model="tiny", training_file=bad.id,
                                          extra_headers=key)
        assert once.id == again.id
        assert c.files.delete(good.id).deleted
        with pytest.raises(openai.NotFoundError):
            c.files.retrieve(good.id)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_a_dpo_job_trains_on_openai_preference_pairs(tiny_llama, tmp_path):
    rows = []
    for r in chat_rows(120, seed=3):
        question, answer = (m["content"] for m in r["messages"])
        rows.append({"input": {"messages": [{"role": "user", "content": question}]},
                     "preferred_output": [{"role": "assistant", "content": answer}],
                     "non_preferred_output": [{"role": "assistant",
                                               "content": " ".join(answer.split()[::-1])}]})
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    jobs_dir = tmp_path / "jobs"
    proc, url, log = start(jobs_dir, tiny_llama)
    try:
        c = client(url)
        f = c.files.create(file=path.open("rb"), purpose="fine-tune")
        job = c.fine_tuning.jobs.create(model="tiny", training_file=f.id, method={
            "type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1}}})
        done = wait_for(lambda: (j := c.fine_tuning.jobs.retrieve(job.id)).status
                        not in ("validating_files", "queued", "running") and j)
        assert done.status == "succeeded", (done.error, "".join(log))
        assert done.method.type == "dpo" and done.method.dpo.hyperparameters.beta == 0.2
        config = (jobs_dir / "runs" / job.id / "config.yaml").read_text()
        assert "task: dpo" in config and "beta: 0.2" in config
        assert any(e.type == "metrics" for e in c.fine_tuning.jobs.list_events(job.id))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
