"""`lmtune serve MODEL_OR_RUN ... [--host 127.0.0.1] [--port 8000] [--api-key KEY]`.

FastAPI and uvicorn are imported when the command runs, not when the CLI loads.
"""
from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

SERVE_HELP = """Serve models over an OpenAI-compatible HTTP API. Examples:
  lmtune serve runs/sft
  lmtune serve smollm2 chat=runs/sft_lora runs/sft_lora2 --port 8001
  lmtune serve runs/default --api-key $KEY     (a classifier: POST /v1/classify)

A run dir is served under its directory name, an alias under its own, NAME=PATH under NAME.
Endpoints: GET /v1/models, POST /v1/chat/completions, POST /v1/completions, POST
/v1/classify (lmtune's own), GET /health; the OpenAPI schema at /openapi.json."""


def add_serve_command(sub) -> None:
    s = sub.add_parser("serve", help="serve runs and models over an OpenAI-compatible HTTP API",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=SERVE_HELP)
    s.add_argument("models", nargs="+", metavar="MODEL_OR_RUN",
                   help="run dirs, HF model dirs, aliases or hub ids; NAME=PATH names one")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: "
                   "127.0.0.1, this machine only; 0.0.0.0 exposes it to the network)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every /v1 request")
    s.add_argument("--precision", default="auto", help="auto, fp32 or bf16 (auto: bf16 where "
                   "the hardware computes it natively)")
    s.add_argument("--max-batch", type=int, default=16, help="answers decoded together "
                   "(1: no batching)")
    s.add_argument("--max-waiting", type=int, default=64, help="requests that may wait; "
                   "more are answered 429 with Retry-After")
    s.add_argument("--max-tokens", type=int, default=1024, help="the most tokens one answer "
                   "may ask for")
    s.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core)")
    s.add_argument("--jobs-dir", help="serve OpenAI's files and fine-tuning-jobs API, keeping "
                   "its files, jobs (SQLite) and run dirs here; jobs survive a restart")
    s.add_argument("--checkpoint-every", type=int, default=25, help="fine-tuning jobs "
                   "checkpoint every N optimizer steps (a restarted server resumes there)")


def cmd_serve(args) -> int:
    from lmtune import runtime
    from lmtune.errors import LmtuneError

    for flag in ("port", "max_batch", "max_waiting", "max_tokens", "checkpoint_every"):
        if getattr(args, flag) < (0 if flag == "port" else 1):
            raise LmtuneError(f"serve: --{flag.replace('_', '-')} must be positive")
    sock = _bind(args.host, args.port)  # before loading: a taken port fails in a second
    with runtime.threads(args.threads):
        return run_server(args, sock)


def run_server(args, sock: socket.socket) -> int:
    import uvicorn

    from lmtune.serve.app import Limits, build_app
    from lmtune.serve.batcher import Batcher
    from lmtune.serve.models import load_served

    served = load_served(args.models, args.precision, log=_log)
    jobs = start_jobs(Path(args.jobs_dir), served, args.precision, args.checkpoint_every) \
        if args.jobs_dir else None
    batcher = Batcher(max_batch=args.max_batch, max_waiting=args.max_waiting)
    app = build_app(served, batcher, Limits(max_tokens=args.max_tokens), args.api_key, jobs)
    host, port = sock.getsockname()[:2]
    print(f"serving {', '.join(served)} at http://{host}:{port}/v1 (Ctrl-C stops)",
          file=sys.stderr, flush=True)
    server = _server(uvicorn.Config(app, log_level="warning", timeout_keep_alive=30))
    try:
        server.run(sockets=[sock])
    finally:
        if jobs is not None:
            jobs.runner.close()
        batcher.close()
    print("stopped", file=sys.stderr)
    return 0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def start_jobs(jobs_dir: Path, served: dict, precision: str, checkpoint_every: int):
    """The jobs API on `jobs_dir`: the models of jobs that succeeded are served again, and
    the runner takes up the jobs still active (a running one resumes)."""
    from lmtune.serve.jobs import Runner
    from lmtune.serve.jobs_api import JobsApi
    from lmtune.serve.models import load_served, training_base
    from lmtune.serve.store import Store

    store = Store(jobs_dir / "state.db")

    def serve_job(job: dict, run_dir: Path) -> None:
        name = job["fine_tuned_model"]
        served.update(load_served([f"{name}={run_dir}"], precision, log=_log))

    for job in store.jobs(("succeeded",)):
        run_dir = jobs_dir / "runs" / job["id"]
        if (run_dir / "model").is_dir():
            serve_job(job, run_dir)
        else:
            _log(f"warning: {run_dir}: job {job['id']}'s model is gone; not served")
    runner = Runner(store, jobs_dir, lambda name: training_base(served, name), serve_job,
                    checkpoint_every)
    return JobsApi(store, runner, jobs_dir, served)


def _server(config):
    import contextlib

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but a SIGTERM or Ctrl-C ends the command normally (exit 0,
        after in-flight requests finish) instead of being raised again at the end."""

        @contextlib.contextmanager
        def capture_signals(self):
            with super().capture_signals():
                yield
                self._captured_signals.clear()

    return Server(config)


def _bind(host: str, port: int) -> socket.socket:
    from lmtune.errors import LmtuneError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise LmtuneError(f"serve: cannot listen on {host}:{port} ({e.strerror})") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
