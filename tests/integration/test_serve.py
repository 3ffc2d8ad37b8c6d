"""`lmtune serve`, driven by the official `openai` client in strict mode (every response is
validated against the client's own types): models, chat (plain and streamed, equal),
completions, classify, stop strings, seeds, every error path, batching across concurrent
callers, and the command itself."""
import json
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from lmtune.data.formats import Message
from lmtune.infer.generate import Generator
from lmtune.infer.predict import Predictor
from tests.serve_support import client, runs, served, serving  # noqa: F401 - fixtures


@pytest.fixture(scope="module")
def api(served):
    with serving(served) as (url, batcher):
        yield client(url), url, batcher


CHAT = [{"role": "user", "content": "repeat: the cat sat"}]


def test_models_are_listed_and_retrieved(api):
    c, _, _ = api
    ids = [m.id for m in c.models.list()]
    assert ids == ["base", "sft", "lora_a", "lora_b", "clf", "s2s"]
    card = c.models.retrieve("lora_a")
    assert card.id == "lora_a" and card.owned_by == "lmtune"
    assert card.model_extra["task"] == "sft"
    assert c.models.retrieve("clf").model_extra["endpoints"] == ["/v1/classify"]
    with pytest.raises(openai.NotFoundError) as e:
        c.models.retrieve("nope")
    assert e.value.body["code"] == "model_not_found"


def test_lora_runs_on_one_base_share_it_and_answer_as_they_would_alone(served, runs):
    """Both adapters live in one peft model (one copy of the base) and each answers as its
    run does when loaded alone (merged)."""
    assert served["lora_a"].decoder.model is served["lora_b"].decoder.model
    conv = [Message("user", "repeat: dog ran to park")]
    for name in ("lora_a", "lora_b", "lora_a"):  # switching back and forth
        s = served[name]
        s.activate()
        alone = Generator(runs / name, precision="fp32").generate([conv], _settings(12))[0]
        ids = s.decoder.encode_prompt(conv)
        assert s.decoder.tokenizer.decode(_greedy(s, ids), skip_special_tokens=True) \
            .strip() == alone
    a, b = (_logits(served[n], served[n].decoder.encode_prompt(conv)) for n in
            ("lora_a", "lora_b"))
    assert (a - b).abs().max() > 1e-3  # two different adapters really are in use


def _logits(s, ids):
    import torch

    s.activate()
    with torch.inference_mode():
        return s.decoder.model(input_ids=torch.tensor([ids])).logits


