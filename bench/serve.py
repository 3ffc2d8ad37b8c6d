"""A bounded load test of `lmtune serve` on loopback, beside plain transformers.

    .venv/bin/python bench/serve.py                      # 32 clients, 64 requests, SmolLM2
    .venv/bin/python bench/serve.py --clients 8 --requests 16 --max-tokens 8

Three set-ups answer the same chat requests (Rotten Tomatoes snippets to summarize in a few
words, greedy, at most `--max-tokens` new tokens each):

- `lmtune serve smollm2` (a fresh process), `--clients` concurrent callers through the
  official openai client, each sending its share of `--requests` one after another;
- the same with `--max-batch 1`: the server with its batching disabled;
- plain transformers, one request at a time: `apply_chat_template` + `generate` in this
  process, as a script serving requests in turn would. Its latency is each request's own
  time plus the time it would have waited behind the others (the requests all arrive at
  once, as the concurrent clients send them).

Each prints requests/s, generated tokens/s, p50/p99 latency and errors; the last line holds
the ratios as key=value pairs. Runs one set-up at a time (never two CPU-heavy processes at
once).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def prompts(n: int) -> list[str]:
    from lmtune.data.builtin import rotten_tomatoes

    texts = rotten_tomatoes(0)["test"].column("text")
    return [f"Summarize this review in a few words: {t}" for t in texts[:n]]


def start_server(max_batch: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "lmtune", "serve", "smollm2", "--port", "0",
                             "--max-batch", str(max_batch), "--max-waiting", "1024"],
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if line.startswith("serving"):
            return proc, line.split(" at ")[1].split()[0]
    sys.exit(f"the server did not start (exit {proc.wait()})")


def load(url: str, texts: list[str], clients: int, max_tokens: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=600)
    client.chat.completions.create(model="smollm2", max_tokens=2, messages=[
        {"role": "user", "content": "hi"}])  # warm-up
    latencies, tokens, errors = [], [], []

    def ask(text: str) -> None:
        began = time.perf_counter()
        try:
            r = client.chat.completions.create(model="smollm2", max_tokens=max_tokens,
                                               messages=[{"role": "user", "content": text}])
            tokens.append(r.usage.completion_tokens)
            latencies.append(time.perf_counter() - began)
        except Exception as e:  # noqa: BLE001 - counted, and the first one shown
            errors.append(f"{type(e).__name__}: {e}")

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(ask, texts))
    return summary(time.perf_counter() - began, latencies, tokens, errors)


def plain_transformers(texts: list[str], max_tokens: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from common import as_lmtune_command
    from lmtune import runtime
    from lmtune.models.load import resolve_model

    as_lmtune_command()  # the threads and oneDNN settings the server runs with
    path = resolve_model("smollm2")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    precision = runtime.resolve_precision("auto")
    latencies, tokens, clock = [], [], 0.0
    for i, text in enumerate([texts[0]] + texts):  # the first is a warm-up
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                            add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
        began = time.perf_counter()
        with torch.inference_mode(), runtime.autocast(precision):
            out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)
        took = time.perf_counter() - began
        if i:
            clock += took  # every request arrived at 0 and waited for those before it
            latencies.append(clock)
            tokens.append(out.shape[1] - ids["input_ids"].shape[1])
    return summary(clock, latencies, tokens, [])


def summary(seconds: float, latencies: list[float], tokens: list[int],
            errors: list[str]) -> dict:
    ordered = sorted(latencies) or [float("nan")]
    return {"seconds": seconds, "requests_per_s": len(latencies) / seconds,
            "tokens_per_s": sum(tokens) / seconds, "p50_s": statistics.median(ordered),
            "p99_s": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
            "errors": len(errors), "first_error": errors[0] if errors else ""}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=16, help="the batched server's setting")
    args = ap.parse_args()
    from lmtune.runtime import environment

    texts = prompts(args.requests)
    env = environment()
    print(f"# {env.get('cpu')}, {env.get('cores')} cores, bf16 {env.get('bf16')}, torch "
          f"{env.get('torch')}; {args.clients} clients, {len(texts)} requests, max_tokens "
          f"{args.max_tokens}", flush=True)
    results = {}
    for name, max_batch in (("lmtune serve", args.max_batch),
                            ("lmtune serve --max-batch 1", 1)):
        proc, url = start_server(max_batch)
        try:
            results[name] = load(url, texts, args.clients, args.max_tokens)
        finally:
            proc.terminate()
            proc.wait(60)
        print_row(name, results[name])
    results["transformers, one at a time"] = plain_transformers(texts, args.max_tokens)
    print_row("transformers, one at a time", results["transformers, one at a time"])
    batched = results["lmtune serve"]["requests_per_s"]
    print(f"vs_unbatched={batched / results['lmtune serve --max-batch 1']['requests_per_s']:.2f}"
          f" vs_transformers="
          f"{batched / results['transformers, one at a time']['requests_per_s']:.2f} "
          f"errors={sum(r['errors'] for r in results.values())}")


def print_row(name: str, r: dict) -> None:
    print(f"| {name} | {r['requests_per_s']:.2f} req/s | {r['tokens_per_s']:.1f} tok/s | "
          f"p50 {r['p50_s']:.2f} s | p99 {r['p99_s']:.2f} s | {r['errors']} errors |"
          + (f" first: {r['first_error']}" if r["errors"] else ""), flush=True)


if __name__ == "__main__":
    main()
