"""Batched, KV-cached generation from a loaded model, decoder-only or encoder-decoder, all at
once (`generate`) or token by token (`stream`).

    chat     the prompt is rendered by the tokenizer's chat template with the generation
             prompt, exactly as training rendered it before the assistant's answer; new
             tokens follow the prompt, so prompts are padded on the left
    text     the turns joined by blank lines (a plain causal LM)
    seq2seq  the source text goes to the encoder (padded on the right); the decoder starts
             from the model's decoder start token

The kind comes from the task the model was trained for (`Task.decode_kind`). Decoding stops
at EOS *and* at the template's end-of-turn token (they differ for many chat models), or at a
stop string. Used by `lmtune generate`/`eval`, by validation during training and by a server,
so what training measures is what inference does.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Callable, Iterator

import torch
from tqdm.auto import tqdm

from lmtune import runtime
from lmtune.config import GenerateConfig
from lmtune.data.formats import Conversation, Message
from lmtune.data.seq2seq import source_ids, source_text
from lmtune.data.templates import end_of_turn_ids, render

MIN_TEMPERATURE = 1e-4  # below it, decoding is greedy


class Decoder:
    def __init__(self, model, tokenizer, kind: str, settings: GenerateConfig | None = None,
                 precision: str = "fp32", max_source_length: int = 512):
        self.model, self.tokenizer, self.kind = model, tokenizer, kind
        self.settings = settings or GenerateConfig()
        self.precision = precision
        self.max_source_length = max_source_length
        self.stop_ids = sorted(end_of_turn_ids(tokenizer) | _config_eos(model))

    @property
    def chat(self) -> bool:
        return self.kind == "chat"

    def prompt_text(self, conv: Conversation, drop_answer: bool = True) -> str:
        """The prompt for `conv`, without its final assistant turn (the reference) unless
        `drop_answer` is false (a chat API's conversation: the model answers after it)."""
        if self.kind == "seq2seq":
            return source_text(conv)
        if drop_answer and conv and conv[-1].role == "assistant":
            conv = conv[:-1]
        if self.chat:
            return render(self.tokenizer, conv, generation_prompt=True)
        return "\n\n".join(m.content for m in conv)

    def generate(self, convs: list[Conversation], settings: GenerateConfig | None = None,
                 progress: bool = False, synced: bool = False,
                 before_batch: Callable[[], None] | None = None) -> list[str]:
        """Generated answers, in input order; prompts are batched by length. `synced`: the
        ranks of a multi-process run each generate their own prompts, with as many calls,
        and every rank runs forward passes until all have finished (HF `synced_gpus`: FSDP
        and ZeRO-3 forwards are collectives). `before_batch()` runs before each batch of
        prompts; it may raise to end the pass (a stop request)."""
        g = settings or self.settings
        prompts = [self.prompt_text(c) for c in convs]
        if self.kind == "seq2seq":
            ids = source_ids(self.tokenizer, prompts, self.max_source_length)[0]
        else:
            ids = self.tokenizer(prompts, add_special_tokens=not self.chat)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list[str] = [""] * len(ids)
        bar = tqdm(total=len(ids), desc="generate", unit="prompt", disable=not progress)
        was_training = self.model.training
        self.model.eval()
        try:
            for s in range(0, len(order), g.batch_size):
                idx = order[s:s + g.batch_size]
                if before_batch is not None:
                    before_batch()
                for i, text in zip(idx, self._batch([ids[i] for i in idx], g, synced)):
                    out[i] = text
                bar.update(len(idx))
        finally:
            self.model.train(was_training)
            bar.close()
        return out

    def _inputs(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(input_ids, attention_mask) [B, width] on the model's device, and the pad id.
        Decoder-only prompts are padded on the left, so new tokens follow every prompt
        directly; encoder inputs on the right."""
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else self.stop_ids[0]
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            at = slice(width - len(r), width) if self.left else slice(0, len(r))
            input_ids[b, at] = torch.tensor(r)
            attention[b, at] = 1
        device = next(self.model.parameters()).device
        return input_ids.to(device), attention.to(device), pad

    @property
    def left(self) -> bool:
        return self.kind != "seq2seq"

    def _kwargs(self, g: GenerateConfig, pad: int, synced: bool = False) -> dict:
        # A temperature near 0 is greedy decoding, its limit: dividing the logits by it
        # would overflow them to inf, and sampling from inf - inf fails.
        sample = g.temperature >= MIN_TEMPERATURE
        kwargs = dict(max_new_tokens=g.max_new_tokens, eos_token_id=self.stop_ids,
                      pad_token_id=pad, do_sample=sample)
        if sample:
            kwargs.update(temperature=g.temperature, top_p=g.top_p)
        if synced:
            kwargs.update(synced_gpus=True)
        if g.repetition_penalty != 1.0:
            kwargs.update(repetition_penalty=g.repetition_penalty)
        if g.stop:
            kwargs.update(stop_strings=list(g.stop), tokenizer=self.tokenizer)
        return kwargs

    def _batch(self, rows: list[list[int]], g: GenerateConfig, synced: bool = False
               ) -> list[str]:
        input_ids, attention, pad = self._inputs(rows)
        with torch.inference_mode(), runtime.autocast(self.precision):
            new = self.model.generate(input_ids=input_ids, attention_mask=attention,
                                      **self._kwargs(g, pad, synced))
        # an encoder-decoder returns only the decoder's tokens; a decoder-only model returns
        # the prompt too
        width = input_ids.shape[1]
        texts = self.tokenizer.batch_decode(new[:, width:] if self.left else new,
                                            skip_special_tokens=True)
        return [_cut(t, g.stop).strip() for t in texts]

    def encode_prompt(self, conv: Conversation, drop_answer: bool = True) -> list[int]:
        text = self.prompt_text(conv, drop_answer)
        if self.kind == "seq2seq":
            return source_ids(self.tokenizer, [text], self.max_source_length)[0][0]
        return self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"]

    def encode_text(self, text: str) -> list[int]:
        """A plain text prompt's tokens, no template (an OpenAI-style completion)."""
        if self.kind == "seq2seq":
            return source_ids(self.tokenizer, [text], self.max_source_length)[0][0]
        return self.tokenizer(text)["input_ids"]

    def run(self, rows: list[list[int]], g: GenerateConfig, stopping=None) -> None:
        """Generate for prompt token rows together, and hand every step to `stopping` (a
        transformers `StoppingCriteria`: it sees each row's new token and may end rows).
        `g.stop` is left to `stopping`, as rows may have stop strings of their own."""
        from transformers import StoppingCriteriaList

        input_ids, attention, pad = self._inputs(rows)
        kwargs = self._kwargs(dataclasses.replace(g, stop=[]), pad)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), runtime.autocast(self.precision):
                self.model.generate(input_ids=input_ids, attention_mask=attention,
                                    stopping_criteria=StoppingCriteriaList(
                                        [stopping] if stopping else []), **kwargs)
        finally:
            self.model.train(was_training)

    def stream(self, conv: Conversation, settings: GenerateConfig | None = None
               ) -> Iterator[str]:
        """The answer to `conv` in pieces, as the tokens are produced; joined, they are what
        `generate([conv])` returns (same stops, same trimming).

        `generate` runs in a worker thread and hands each new token over a queue. Text is
        held back while it could still change: an incomplete UTF-8 character, the start of
        a stop string, trailing whitespace (the full answer is stripped).
        """
        g = settings or self.settings
        input_ids, attention, pad = self._inputs([self.encode_prompt(conv)])
        tokens: queue.Queue = queue.Queue()
        failed: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode(), runtime.autocast(self.precision):
                    self.model.generate(input_ids=input_ids, attention_mask=attention,
                                        streamer=_QueueStreamer(tokens, self.left),
                                        **self._kwargs(g, pad))
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                failed.append(e)
            finally:
                tokens.put(None)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        answer = Answer(self.tokenizer, g.stop)
        while (tok := tokens.get()) is not None:
            piece = answer.add(tok)
            if piece:
                yield piece
            if answer.stopped:
                break
        worker.join()
        if failed:
            raise failed[0]
        if rest := answer.rest():
            yield rest

    def __call__(self, prompts: str | list[str]) -> str | list[str]:
        one = isinstance(prompts, str)
        convs = [[Message("user", p)] for p in ([prompts] if one else prompts)]
        out = self.generate(convs)
        return out[0] if one else out


def _cut(text: str, stops: list[str]) -> str:
    """`text` up to the first stop string (generation stops on it, but keeps it)."""
    at = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:at]


