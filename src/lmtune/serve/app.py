"""The OpenAI-compatible HTTP API (FastAPI): models, chat completions, completions, and
lmtune's own `/v1/classify`.

Every request is checked before any work starts (a stream too: a bad request gets a JSON
error, never a half-sent stream). Generation runs in the batcher's thread; its events come
back to the request's coroutine through an asyncio queue.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from lmtune.data.formats import Message
from lmtune.infer.decoder import Answer
from lmtune.serve.batcher import Batcher, Busy, Row, Work
from lmtune.serve.http import ApiError, Guard, install_error_handlers
from lmtune.serve.models import Served
from lmtune.serve.schemas import (MAX_STOPS, AssistantMessage, ChatChoice, ChatChunk,
                                  ChatCompletion, ChatMessage, ChatRequest, Classification,
                                  ClassifyRequest, ClassifyResponse, Completion,
                                  CompletionRequest, Delta, ErrorResponse, ModelCard,
                                  ModelList, Sampling, TextChoice, Usage, ChunkChoice)

GENERATE = ["/v1/chat/completions", "/v1/completions"]
CLASSIFY = ["/v1/classify"]


@dataclass
class Limits:
    """What one request may ask for; past a limit the answer is 400 (the queue: 429)."""

    max_tokens: int = 1024  # answer tokens per choice
    max_prompt_tokens: int = 4096
    max_n: int = 8
    max_answers: int = 64  # prompts × n in one request
    max_inputs: int = 256  # texts in one classify request
    max_body: int = 1 << 20  # bytes
    max_upload: int = 512 << 20  # bytes of one uploaded training file


class Channel:
    """Events from the batcher's thread, awaited by the request's coroutine."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()

    def emit(self, event: tuple) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the server is shutting down; nobody is listening
            pass

    async def get(self) -> tuple:
        event = await self.queue.get()
        if event[0] == "error":
            raise ApiError(500, f"generation failed: {event[1]}", type="server_error",
                           code="internal_error")
        return event


ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 429, 500)}


def build_app(served: dict[str, Served], batcher: Batcher, limits: Limits | None = None,
              api_key: str | None = None, jobs=None) -> FastAPI:
    """The API over `served` (a dict the jobs API adds fine-tuned models to); `jobs`: a
    `JobsApi` for the files and fine-tuning-jobs routes (else those answer 404)."""
    limits = limits or Limits()
    app = FastAPI(title="lmtune", summary="OpenAI-compatible API for models lmtune trained",
                  responses=ERRORS)
    install_error_handlers(app)
    app.add_middleware(Guard, api_key=api_key, max_body=limits.max_body,
                       max_upload=limits.max_upload)
    api = Api(served, batcher, limits)

    app.get("/health")(lambda: {"status": "ok"})
    app.get("/v1/models", response_model=ModelList)(api.models)
    app.get("/v1/models/{model_id:path}", response_model=ModelCard)(api.model)
    app.post("/v1/chat/completions", response_model=ChatCompletion,
             responses={200: {"content": {"text/event-stream": {}}}})(api.chat)
    app.post("/v1/completions", response_model=Completion,
             responses={200: {"content": {"text/event-stream": {}}}})(api.completions)
    app.post("/v1/classify", response_model=ClassifyResponse,
             description="lmtune's own endpoint (not in OpenAI's API): labels and scores "
             "from a classification run, the numbers `lmtune predict` gives.")(api.classify)
    if jobs is not None:
        jobs.install(app)
    return app


