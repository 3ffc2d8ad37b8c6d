"""Bodies of the fine-tuning-jobs API (OpenAI's files and fine_tuning.jobs), as pydantic
models; the responses carry what the official `openai` client validates in strict mode."""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from lmtune.serve.schemas import Request

Auto = Union[Literal["auto"], int, None]
AutoFloat = Union[Literal["auto"], float, None]


class Hyperparameters(Request):
    n_epochs: Auto = Field(None)
    batch_size: Auto = Field(None)
    learning_rate_multiplier: AutoFloat = Field(None)
    beta: AutoFloat = Field(None)  # dpo only


class MethodPart(Request):
    hyperparameters: Optional[Hyperparameters] = None


class Method(Request):
    type: Literal["supervised", "dpo"] = "supervised"
    supervised: Optional[MethodPart] = None
    dpo: Optional[MethodPart] = None


class JobRequest(Request):
    model: str
    training_file: str
    validation_file: Optional[str] = None
    suffix: Optional[str] = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")
    seed: Optional[int] = Field(None, ge=0, le=2**31 - 1)
    hyperparameters: Optional[Hyperparameters] = None
    method: Optional[Method] = None
    metadata: Optional[dict[str, str]] = None


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["fine-tune"] = "fine-tune"
    status: Literal["processed"] = "processed"


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class JobError(BaseModel):
    code: str
    message: str
    param: Optional[str] = None


class Job(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: Optional[JobError] = None
    fine_tuned_model: Optional[str] = None
    finished_at: Optional[int] = None
    hyperparameters: dict[str, Any]
    model: str
    organization_id: str = "lmtune"
    result_files: list[str] = []
    seed: int
    status: Literal["validating_files", "queued", "running", "succeeded", "failed",
                    "cancelled"]
    trained_tokens: Optional[int] = None
    training_file: str
    validation_file: Optional[str] = None
    method: dict[str, Any]
    metadata: Optional[dict[str, str]] = None


class Event(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    data: Optional[dict[str, Any]] = None
    type: Literal["message", "metrics"]


class Checkpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, Any]


class Page(BaseModel):
    """A page of a list, newest first; `has_more` with `after` (the last id) gives the next."""

    object: Literal["list"] = "list"
    has_more: bool = False


class FileList(Page):
    data: list[FileObject]


class JobList(Page):
    data: list[Job]


class EventList(Page):
    data: list[Event]


class CheckpointList(Page):
    data: list[Checkpoint]
    first_id: Optional[str] = None
    last_id: Optional[str] = None
