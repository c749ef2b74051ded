"""HTTP plumbing: JSON errors, the request body limit, strict query strings and paths, the
methods of a path (OPTIONS, HEAD, a 405's Allow), request logs."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .faces import PhotoError
from .gallery import GalleryError
from .limits import Busy

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


def printable(text: str) -> str:
    """``text`` with every control or non-printable character escaped (``\\n``, ``\\x1b``):
    one log line stays one line, whatever a client sent."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def route_of(scope: Scope) -> str:
    """The route a request matched, as declared (``/api/faces/people/{name}``): what is
    logged instead of the path, which holds user input. "-" when nothing matched."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return "-"
    return printable(path + "/…" if isinstance(route, Mount) else path or "/")


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> Any:
        headers = dict(getattr(err, "headers", None) or {})
        if err.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request.app.router.routes, request.scope))
        return json_error(err.status_code, str(err.detail), headers or None)

    @app.exception_handler(Busy)
    async def busy(request: Request, err: Busy) -> Any:
        return json_error(503, str(err), {"Retry-After": str(err.retry_after)})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> Any:
        errors = [_plain(e) for e in err.errors()]
        return json_error(422, "; ".join(_describe(e) for e in errors), errors=errors)

    @app.exception_handler(PhotoError)
    async def bad_photo(request: Request, err: PhotoError) -> Any:
        return json_error(422, str(err))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> Any:  # a bug: logged, JSON body
        LOG.exception("%s %s failed", printable(request.method), route_of(request.scope))
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
    field = ".".join(loc[1:]) or ("(body)" if loc[0] == "body" else "")
    return f"{place} {field}: {error['msg']}" if field else f"{place}: {error['msg']}"


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


METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(routes: Sequence[BaseRoute], scope: Scope) -> list[str]:
    """Every method some route takes at the request's path (asked of the routes themselves,
    included routers too), HEAD wherever GET is, and OPTIONS; sorted. Empty when no route has
    the path."""
    methods: set[str] = set()
    for route in routes:
        # a mount (the static files) matches its paths whatever the method: it serves GET
        asked = ("GET",) if isinstance(route, Mount) else METHODS
        for method in asked:
            if route.matches({**scope, "method": method})[0] is Match.FULL:
                methods.add(method)
    if not methods:
        return []
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods | {"OPTIONS"})


class Methods:
    """OPTIONS answers 204 with the path's ``Allow`` (no CORS: another origin gets no
    permission from it); HEAD is answered as GET without the body where a route takes GET."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = routes  # the router's own list: routes added later are seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method")
        if scope["type"] != "http" or method not in ("OPTIONS", "HEAD"):
            await self.app(scope, receive, send)
            return
        allowed = allowed_methods(self.routes, scope)
        if method == "OPTIONS":
            if not allowed:
                await json_error(404, "Not Found")(scope, receive, send)
                return
            headers = [(b"allow", ", ".join(allowed).encode()), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        if "GET" not in allowed:
            await self.app(scope, receive, send)  # 404 or 405, as for any method
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        as_get = {**scope, "method": "GET"}
        try:
            await self.app(as_get, receive, without_body)
        finally:
            scope["route"] = as_get.get("route")  # for the request log


class StrictQuery:
    """Refuses (422, naming the parameter) a query string or path whose percent-encoded bytes
    are not UTF-8 (they were decoded as U+FFFD and searched or looked up as such), and a query
    parameter given more than once (the last one was used, silently)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = _query_problem(scope.get("query_string", b"")) or _path_problem(scope)
            if problem is not None:
                where, message, kind = problem
                errors = [{"loc": where, "msg": message, "type": kind}]
                detail = f"{_describe({'loc': where, 'msg': message})}"
                await json_error(422, detail, errors=errors)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _utf8(raw: bytes) -> str | None:
    """Percent-decoded (``+`` as space) UTF-8 text, or None when the bytes are not UTF-8."""
    try:
        return unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        return None


def _query_problem(query: bytes) -> tuple[list[str], str, str] | None:
    seen: set[str] = set()
    for part in query.split(b"&"):
        if not part:
            continue
        raw_name, _, raw_value = part.partition(b"=")
        name = _utf8(raw_name)
        if name is None:
            shown = printable(raw_name.decode("latin-1"))
            return ["query", shown], "parameter name is not valid UTF-8", "utf8"
        if _utf8(raw_value) is None:
            return ["query", name], "not valid UTF-8 (percent-encoded bytes)", "utf8"
        if name in seen:
            return ["query", name], "given more than once", "repeated"
        seen.add(name)
    return None


def _path_problem(scope: Scope) -> tuple[list[str], str, str] | None:
    raw = scope.get("raw_path")
    if raw is None:
        return None
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return ["path", ""], "not valid UTF-8 (percent-encoded bytes)", "utf8"
    return None


class RequestLog:
    """Logs each request: method, route (the declared path, not the one requested: that holds
    names and other user input), status, milliseconds; control characters escaped."""

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
            method = printable(str(scope["method"]))
            LOG.info("%s %s %d %.1f ms", method, route_of(scope), status[0], ms_since(start))
