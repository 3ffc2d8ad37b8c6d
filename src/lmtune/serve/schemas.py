"""Request and response bodies of the HTTP API, as pydantic models.

Requests follow OpenAI's chat and completions APIs. Parameters a request may carry that are
not listed here are ignored, not rejected (clients and SDKs send many: `logprobs`, `user`,
`frequency_penalty`, ...). Responses carry the fields the official `openai` client validates
in strict mode.
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

MAX_STOPS = 4  # OpenAI's own limit on stop strings


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(Request):
    include_usage: Optional[bool] = None


class Sampling(Request):
    """What chat and completions requests share."""

    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = None
    n: Optional[int] = Field(None, ge=1)
    stream: Optional[bool] = None
    stream_options: Optional[StreamOptions] = None

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class ContentPart(Request):
    type: str
    text: Optional[str] = None


class ChatMessage(Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Optional[Union[str, list[ContentPart]]] = None


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)


Texts = Annotated[list[str], Field(min_length=1)]


class CompletionRequest(Sampling):
    prompt: Union[str, Texts]


class ClassifyRequest(Request):
    model: str
    input: Union[str, Texts]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lmtune"
    task: str  # lmtune's: what the model was trained for (sft, classify, ...)
    root: str  # lmtune's: the model it was trained from
    endpoints: list[str]  # lmtune's: the paths that serve it


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    finish_reason: Optional[Literal["stop", "length"]] = None  # null until a stream's end
    logprobs: None = None


class Answer(BaseModel):
    """What every response and stream chunk starts with (a chunk repeats its response's)."""

    id: str
    created: int
    model: str


class ChatChoice(Choice):
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class ChatCompletion(Answer):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None


class ChunkChoice(Choice):
    delta: Delta


class ChatChunk(Answer):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChunkChoice]
    usage: Optional[Usage] = None


class TextChoice(Choice):
    text: str


class Completion(Answer):
    """A whole completion, and (with `finish_reason` null until the end) a streamed chunk."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[TextChoice]
    usage: Optional[Usage] = None


class Classification(BaseModel):
    index: int
    label: Optional[str] = None  # single-label models: the most likely label
    score: Optional[float] = None
    labels: Optional[list[str]] = None  # multi-label models: every label over its threshold
    scores: dict[str, float]


class ClassifyResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Classification]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorBody
