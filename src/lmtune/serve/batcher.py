"""Dynamic batching: requests from concurrent callers run together on one model.

One worker thread owns the models. It takes the oldest waiting request, then every waiting
request that can share its batch (the same model and the same sampling settings; a seeded
request runs alone, so that its seed decides its tokens), up to `max_batch` answers, and
decodes them in one `generate` call. Each answer ends on its own: at end of turn, at one of
its stop strings, at its own `max_tokens`, or when its caller goes away; the batch ends when
all have. While a batch runs, new requests wait, and the next batch takes them all.

The queue is bounded: past `max_waiting` requests, `submit` raises `Busy` (HTTP 429).
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from transformers import StoppingCriteria

from lmtune.infer.decoder import Answer
from lmtune.serve.models import Served


class Busy(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the server is busy; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class Row:
    """One answer being generated; `emit` hands events to the caller (any thread)."""

    ids: list[int]
    max_tokens: int
    index: int
    answer: Answer
    emit: Callable[[tuple], None]
    tokens: int = 0
    finished: bool = False

    def take(self, token: int, end_ids: set[int], cancelled: bool) -> None:
        self.tokens += 1
        if token in end_ids:
            return self.end("stop")
        if piece := self.answer.add(token):
            self.emit(("piece", self.index, piece))
        if cancelled:
            self.finished = True
        elif self.answer.stopped:
            self.end("stop")
        elif self.tokens >= self.max_tokens:
            self.end("length")

    def end(self, reason: str) -> None:
        if rest := self.answer.rest():
            self.emit(("piece", self.index, rest))
        self.emit(("done", self.index, reason, self.tokens))
        self.finished = True


@dataclass
class Work:
    """One request: its answers (generation) or its texts (classification)."""

    served: Served
    emit: Callable[[tuple], None]
    rows: list[Row] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    cancelled: bool = False

    @property
    def key(self) -> tuple:
        """Requests with equal keys may share a batch."""
        if self.texts:
            return ("classify", self.served.name)
        sampling = (self.temperature, self.top_p) if self.temperature > 0 else ()
        return (self.served.name, sampling, id(self) if self.seed is not None else None)

    @property
    def size(self) -> int:
        return len(self.texts) or len(self.rows)


class RowsDone(StoppingCriteria):
    """A transformers stopping criterion that feeds each row's new token to its answer and
    reports which rows are done."""

    def __init__(self, rows: list[tuple[Row, Work]], end_ids: set[int]):
        self.rows, self.end_ids = rows, end_ids

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        for (row, work), token in zip(self.rows, input_ids[:, -1].tolist()):
            if not row.finished:
                row.take(token, self.end_ids, work.cancelled)
        return torch.tensor([row.finished for row, _ in self.rows], device=input_ids.device)


class Batcher:
    def __init__(self, max_batch: int = 16, max_waiting: int = 64, window_s: float = 0.005):
        self.max_batch, self.max_waiting, self.window_s = max_batch, max_waiting, window_s
        self.waiting: collections.deque[Work] = collections.deque()
        self.ready = threading.Condition()
        self.closed = False
        self.batch_seconds = 1.0  # a running mean, for Retry-After
        self.batch_sizes: list[int] = []  # answers per batch, newest last (for tests, stats)
        self.thread = threading.Thread(target=self._loop, name="lmtune-batcher", daemon=True)
        self.thread.start()

    def submit(self, work: Work) -> None:
        with self.ready:
            if len(self.waiting) >= self.max_waiting:
                batches = len(self.waiting) / self.max_batch + 1
                raise Busy(max(1, round(batches * self.batch_seconds)))
            self.waiting.append(work)
            self.ready.notify()

    def close(self) -> None:
        with self.ready:
            self.closed = True
            self.ready.notify()
        self.thread.join(timeout=30)

    def _next(self) -> list[Work] | None:
        with self.ready:
            while not self.waiting and not self.closed:
                self.ready.wait()
            if self.closed:
                return None
        time.sleep(self.window_s)  # callers arriving together join one batch
        with self.ready:
            first = self.waiting.popleft()
            batch, size = [first], first.size
            for work in list(self.waiting):
                if work.key == first.key and size + work.size <= self.max_batch:
                    self.waiting.remove(work)
                    batch.append(work)
                    size += work.size
            return batch

    def _loop(self) -> None:
        while (batch := self._next()) is not None:
            began = time.perf_counter()
            try:
                self._run(batch)
            except Exception as e:  # noqa: BLE001 - the callers get it, the server goes on
                for work in batch:
                    work.emit(("error", e))
            self.batch_seconds = 0.8 * self.batch_seconds + \
                0.2 * (time.perf_counter() - began)
            self.batch_sizes.append(sum(w.size for w in batch))
            del self.batch_sizes[:-1000]

    def _run(self, batch: list[Work]) -> None:
        served, first = batch[0].served, batch[0]
        if first.texts:
            results = served.predictor.predict([t for w in batch for t in w.texts])
            for work in batch:
                work.emit(("result", results[:len(work.texts)]))
                results = results[len(work.texts):]
            return
        rows = [(row, work) for work in batch for row in work.rows if not work.cancelled]
        if not rows:
            return
        decoder = served.decoder
        settings = replace(served.settings, max_new_tokens=max(r.max_tokens for r, _ in rows),
                           temperature=first.temperature, top_p=first.top_p)
        served.activate()
        if first.seed is not None:
            torch.manual_seed(first.seed)
        decoder.run([r.ids for r, _ in rows], settings,
                    RowsDone(rows, set(decoder.stop_ids)))
        for row, _ in rows:  # generate's own limit reached first (it counts the same)
            if not row.finished:
                row.end("length")
