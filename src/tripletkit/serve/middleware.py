"""HTTP plumbing: JSON errors, the request body limit, request logs."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .faces import PhotoError
from .gallery import GalleryError

LOG = logging.getLogger("tripletkit.serve")


def ms_since(start: float) -> float:
    """Milliseconds since ``start`` (a ``time.perf_counter()``), rounded to microseconds."""
    return round((time.perf_counter() - start) * 1000, 3)


def json_error(
    status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """``{"status": status, "detail": detail, **extra}`` with that status code."""
    body = {"status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> Any:
        return json_error(err.status_code, str(err.detail), getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> Any:
        errors = [_plain(e) for e in err.errors()]
        return json_error(422, "; ".join(_describe(e) for e in errors), errors=errors)

    @app.exception_handler(PhotoError)
    async def bad_photo(request: Request, err: PhotoError) -> Any:
        return json_error(422, str(err))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> Any:  # a bug: logged, JSON body
        LOG.exception("%s %s failed", request.method, request.url.path)
        return json_error(500, f"internal error ({type(err).__name__}); see the service log")

    @app.exception_handler(GalleryError)
    async def gallery_error(request: Request, err: GalleryError) -> Any:
        return json_error({"not_found": 404, "conflict": 409}.get(err.kind, 422), str(err))


def _plain(error: Any) -> dict[str, Any]:
    """A validation error with only JSON-safe fields."""
    return {
        "loc": [str(p) for p in error.get("loc", ())],
        "msg": str(error.get("msg", "")),
        "type": str(error.get("type", "")),
    }


def _describe(error: dict[str, Any]) -> str:
    """'query parameter k: Input should be less than or equal to 100'."""
    where = {"query": "query parameter", "body": "body field", "path": "path parameter"}
    loc = error["loc"]
    if not loc:
        return error["msg"]
    place = where.get(loc[0], loc[0])
    field = ".".join(loc[1:]) or "(body)"
    return f"{place} {field}: {error['msg']}"


class _TooLarge(HTTPException):
    """A request body over the limit (an HTTPException, so FastAPI's body parsing lets it
    through instead of answering 400)."""

    def __init__(self, message: str) -> None:
        super().__init__(413, message)


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413: by Content-Length up front, and
    by counting what arrives when there is none (chunked uploads)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        message = f"request body larger than the limit of {self.limit} bytes"
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await json_error(400, "Content-Length is not a number")(scope, receive, send)
                return
            if size > self.limit:
                await json_error(413, message)(scope, receive, send)
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            got = await receive()
            seen += len(got.get("body", b""))
            if seen > self.limit:
                raise _TooLarge(message)
            return got

        await self.app(scope, counted, send)


class RequestLog:
    """Logs each request: method, path, status, milliseconds (not the query string)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [0]

        async def record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            LOG.info("%s %s %d %.1f ms", scope["method"], scope["path"], status[0], ms_since(start))