class Api:
    def __init__(self, served: dict[str, Served], batcher: Batcher, limits: Limits):
        self.served, self.batcher, self.limits = served, batcher, limits

    async def models(self) -> ModelList:
        # a list first: the jobs runner may add a model meanwhile
        return ModelList(data=[self._card(s) for s in list(self.served.values())])

    async def model(self, model_id: str) -> ModelCard:
        return self._card(self._find(model_id))

    def _card(self, s: Served) -> ModelCard:
        return ModelCard(id=s.name, created=s.created, task=s.task, root=s.root,
                         endpoints=GENERATE if s.decoder else CLASSIFY)

    def _find(self, name: str, endpoint: list[str] | None = None) -> Served:
        s = self.served.get(name)
        if s is None:
            raise ApiError(404, f"The model `{name}` does not exist; this server has: "
                           f"{', '.join(self.served)}", param="model", code="model_not_found")
        if endpoint is not None and (s.decoder is not None) != (endpoint is GENERATE):
            use = " or ".join(self._card(s).endpoints)
            raise ApiError(400, f"model `{name}` is a task={s.task} model: use {use}",
                           param="model", code="model_not_supported")
        return s

    async def chat(self, req: ChatRequest):
        s = self._find(req.model, GENERATE)
        conv = [_message(m, i) for i, m in enumerate(req.messages)]
        try:
            ids = s.decoder.encode_prompt(conv, drop_answer=False)
        except Exception as e:  # the chat template refused the conversation
            raise ApiError(400, f"messages: the model's chat template refused them: {e}",
                           param="messages") from None
        work, channel = self._submit(s, req, [ids], req.max_completion_tokens or
                                     req.max_tokens, "messages")
        head = _Head(f"chatcmpl-{uuid.uuid4().hex}", s.name)
        if req.stream:
            return _sse(self._chat_chunks(work, channel, head, req, len(ids)))
        texts, reasons, tokens = await _collect(work, channel)
        return ChatCompletion(**head.fields(), usage=_usage(len(ids), tokens), choices=[
            ChatChoice(index=i, message=AssistantMessage(content=t), finish_reason=r)
            for i, (t, r) in enumerate(zip(texts, reasons))])

    async def completions(self, req: CompletionRequest):
        s = self._find(req.model, GENERATE)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise ApiError(400, "prompt: give a string or a list of strings", param="prompt")
        rows = [s.decoder.encode_text(p) for p in prompts]
        if not all(rows):
            raise ApiError(400, "prompt: an empty prompt gives the model nothing to continue",
                           param="prompt")
        work, channel = self._submit(s, req, rows, req.max_tokens, "prompt")
        head = _Head(f"cmpl-{uuid.uuid4().hex}", s.name)
        prompt_tokens = sum(map(len, rows))
        if req.stream:
            return _sse(self._text_chunks(work, channel, head, req, prompt_tokens))
        texts, reasons, tokens = await _collect(work, channel)
        return Completion(**head.fields(), usage=_usage(prompt_tokens, tokens), choices=[
            TextChoice(index=i, text=t, finish_reason=r)
            for i, (t, r) in enumerate(zip(texts, reasons))])

    async def classify(self, req: ClassifyRequest) -> ClassifyResponse:
        s = self._find(req.model, CLASSIFY)
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not 0 < len(texts) <= self.limits.max_inputs:
            raise ApiError(400, f"input: give 1 to {self.limits.max_inputs} texts",
                           param="input")
        channel = Channel()
        self._queue(Work(s, channel.emit, texts=list(texts)))
        _, results = await channel.get()
        return ClassifyResponse(model=s.name, data=[Classification(index=i, **r)
                                                    for i, r in enumerate(results)])

    def _submit(self, s: Served, req: Sampling, prompts: list[list[int]],
                max_tokens: int | None, prompt_param: str) -> tuple[Work, Channel]:
        """Check the request against the limits and the model, then queue its answers."""
        lim, n = self.limits, req.n or 1
        if n > lim.max_n:
            raise ApiError(400, f"n: at most {lim.max_n} choices per request", param="n")
        if len(prompts) * n > lim.max_answers:
            raise ApiError(400, f"at most {lim.max_answers} answers per request (prompts × "
                           "n)", param=prompt_param)
        if req.stream_options is not None and not req.stream:
            raise ApiError(400, "stream_options: only allowed when stream is true",
                           param="stream_options")
        stops = req.stops()
        if len(stops) > MAX_STOPS:
            raise ApiError(400, f"stop: at most {MAX_STOPS} stop strings", param="stop")
        max_tokens = max_tokens or min(s.settings.max_new_tokens, lim.max_tokens)
        if max_tokens > lim.max_tokens:
            raise ApiError(400, f"max_tokens: at most {lim.max_tokens} on this server; got "
                           f"{max_tokens}", param="max_tokens")
        for ids in prompts:
            _check_length(len(ids), max_tokens, s.context, lim.max_prompt_tokens,
                          prompt_param)
        channel = Channel()
        temperature = s.settings.temperature if req.temperature is None else req.temperature
        rows = [Row(ids, max_tokens, p * n + j, Answer(s.decoder.tokenizer, stops),
                    channel.emit) for p, ids in enumerate(prompts) for j in range(n)]
        work = Work(s, channel.emit, rows=rows, temperature=temperature,
                    top_p=s.settings.top_p if req.top_p is None else req.top_p, seed=req.seed)
        self._queue(work)
        return work, channel

    def _queue(self, work: Work) -> None:
        try:
            self.batcher.submit(work)
        except Busy as e:
            raise ApiError(429, f"{e}", type="requests", code="rate_limit_exceeded",
                           headers={"Retry-After": str(e.retry_after)}) from None

    async def _chat_chunks(self, work: Work, channel: Channel, head: "_Head",
                           req: ChatRequest, prompt_tokens: int) -> AsyncIterator[str]:
        def chunk(choices, usage=None) -> str:
            return ChatChunk(**head.fields(), choices=choices, usage=usage).model_dump_json()

        for row in work.rows:
            yield chunk([ChunkChoice(index=row.index, delta=Delta(role="assistant",
                                                                  content=""))])
        async for event, tokens in _events(work, channel):
            if event[0] == "piece":
                yield chunk([ChunkChoice(index=event[1], delta=Delta(content=event[2]))])
            else:
                yield chunk([ChunkChoice(index=event[1], delta=Delta(),
                                         finish_reason=event[2])])
        if _wants_usage(req):
            yield chunk([], _usage(prompt_tokens, tokens))

    async def _text_chunks(self, work: Work, channel: Channel, head: "_Head",
                           req: CompletionRequest, prompt_tokens: int) -> AsyncIterator[str]:
        def chunk(choices, usage=None) -> str:
            return Completion(**head.fields(), choices=choices, usage=usage).model_dump_json()

        async for event, tokens in _events(work, channel):
            if event[0] == "piece":
                yield chunk([TextChoice(index=event[1], text=event[2])])
            else:
                yield chunk([TextChoice(index=event[1], text="", finish_reason=event[2])])
        if _wants_usage(req):
            yield chunk([], _usage(prompt_tokens, tokens))


