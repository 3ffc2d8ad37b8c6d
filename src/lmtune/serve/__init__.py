"""`lmtune serve`: what lmtune trains, behind an OpenAI-compatible HTTP API.

    models.py    the served models by name (adapter runs on one base share it)
    batcher.py   dynamic batching of concurrent requests on one worker thread
    schemas.py   request and response bodies (pydantic)
    http.py      API key, body limit, errors in OpenAI's shape
    app.py       the routes (FastAPI)
    command.py   the command line; starts uvicorn
"""
