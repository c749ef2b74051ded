"""The HTTP service: ``create_app(config) -> FastAPI``.

Routes are thin: request in, one call of :class:`~tripletkit.serve.search.SearchService` or
:class:`~tripletkit.serve.faces.FaceService`, response out. The two parts load in background
threads started with the app, each on its own (the faces are answered while the search index
is still being built); ``GET /health`` answers 503 with each part's progress until both are
loaded and 200 after. Every error is JSON ``{"status": code, "detail": message}``.

Endpoints (see docs/serve.md): ``GET /`` (the page), ``GET /health``, ``GET /health/live``,
``GET /api/search``, ``POST /api/search``, ``POST /api/faces/enroll``,
``POST /api/faces/identify``, ``POST /api/faces/verify``, ``GET /api/faces/people``,
``GET|PATCH|DELETE /api/faces/people/{name}``, ``GET /api/faces/faces/{id}/thumbnail.jpg``;
``/openapi.json``, and ``/docs``: Swagger UI from the ``swagger-ui-bundle-v2`` package (no
CDN). HEAD is answered wherever GET is, OPTIONS everywhere with the path's ``Allow``.

Middleware, outermost first: the request log, the security headers, the Host and cross-site
checks, the body limit, strict query strings, then HEAD / OPTIONS.
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
from swagger_ui_bundle import swagger_ui_path

from .limits import PhotoQueue
from .middleware import BodyLimit, Methods, RequestLog, StrictQuery, add_error_handlers
from .routes import faces_router, health_router, search_router
from .security import SameSite, SecurityHeaders
from .state import ServeConfig, Services, ServiceState, load_faces, load_search, load_services

__all__ = ["STATIC_DIR", "ServeConfig", "Services", "create_app", "load_services"]

STATIC_DIR = Path(__file__).parent / "static"
SWAGGER_DIR = Path(str(swagger_ui_path))


def create_app(
    config: ServeConfig,
    services: Services | Callable[[], Services] | None = None,
    on_failure: Callable[[str], None] | None = None,
) -> FastAPI:
    """The FastAPI application.

    Args:
        config: what to serve and the limits.
        services: ready services (tests), a function that loads them all, or None to load
            what ``config`` names (each part in a thread of its own, the index built first
            where ``config.build`` says). /health says how far loading is. The services are
            closed when the app's lifespan ends; requests after that get 503 (a loader loads
            them again if the lifespan starts again; ready services do not come back).
        on_failure: called with the message when loading fails.
    """
    ready = services if isinstance(services, Services) else None
    state = ServiceState(ready, on_failure)
    loader: Callable[[], Services] | None = None
    if ready is None and callable(services):
        loader = services

    def start_loading() -> None:
        if loader is not None:
            state.expect()
            _thread(state.load, loader)
            return
        wanted = tuple(n for n, c in (("search", config.index), ("faces", config.gallery)) if c)
        state.expect(wanted)
        if config.index is not None:
            _thread(state.load_part, "search", lambda part: load_search(config, part.report))
        if config.gallery is not None:
            _thread(state.load_part, "faces", lambda part: load_faces(config))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        if ready is None:  # again after a restart of the lifespan
            start_loading()
        yield
        state.close()

    app = FastAPI(
        title="tripletkit",
        summary="Search a corpus and look up faces in a gallery.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.serve = state
    app.add_middleware(Methods, routes=app.router.routes)
    app.add_middleware(StrictQuery)
    app.add_middleware(BodyLimit, limit=config.max_upload_bytes)
    app.add_middleware(SameSite, hosts=config.allowed_hosts, origins=config.allowed_origins)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestLog)
    add_error_handlers(app)
    queue = PhotoQueue(config.photo_workers, config.photo_queue, config.photo_wait_s)
    app.state.photo_queue = queue
    app.include_router(health_router(state))
    app.include_router(search_router(config, state))
    app.include_router(faces_router(config, state, queue))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/docs/swagger-ui", StaticFiles(directory=SWAGGER_DIR), name="swagger-ui")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(STATIC_DIR / "docs.html", media_type="text/html")

    return app


def _thread(target: Callable[..., None], *args: Any) -> None:
    threading.Thread(target=target, args=args, daemon=True).start()