@dataclass
class _Head:
    """What every chunk of one response repeats."""

    id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))

    def fields(self) -> dict:
        return {"id": self.id, "model": self.model, "created": self.created}


def _message(m: ChatMessage, i: int) -> Message:
    if m.role == "tool":
        raise ApiError(400, f"messages[{i}]: tool messages are not supported (this server "
                       "calls no tools)", param=f"messages[{i}].role")
    content = m.content or ""
    if not isinstance(content, str):
        if any(p.type != "text" for p in content):
            raise ApiError(400, f"messages[{i}].content: only text parts are supported",
                           param=f"messages[{i}].content")
        content = "".join(p.text or "" for p in content)
    return Message("system" if m.role == "developer" else m.role, content)


def _check_length(prompt: int, max_tokens: int, context: int | None, limit: int,
                  param: str) -> None:
    if prompt > limit:
        raise ApiError(400, f"{param}: {prompt} tokens; this server takes at most {limit}",
                       param=param, code="context_length_exceeded")
    if context and prompt + max_tokens > context:
        raise ApiError(400, f"This model's maximum context length is {context} tokens; the "
                       f"request asks for {prompt + max_tokens} ({prompt} in the {param}, "
                       f"{max_tokens} to generate)", param=param,
                       code="context_length_exceeded")


def _usage(prompt: int, completion: int) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion,
                 total_tokens=prompt + completion)


def _wants_usage(req: Sampling) -> bool:
    return bool(req.stream_options and req.stream_options.include_usage)


async def _events(work: Work, channel: Channel):
    """(event, completion tokens so far) until every answer of `work` is done."""
    left, tokens = len(work.rows), 0
    try:
        while left:
            event = await channel.get()
            if event[0] == "done":
                left, tokens = left - 1, tokens + event[3]
            yield event, tokens
    finally:
        work.cancelled = True  # the caller went away, or all is done: either way, stop


async def _collect(work: Work, channel: Channel) -> tuple[list[str], list[str], int]:
    texts, reasons = [""] * len(work.rows), [""] * len(work.rows)
    tokens = 0
    async for event, tokens in _events(work, channel):
        if event[0] == "piece":
            texts[event[1]] += event[2]
        else:
            reasons[event[1]] = event[2]
    return texts, reasons, tokens


def _sse(chunks: AsyncIterator[str]) -> StreamingResponse:
    async def lines():
        try:
            async for data in chunks:
                yield f"data: {data}\n\n"
        except ApiError as e:
            yield f"data: {json.dumps(e.body())}\n\n"
            return
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})
