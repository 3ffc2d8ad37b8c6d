"""What every request goes through: the API key, the body size limit, and errors in
OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, for every failure the
server answers (routing 404/405 and malformed JSON included)."""
from __future__ import annotations

import hmac
import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, type: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type, self.headers = type, headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), self.status, headers=self.headers)


ROUTING_CODES = {404: "not_found", 405: "method_not_allowed"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return validation_error(e.errors()).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        message = e.detail if isinstance(e.detail, str) else "request failed"
        if e.status_code == 404:
            message = f"no such path: {request.method} {request.url.path}"
        elif e.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return ApiError(e.status_code, message, code=ROUTING_CODES.get(e.status_code),
                        headers=dict(e.headers or {})).response()

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception) -> JSONResponse:
        # a retried job creation could start the job twice (the openai client sends no
        # idempotency key): say not to
        creates = (request.url.path, request.method) == ("/v1/fine_tuning/jobs", "POST")
        return ApiError(500, f"the server failed: {type(e).__name__}: {e}",
                        type="server_error", code="internal_error",
                        headers={"x-should-retry": "false"} if creates else None).response()


def validation_error(errors) -> ApiError:
    """The first of pydantic's complaints, said the way a client can act on."""
    first = errors[0] if errors else {}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    if first.get("type") == "json_invalid":
        return ApiError(400, "the request body is not valid JSON "
                        f"({first.get('ctx', {}).get('error', 'parse error')})",
                        code="invalid_json")
    param = _dotted(loc)
    where = f"{param}: " if param else ""
    return ApiError(400, f"{where}{first.get('msg', 'invalid request')}", param=param or None,
                    code="invalid_value")


def _dotted(loc: list[str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


class Guard:
    """ASGI middleware: the bearer token (when the server has a key) and the body size,
    before any route runs. The body is read here, at most `max_body` bytes (file uploads:
    `max_upload`), and handed on."""

    def __init__(self, app, api_key: str | None, max_body: int, max_upload: int):
        self.app, self.api_key = app, api_key
        self.max_body, self.max_upload = max_body, max_upload

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.api_key and scope["path"].startswith("/v1"):
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                why = "Incorrect API key provided" if given else \
                    "Missing API key: send the header 'Authorization: Bearer KEY'"
                return await _send(send, ApiError(401, why, code="invalid_api_key"))
        limit = self.max_upload if scope["path"] == "/v1/files" else self.max_body
        too_big = ApiError(400, f"the request body is over the server's limit of "
                           f"{limit:,} bytes", code="request_too_large")
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > limit:
            return await _send(send, too_big)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                return await _send(send, too_big)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _send(send, error: ApiError) -> None:
    body = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
