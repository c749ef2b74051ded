"""The HTTP service: ``create_app(config) -> FastAPI``.

Routes are thin: request in, one call of :class:`~tripletkit.serve.search.SearchService` or
:class:`~tripletkit.serve.faces.FaceService`, response out. Models, index and gallery load once,
in a background thread started with the app; ``GET /health`` answers 503 until they are loaded
and 200 after. Every error is JSON ``{"status": code, "detail": message}``; model calls run in
FastAPI's threadpool (the endpoints are plain functions).

Endpoints (see docs/serve.md): ``GET /`` (the page), ``GET /health``, ``GET /health/live``,
``GET /api/search``, ``POST /api/search``, ``POST /api/faces/enroll``,
``POST /api/faces/identify``, ``POST /api/faces/verify``, ``GET /api/faces/people``,
``GET|PATCH|DELETE /api/faces/people/{name}``, ``GET /api/faces/faces/{id}/thumbnail.jpg``;
``/docs`` and ``/openapi.json`` as FastAPI serves them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from .middleware import BodyLimit, RequestLog, add_error_handlers
from .routes import faces_router, health_router, search_router
from .state import ServeConfig, Services, ServiceState, load_services

__all__ = ["STATIC_DIR", "ServeConfig", "Services", "create_app", "load_services"]

STATIC_DIR = Path(__file__).parent / "static"


def create_app(
    config: ServeConfig, services: Services | Callable[[], Services] | None = None
) -> FastAPI:
    """The FastAPI application.

    Args:
        config: what to serve and the limits.
        services: ready services (tests), a function that loads them, or None to load what
            ``config`` names. Loading runs in a background thread; /health says when it is done.
            The services are closed when the app's lifespan ends; requests after that get 503
            (a loader loads them again if the lifespan starts again; ready services do not
            come back).
    """
    ready = services if isinstance(services, Services) else None
    state = ServiceState(ready)
    loader: Callable[[], Services] | None = None
    if ready is None:
        loader = services if callable(services) else (lambda: load_services(config))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        if state.services is None and loader is not None:  # again after a restart
            state.closed, state.error = False, None
            threading.Thread(target=state.load, args=(loader,), daemon=True).start()
        yield
        state.close()

    app = FastAPI(
        title="tripletkit",
        summary="Search a corpus and look up faces in a gallery.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.serve = state
    app.add_middleware(RequestLog)
    app.add_middleware(BodyLimit, limit=config.max_upload_bytes)
    add_error_handlers(app)
    app.include_router(health_router(state))
    app.include_router(search_router(config, state))
    app.include_router(faces_router(config, state))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    return app