def _settled(text: str, stops: list[str], done: bool) -> str:
    """The part of a growing answer that can no longer change: without trailing whitespace,
    an incomplete character, or an ending that may be the start of a stop string."""
    text = text.rstrip()
    if not done:
        text = text.rstrip("\ufffd")
        for s in stops:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    text = text[:-k].rstrip()
                    break
    return text


class Answer:
    """An answer as its tokens arrive: the pieces of text that can be sent, and what remains
    at the end. Joined, the pieces are what `generate` returns for the same tokens (the same
    stop strings, the same trimming). Text is held back while it could still change: an
    incomplete UTF-8 character, the start of a stop string, trailing whitespace."""

    def __init__(self, tokenizer, stops: list[str]):
        self.tokenizer, self.stops = tokenizer, list(stops)
        self.ids: list[int] = []
        self.sent = 0
        self.stopped = False  # a stop string has appeared: no further token counts

    def add(self, token: int) -> str:
        """Take one new token; return the newly settled text ("" if none)."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()
        cut = _cut(text, self.stops)
        self.stopped = len(cut) < len(text)
        ready = _settled(cut, self.stops, done=self.stopped)
        if len(ready) <= self.sent:
            return ""
        piece, self.sent = ready[self.sent:], len(ready)
        return piece

    def text(self) -> str:
        return _cut(self.tokenizer.decode(self.ids, skip_special_tokens=True),
                    self.stops).strip()

    def rest(self) -> str:
        """What the whole answer holds beyond the pieces sent so far."""
        return self.text()[self.sent:]


class _QueueStreamer:
    """transformers' streamer interface: `put` gets the prompt once (decoder-only models),
    then each new token; `end` when generation stops."""

    def __init__(self, tokens: queue.Queue, skip_prompt: bool):
        self.tokens, self.skip = tokens, skip_prompt

    def put(self, value: torch.Tensor) -> None:
        if self.skip:
            self.skip = False
            return
        for t in value.reshape(-1).tolist():
            self.tokens.put(t)

    def end(self) -> None:
        pass


def _config_eos(model) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, list) else {eos}


