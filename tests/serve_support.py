"""What the serving tests share: the runs a server holds, and the server itself on a
loopback port in this process."""
import contextlib
import json
import socket
import threading
import time

import openai
import pytest
import uvicorn

from lmtune.cli import main
from lmtune.serve.app import Limits, build_app
from lmtune.serve.batcher import Batcher
from lmtune.serve.command import start_jobs
from lmtune.serve.models import load_served
from tests.conftest import chat_rows

FP32 = ["--quiet", "train.precision=fp32", "train.threads=1", "train.min_steps=0"]


@pytest.fixture(scope="session")
def runs(tiny_llama, tiny_bert, tiny_t5, sentiment_csv, chat_jsonl, pairs_jsonl,
         tmp_path_factory):
    """A tiny Llama taught to repeat words back, two LoRA runs on the tiny Llama (different
    seeds: different adapters), a classifier and a tiny T5 trained on source/target pairs."""
    d = tmp_path_factory.mktemp("serve")
    data = d / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(400)))
    assert main(["train", *FP32, "task=sft", f"model={tiny_llama}", f"data.train={data}",
                 "train.lr=3e-3", "train.epochs=20", "train.batch_size=16",
                 "train.warmup=0.05",
                 f"output_dir={d / 'sft'}"]) == 0
    for name, seed in (("lora_a", 1), ("lora_b", 2)):
        assert main(["train", *FP32, "task=sft", f"model={tiny_llama}", "method=lora",
                     f"data.train={chat_jsonl}", "train.lr=5e-2", "train.max_steps=4",
                     f"seed={seed}", f"output_dir={d / name}"]) == 0
    assert main(["train", *FP32, f"model={tiny_bert}", f"data.train={sentiment_csv}",
                 "train.max_steps=4", f"output_dir={d / 'clf'}"]) == 0
    assert main(["train", *FP32, "task=seq2seq", f"model={tiny_t5}", f"data.train={pairs_jsonl}",
                 "train.batch_size=8", "train.epochs=8", "train.lr=1e-2",
                 f"output_dir={d / 's2s'}"]) == 0
    return d


@pytest.fixture(scope="session")
def served(runs, tiny_llama):
    return load_served([f"base={tiny_llama}", str(runs / "sft"), str(runs / "lora_a"),
                        str(runs / "lora_b"), str(runs / "clf"), str(runs / "s2s")],
                       precision="fp32", log=lambda m: None)


@contextlib.contextmanager
def serving(served, limits=None, api_key=None, jobs_dir=None, **batching):
    """The app on an ephemeral loopback port, in this process: (base URL, batcher). With
    `jobs_dir`, the fine-tuning-jobs API too."""
    batcher = Batcher(**batching)
    jobs = start_jobs(jobs_dir, served, "fp32", 5) if jobs_dir else None
    app = build_app(served, batcher, limits or Limits(max_tokens=64), api_key, jobs)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1", batcher
    finally:
        server.should_exit = True
        thread.join(10)
        if jobs is not None:
            jobs.runner.close()
        batcher.close()


def client(url, key="unused"):
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0,
                         _strict_response_validation=True)