def _greedy(s, ids):
    import torch

    s.activate()
    model = s.decoder.model
    with torch.inference_mode():
        out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=12,
                             do_sample=False, eos_token_id=s.decoder.stop_ids,
                             pad_token_id=s.decoder.stop_ids[0])
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("model", ["sft", "lora_b"])
def test_chat_streamed_equals_plain_and_counts_usage(api, served, model):
    c, _, _ = api
    whole = c.chat.completions.create(model=model, messages=CHAT, max_tokens=20)
    stream = c.chat.completions.create(model=model, messages=CHAT, max_tokens=20,
                                       stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [ch.choices[0].delta.content or "" for ch in chunks if ch.choices]
    assert "".join(pieces) == whole.choices[0].message.content
    assert len([p for p in pieces if p]) > 1  # really streamed
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finals[-1] == whole.choices[0].finish_reason and set(finals[:-1]) == {None}
    usage = whole.usage
    conv = [Message("user", CHAT[0]["content"])]
    assert usage.prompt_tokens == len(served[model].decoder.encode_prompt(conv))
    assert 0 < usage.completion_tokens <= 20
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_an_encoder_decoder_answers_chat_and_completions(api, runs):
    """The source goes to the encoder; answers are what `lmtune generate` gives."""
    c, _, _ = api
    want = Generator(runs / "s2s", precision="fp32").generate(
        [[Message("user", "the cat sat")]], _settings(6))[0]
    assert want
    chat = c.chat.completions.create(model="s2s", max_tokens=6,
                                     messages=[{"role": "user", "content": "the cat sat"}])
    assert chat.choices[0].message.content == want
    text = c.completions.create(model="s2s", prompt="the cat sat", max_tokens=6)
    assert text.choices[0].text == want
    stream = c.chat.completions.create(model="s2s", max_tokens=6, stream=True, messages=[
        {"role": "user", "content": "the cat sat"}])
    assert "".join(ch.choices[0].delta.content or "" for ch in stream) == want


def test_chat_answers_as_lmtune_generate_does(api, runs):
    c, _, _ = api
    gen = Generator(runs / "sft", precision="fp32")
    conv = [Message("user", "repeat: hello world")]
    got = c.chat.completions.create(model="sft", messages=[
        {"role": "user", "content": "repeat: hello world"}], max_tokens=16)
    want = gen.generate([conv], _settings(16))[0]
    assert got.choices[0].message.content == want


def _settings(max_new_tokens, **kw):
    from lmtune.config import GenerateConfig

    return GenerateConfig(max_new_tokens=max_new_tokens, **kw)


def test_sse_wire_format(api):
    """`data: {json}` events, the usage-only chunk has `choices: []`, and the stream ends with
    `data: [DONE]`."""
    _, url, _ = api
    r = httpx.post(f"{url}/chat/completions", json={
        "model": "sft", "messages": CHAT, "max_tokens": 5, "stream": True,
        "stream_options": {"include_usage": True}}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    usage_chunk = json.loads(events[-2][6:])
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] <= 5
    assert all(json.loads(e[6:])["object"] == "chat.completion.chunk" for e in events[:-1])


def test_completions_stop_length_n_and_prompt_lists(api):
    """A plain prompt (no template is applied: here it is written out by hand)."""
    c, _, _ = api
    prompt = "### User:\nrepeat: the cat sat on the mat\n### Assistant:\n"

    def complete(**kw):
        return c.completions.create(model="sft", **{"prompt": prompt, "max_tokens": 30, **kw})

    whole = complete()
    text = whole.choices[0].text
    assert whole.choices[0].finish_reason == "stop" and len(text.split()) >= 3  # end of turn
    short = complete(max_tokens=2)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2
    assert text.startswith(short.choices[0].text)
    stop = text.split()[1]
    stopped = complete(stop=["zzz", stop])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[:text.find(stop)].strip()
    second = "### User:\nrepeat: dog\n### Assistant:\n"
    many = complete(prompt=[prompt, second], n=2)
    assert [ch.index for ch in many.choices] == [0, 1, 2, 3]
    assert many.choices[0].text == many.choices[1].text == text
    assert many.choices[2].text == many.choices[3].text == complete(prompt=second) \
        .choices[0].text
    # each prompt counted once, each answer's tokens counted
    assert many.usage.prompt_tokens == whole.usage.prompt_tokens + \
        complete(prompt=second).usage.prompt_tokens
    # Streamed completions carry `finish_reason: null` until the last chunk, as OpenAI's own
    # do; the client's `Completion` type requires a reason, so strict validation would reject
    # OpenAI's stream too. This one call goes without it.
    _, url, _ = api
    lenient = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    streamed = list(lenient.completions.create(model="sft", prompt=prompt, max_tokens=30,
                                               stream=True))
    assert "".join(ch.choices[0].text for ch in streamed) == text
    assert [ch.choices[0].finish_reason for ch in streamed][-2:] == [None, "stop"]


def test_a_seed_decides_sampled_answers(api):
    c, _, _ = api

    def sample(seed):
        return c.chat.completions.create(model="sft", messages=CHAT, max_tokens=12,
                                         temperature=1.0, seed=seed).choices[0].message.content

    assert sample(7) == sample(7)
    assert len({sample(s) for s in range(4)}) > 1
    # a temperature near 0 is greedy decoding (dividing by it would overflow the logits)
    greedy = c.chat.completions.create(model="sft", messages=CHAT, max_tokens=12)
    tiny = c.chat.completions.create(model="sft", messages=CHAT, max_tokens=12,
                                     temperature=1e-30)
    assert tiny.choices[0].message.content == greedy.choices[0].message.content


def test_classify_gives_the_numbers_predict_gives(api, runs):
    c, _, _ = api
    texts = ["a great and moving film", "dull and tedious", "the plot"]
    got = c.post("/classify", body={"model": "clf", "input": texts}, cast_to=httpx.Response)
    data = got.json()["data"]
    want = Predictor(runs / "clf", precision="fp32").predict(texts)
    assert [d["label"] for d in data] == [w["label"] for w in want]
    for d, w in zip(data, want):
        assert d["scores"] == pytest.approx(w["scores"], abs=1e-6)


def test_unknown_parameters_are_ignored(api):
    c, _, _ = api
    r = c.chat.completions.create(model="sft", messages=CHAT, max_tokens=3, user="u1",
                                  frequency_penalty=0.0,
                                  extra_body={"not_a_parameter": {"x": 1}})
    assert r.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("kwargs, status, param", [
    (dict(model="nope"), 404, "model"),
    (dict(model="clf"), 400, "model"),
    (dict(max_tokens=65), 400, "max_tokens"),
    (dict(max_tokens=0), 400, "max_tokens"),
    (dict(n=9), 400, "n"),
    (dict(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    (dict(temperature=3), 400, "temperature"),
    (dict(messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}]), 400,
     "messages[0].role"),
    (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:,"}}]}]), 400, "messages[0].content"),
    (dict(messages=[{"role": "user", "content": "the cat " * 300}]), 400, "messages"),
    (dict(messages=[]), 400, "messages"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_requests_get_openai_errors_before_any_stream(api, kwargs, status, param, stream):
    c, _, _ = api
    args = dict(model="sft", messages=CHAT, max_tokens=4, **({"stream": True} if stream
                                                               else {}))
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(**{**args, **kwargs})
    assert e.value.status_code == status
    error = e.value.body
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param


def test_routing_json_and_size_errors_have_openai_shape(api):
    _, url, _ = api
    root = url.removesuffix("/v1")
    cases = [httpx.get(f"{url}/nothing"), httpx.put(f"{url}/chat/completions"),
             httpx.post(f"{url}/chat/completions", content=b"{not json",
                        headers={"content-type": "application/json"}),
             httpx.post(f"{url}/chat/completions", content=b"[1, 2]",
                        headers={"content-type": "application/json"}),
             httpx.post(f"{url}/completions", json={"model": "base", "prompt": "x" * (1 << 20)}),
             httpx.get(f"{root}/v1")]
    assert [r.status_code for r in cases] == [404, 405, 400, 400, 400, 404]
    for r in cases:
        body = r.json()
        assert set(body) == {"error"}
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert cases[2].json()["error"]["code"] == "invalid_json"
    assert "limit" in cases[4].json()["error"]["message"]


def test_api_key_is_required_when_set(served):
    with serving(served, api_key="s3cret") as (url, _):
        with pytest.raises(openai.AuthenticationError) as e:
            client(url, "wrong").models.list()
        assert e.value.body["code"] == "invalid_api_key"
        assert httpx.get(f"{url}/models").status_code == 401
        assert [m.id for m in client(url, "s3cret").models.list()][0] == "base"
        assert httpx.get(url.removesuffix("/v1") + "/health").status_code == 200


def test_concurrent_callers_are_batched_and_answered_as_alone(api):
    c, _, batcher = api
    prompts = [f"repeat: {w} {v}" for w in ("cat", "dog", "mat", "park") for v in
               ("sat", "ran", "to")]

    def ask(p):
        return c.chat.completions.create(model="lora_a", max_tokens=10, messages=[
            {"role": "user", "content": p}]).choices[0].message.content

    alone = [ask(p) for p in prompts]
    before = len(batcher.batch_sizes)
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(ask, prompts))
    assert together == alone
    sizes = batcher.batch_sizes[before:]
    assert sum(sizes) == len(prompts) and max(sizes) > 1, sizes


def test_a_full_queue_answers_429_with_retry_after(served):
    gate = threading.Event()
    with serving(served, max_waiting=1) as (url, batcher):
        run = batcher._run
        batcher._run = lambda batch: (gate.wait(30), run(batch))
        c = client(url)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(c.completions.create, model="sft", prompt="a", max_tokens=2)
            while batcher.waiting or not first.running():  # the worker holds it
                time.sleep(0.01)
            time.sleep(0.05)
            second = pool.submit(c.completions.create, model="sft", prompt="b", max_tokens=2)
            while not batcher.waiting:
                time.sleep(0.01)
            with pytest.raises(openai.RateLimitError) as e:
                c.completions.create(model="sft", prompt="c", max_tokens=2)
            gate.set()
            assert first.result().choices and second.result().choices
        assert int(e.value.response.headers["retry-after"]) >= 1
        assert e.value.body["code"] == "rate_limit_exceeded"


def test_serve_command_starts_answers_and_stops(tiny_llama, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "lmtune", "serve", f"tiny={tiny_llama}",
                             "--port", "0", "--precision", "fp32", "--threads", "1"],
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if line.startswith("serving"):
                break
        url = line.split(" at ")[1].split()[0]
        r = client(url).chat.completions.create(model="tiny", messages=CHAT, max_tokens=3)
        assert r.model == "tiny" and r.usage.completion_tokens <= 3
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    bad = subprocess.run([sys.executable, "-m", "lmtune", "serve", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")
