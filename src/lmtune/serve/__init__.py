"""`lmtune serve`: what lmtune trains, behind an OpenAI-compatible HTTP API.

    models.py       the served models by name (adapter runs on one base share it)
    batcher.py      dynamic batching of concurrent requests on one worker thread
    schemas.py      request and response bodies of the inference API (pydantic)
    http.py         API key, body limits, errors in OpenAI's shape
    app.py          the inference routes (FastAPI)
    job_schemas.py  bodies of the files and fine-tuning-jobs API
    store.py        its durable state (SQLite)
    jobs.py         the job runner: `lmtune train` in a child process, resumed after a crash
    events.py       a job's run dir as events and checkpoints
    jobs_api.py     the files and fine-tuning-jobs routes
    command.py      the command line; starts uvicorn
"""
