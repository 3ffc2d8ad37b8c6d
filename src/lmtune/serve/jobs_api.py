"""OpenAI's files and fine-tuning-jobs API, served locally: the routes. The jobs themselves
run in serve/jobs.py; their state lives in serve/store.py."""
from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import FileResponse

from lmtune.errors import LmtuneError
from lmtune.serve.events import checkpoints
from lmtune.serve.http import ApiError
from lmtune.serve.job_schemas import (CheckpointList, EventList, FileDeleted, FileList,
                                      FileObject, Job, JobList, JobRequest)
from lmtune.serve.jobs import ACTIVE, Runner, method_of
from lmtune.serve.models import Served, training_base
from lmtune.serve.store import Store, new_id

MAX_PAGE = 100


class JobsApi:
    def __init__(self, store: Store, runner: Runner, jobs_dir: Path,
                 served: dict[str, Served]):
        self.store, self.runner, self.jobs_dir, self.served = store, runner, jobs_dir, served

    def install(self, app: FastAPI) -> None:
        app.post("/v1/files", response_model=FileObject)(self.upload)
        app.get("/v1/files", response_model=FileList)(self.list_files)
        app.get("/v1/files/{file_id}", response_model=FileObject)(self.get_file)
        app.delete("/v1/files/{file_id}", response_model=FileDeleted)(self.delete_file)
        app.get("/v1/files/{file_id}/content", response_class=FileResponse,
                responses={200: {"content": {"application/octet-stream": {}}}})(self.content)
        app.post("/v1/fine_tuning/jobs", response_model=Job)(self.create)
        app.get("/v1/fine_tuning/jobs", response_model=JobList)(self.list_jobs)
        app.get("/v1/fine_tuning/jobs/{job_id}", response_model=Job)(self.get_job)
        app.post("/v1/fine_tuning/jobs/{job_id}/cancel", response_model=Job)(self.cancel)
        app.get("/v1/fine_tuning/jobs/{job_id}/events", response_model=EventList)(self.events)
        app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints",
                response_model=CheckpointList)(self.checkpoints)

    # ------------------------------------------------------------------------- files
    async def upload(self, file: UploadFile = File(...),
                     purpose: Literal["fine-tune"] = Form(...)) -> FileObject:
        file_id = new_id("file")
        folder = self.jobs_dir / "files"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{file_id}.jsonl"
        data = await file.read()
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:  # whole and synced before the id is given out
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.rename(path)
        return _file(self.store.add_file(file_id, file.filename or file_id, purpose,
                                         len(data), path))

    async def list_files(self, after: str | None = None, limit: int = 20) -> FileList:
        return FileList(**_page([_file(f) for f in self.store.files()], after, limit))

    async def get_file(self, file_id: str) -> FileObject:
        return _file(self._file(file_id))

    async def delete_file(self, file_id: str) -> FileDeleted:
        record = self._file(file_id)
        self.store.delete_file(file_id)
        Path(record["path"]).unlink(missing_ok=True)
        return FileDeleted(id=file_id, deleted=True)

    async def content(self, file_id: str) -> FileResponse:
        record = self._file(file_id)
        return FileResponse(record["path"], media_type="application/octet-stream",
                            filename=record["filename"])

    def _file(self, file_id: str) -> dict:
        return _found(self.store.file(file_id), "file", file_id)

    # -------------------------------------------------------------------------- jobs
    async def create(self, req: JobRequest, request: Request) -> Job:
        try:
            training_base(self.served, req.model)
        except LmtuneError as e:
            raise ApiError(400, str(e), param="model", code="invalid_model",
                           headers={"x-should-retry": "false"}) from None
        for param in ("training_file", "validation_file"):
            file_id = getattr(req, param)
            if file_id and self.store.file(file_id) is None:
                raise ApiError(400, f"{param}: no such file: {file_id}", param=param,
                               code="invalid_file", headers={"x-should-retry": "false"})
        body = req.model_dump(exclude_none=True)
        body.setdefault("seed", random.randrange(2**31))
        job, new = self.store.add_job(body, request.headers.get("idempotency-key"))
        if new:
            self.store.add_event(job["id"], f"Created fine-tuning job: {job['id']}")
            self.runner.notify()
        return _job(job)

    async def list_jobs(self, after: str | None = None, limit: int = 20) -> JobList:
        return JobList(**_page([_job(j) for j in self.store.jobs()], after, limit))

    async def get_job(self, job_id: str) -> Job:
        return _job(self._job(job_id))

    async def cancel(self, job_id: str) -> Job:
        job = self._job(job_id)
        if job["status"] not in ACTIVE:
            raise ApiError(400, f"job {job_id} is {job['status']}; only a job still "
                           "validating, queued or running can be cancelled", param="job_id")
        job = self.store.update_job(job_id, ACTIVE, status="cancelled",
                                    finished_at=int(time.time()))
        if job is None:  # it ended meanwhile
            return await self.cancel(job_id)
        self.store.add_event(job_id, "Job cancelled")
        self.runner.cancel(job_id)
        return _job(job)

    async def events(self, job_id: str, after: str | None = None,
                     limit: int = 20) -> EventList:
        self._job(job_id)
        return EventList(**_page(self.store.events(job_id), after, limit))

    async def checkpoints(self, job_id: str, after: str | None = None,
                          limit: int = 10) -> CheckpointList:
        job = self._job(job_id)
        page = _page(checkpoints(self.runner.run_dir(job_id), job), after, limit)
        ids = [c["id"] for c in page["data"]]
        return CheckpointList(**page, first_id=ids[0] if ids else None,
                              last_id=ids[-1] if ids else None)

    def _job(self, job_id: str) -> dict:
        return _found(self.store.job(job_id), "job", job_id)


def _found(record: dict | None, kind: str, key: str) -> dict:
    if record is None:
        raise ApiError(404, f"No such {kind}: {key}", param=f"{kind}_id",
                       code=f"{kind}_not_found")
    return record


def _page(items: list, after: str | None, limit: int) -> dict:
    if not 1 <= limit <= MAX_PAGE:
        raise ApiError(400, f"limit: 1 to {MAX_PAGE}; got {limit}", param="limit")
    ids = [item["id"] if isinstance(item, dict) else item.id for item in items]
    start = ids.index(after) + 1 if after in ids else 0
    if after is not None and after not in ids:
        raise ApiError(400, f"after: {after} is not in this list", param="after")
    return {"data": items[start:start + limit], "has_more": start + limit < len(items)}


def _file(record: dict) -> FileObject:
    return FileObject(id=record["id"], bytes=record["bytes"], created_at=record["created_at"],
                      filename=record["filename"])


def _job(job: dict) -> Job:
    req = job["request"]
    kind, given = method_of(req)
    hyper = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto",
             **given}
    return Job(id=job["id"], created_at=job["created_at"], error=job["error"],
               fine_tuned_model=job["fine_tuned_model"], finished_at=job["finished_at"],
               hyperparameters=hyper, model=req["model"], seed=req["seed"],
               status=job["status"], trained_tokens=job["trained_tokens"],
               training_file=req["training_file"],
               validation_file=req.get("validation_file"),
               method={"type": kind, kind: {"hyperparameters": hyper}},
               metadata=req.get("metadata"))

