"""Fine-tuning jobs, run locally: each job is a `lmtune train` run in its own run dir under
the jobs dir, in a child process, one job at a time, oldest first.

    validating_files → queued → running → succeeded | failed | cancelled

A job's files are read with lmtune's own readers first (a bad line fails the job, naming
it). Training checkpoints every `checkpoint_every` steps. The child is told to stop
(SIGTERM: it checkpoints and exits) when the server dies, even by SIGKILL; a server started
again resumes a running job from its newest checkpoint (`lmtune resume`, exact), waiting
for the old child to let go of the run dir first (a lock the child holds). Each new row of
the run's metrics.jsonl becomes an event; a job that succeeds is served under its
`fine_tuned_model` name at once.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from lmtune.errors import LmtuneError
from lmtune.serve.store import Store

ACTIVE = ("validating_files", "queued", "running")
TASKS = {"supervised": "sft", "dpo": "dpo"}
# hyperparameters → lmtune's config keys
KEYS = {"n_epochs": "train.epochs", "batch_size": "train.batch_size", "beta": "dpo.beta"}


def method_of(req: dict) -> tuple[str, dict]:
    """A job request's method ("supervised" or "dpo") and its hyperparameters: those given
    at the top level (the API's older form), overridden by the method's own."""
    method = req.get("method") or {"type": "supervised"}
    kind = method.get("type", "supervised")
    return kind, {**(req.get("hyperparameters") or {}),
                  **((method.get(kind) or {}).get("hyperparameters") or {})}


def train_args(job: dict, files: Callable[[str], dict | None], base: str, run_dir: Path,
               checkpoint_every: int) -> list[str]:
    """The `lmtune train` command line for a job's request."""
    from lmtune.methods import get_method

    req = job["request"]
    kind, hyper = method_of(req)
    args = [f"task={TASKS[kind]}", f"model={base}", "method=lora",
            f"data.train={files(req['training_file'])['path']}", f"output_dir={run_dir}",
            f"seed={req['seed']}", f"train.checkpoint_every={checkpoint_every}",
            "train.keep_checkpoints=2", "overwrite=true"]
    if req.get("validation_file"):
        args.append(f"data.validation={files(req['validation_file'])['path']}")
    for key, value in hyper.items():
        if value == "auto" or value is None:
            continue
        if key == "learning_rate_multiplier":
            args.append(f"train.lr={get_method('lora').default_lr * float(value):g}")
        elif key in KEYS:
            args.append(f"{KEYS[key]}={value}")
    return args


class Runner:
    """The worker thread: takes active jobs in order and runs them to an end."""

    def __init__(self, store: Store, jobs_dir: Path, base_of: Callable[[str], str],
                 on_success: Callable[[dict, Path], None], checkpoint_every: int = 25):
        self.store, self.jobs_dir, self.base_of = store, jobs_dir, base_of
        self.on_success, self.checkpoint_every = on_success, checkpoint_every
        self.wake = threading.Event()
        self.closed = False
        self.proc: subprocess.Popen | None = None
        self.current: str | None = None
        self.thread = threading.Thread(target=self._loop, name="lmtune-jobs", daemon=True)
        self.thread.start()

    def run_dir(self, job_id: str) -> Path:
        return self.jobs_dir / "runs" / job_id

    def notify(self) -> None:
        self.wake.set()

    def cancel(self, job_id: str) -> None:
        """Stop the job's training if it is the one running (it checkpoints and exits)."""
        if self.current == job_id and self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)

    def close(self) -> None:
        self.closed = True
        self.wake.set()
        if self.proc is not None:  # the child checkpoints; a restarted server resumes it
            self.proc.send_signal(signal.SIGTERM)
        self.thread.join(timeout=60)

    def _loop(self) -> None:
        while not self.closed:
            active = self.store.jobs(ACTIVE)
            if not active:
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            job = active[-1]  # the oldest
            try:
                self._advance(job)
            except Exception as e:  # noqa: BLE001 - the job fails, the server goes on
                self._fail(job["id"], "internal_error", f"{type(e).__name__}: {e}")

    def _advance(self, job: dict) -> None:
        if job["status"] == "validating_files":
            if error := self._validate(job):
                return self._fail(job["id"], *error)
            if self.store.update_job(job["id"], ("validating_files",), status="queued"):
                self.store.add_event(job["id"], "Files validated, job queued")
            return
        running = self.store.update_job(job["id"], ("queued", "running"), status="running")
        if running:  # else cancelled meanwhile
            self._train(running)

    def _validate(self, job: dict) -> tuple[str, str, str] | None:
        from lmtune.data.readers import read_jsonl

        for param in ("training_file", "validation_file"):
            file_id = job["request"].get(param)
            if not file_id:
                continue
            record = self.store.file(file_id)
            if record is None:
                return (f"invalid_{param}", f"{param} {file_id} was deleted", param)
            try:
                path = Path(record["path"])
                read_jsonl(path.read_text(encoding="utf-8"), record["filename"])
            except (LmtuneError, UnicodeDecodeError) as e:
                return (f"invalid_{param}", f"{e}", param)
        return None

    def _fail(self, job_id: str, code: str, message: str, param: str | None = None) -> None:
        if self.store.update_job(job_id, ACTIVE, status="failed", finished_at=int(time.time()),
                                 error={"code": code, "message": message, "param": param}):
            self.store.add_event(job_id, f"Job failed: {message}", level="error")

    def _train(self, job: dict) -> None:
        run_dir = self.run_dir(job["id"])
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        lock = _hold(run_dir.parent / f"{job['id']}.lock", lambda: self.closed)
        if lock is None:
            return
        resuming = any((run_dir / "checkpoints").glob("*")) and \
            (run_dir / "config.yaml").exists()
        if resuming:
            command = ["resume", str(run_dir)]
            self.store.add_event(job["id"], "Resuming training from its last checkpoint")
        else:
            command = ["train", *train_args(job, self.store.file, self.base_of(
                job["request"]["model"]), run_dir, self.checkpoint_every)]
            self.store.add_event(job["id"], "Training started")
        log = open(run_dir.parent / f"{job['id']}.log", "a", encoding="utf-8")
        self.current = job["id"]
        self.proc = subprocess.Popen([sys.executable, "-m", "lmtune", *command, "--quiet"],
                                     stdout=log, stderr=subprocess.STDOUT, pass_fds=(lock,),
                                     preexec_fn=_stop_with_parent)
        os.close(lock)  # the child's copy holds the lock until it exits
        code = self._watch(job["id"], run_dir)
        self.proc, self.current = None, None
        log.close()
        self._finish(job["id"], run_dir, code)

    def _watch(self, job_id: str, run_dir: Path) -> int:
        from lmtune.serve.events import metrics_events

        seen = 0
        while (code := self.proc.poll()) is None:
            time.sleep(0.5)
            seen = metrics_events(self.store, job_id, run_dir, seen)
        metrics_events(self.store, job_id, run_dir, seen)
        return code

    def _finish(self, job_id: str, run_dir: Path, code: int) -> None:
        job = self.store.job(job_id)
        if job["status"] == "cancelled" or self.closed:
            return  # cancelled: said already; closing: resumed by the next server
        if code != 0:
            lines = (run_dir.parent / f"{job_id}.log").read_text(errors="replace").splitlines()
            errors = [x[len("error: "):] for x in lines if x.startswith("error: ")]
            return self._fail(job_id, "training_failed", errors[-1] if errors else
                              f"training exited with code {code}")
        from lmtune.serve.events import job_model_name, trained_tokens

        job["fine_tuned_model"] = job_model_name(job)
        self.on_success(job, run_dir)  # served before the job says it succeeded
        if self.store.update_job(job_id, ("running",), status="succeeded",
                                 finished_at=int(time.time()),
                                 trained_tokens=trained_tokens(run_dir),
                                 fine_tuned_model=job["fine_tuned_model"]):
            self.store.add_event(job_id, "The job has successfully completed")


def _hold(path: Path, give_up: Callable[[], bool]) -> int | None:
    """An open fd holding an exclusive lock on `path`: waits while an earlier server's
    child still has it (it is checkpointing). None if `give_up()` first."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if give_up():
                os.close(fd)
                return None
            time.sleep(0.5)


def _stop_with_parent() -> None:
    """In the child, before exec: SIGTERM when the server dies (Linux), so that a killed
    server's training checkpoints and stops instead of running on unwatched."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
