"""Start the service with uvicorn: what ``tripletkit serve`` calls.

It comes up at once; the parts load in the background (see :mod:`.state`). What can be checked
at once is checked before the port is bound (the index folder holds an index, or there is
something to build it from); when loading fails later (a gallery open in another process, a
damaged index, an encoder that changed), the error is printed and the service stops, so
``tripletkit serve`` exits non-zero instead of answering 503 forever. Malformed requests that
uvicorn refuses itself (a request line or headers over h11's 16 kB, bad syntax) get a JSON error
like every other.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE, H11Protocol

from .app import ServeConfig, create_app
from .search import IndexBuild, has_index
from .security import LOOPBACK
from .state import missing_index

TOKEN_ENV = "TRIPLETKIT_SERVE_TOKEN"
READ_TOKEN_ENV = "TRIPLETKIT_SERVE_READ_TOKEN"
WILDCARDS = ("0.0.0.0", "::", "")


def serve(
    index_dir: str | Path | None = None,
    gallery_dir: str | Path | None = None,
    model: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    threshold: float | None = None,
    *,
    read_token: str | None = None,
    build: IndexBuild | None = None,
    allowed_hosts: tuple[str, ...] = (),
) -> None:
    """Serve an index folder, a face gallery, or both, until interrupted.

    Args:
        index_dir: a folder written by ``tripletkit index`` (None: no search).
        gallery_dir: the gallery folder, created when absent (None: no faces).
        model: a face model folder written by training, or "dlib" (None: "dlib", the stock
            pretrained descriptor with its calibrated threshold).
        host: address to bind; the default answers this machine only.
        port: TCP port.
        token: when set, enroll, rename and delete need ``Authorization: Bearer <token>``;
            None: ``$TRIPLETKIT_SERVE_TOKEN`` if set (keeps the token out of ``ps``), else none.
        threshold: identification distance (None: the model's calibrated one).
        read_token: when set, the faces' reads need it (or ``token``); None:
            ``$TRIPLETKIT_SERVE_READ_TOKEN`` if set, else the reads are open.
        build: when ``index_dir`` holds no index yet, build it from this in the background.
        allowed_hosts: names the service is reached under besides the loopback names and
            ``host`` (a proxy's server name; "*": any, which turns the DNS-rebinding guard off).

    Raises:
        ValueError: when neither folder is given, the port is out of range, the index folder
            holds no index and there is nothing to build it from, or loading failed (the
            service then stopped).
    """
    if index_dir is None and gallery_dir is None:
        raise ValueError("give an index folder (--index), a gallery folder (--gallery) or both")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535, got {port}")
    if index_dir is not None and build is None and not has_index(Path(index_dir)):
        raise ValueError(missing_index(Path(index_dir)))
    names = (*LOOPBACK, *([] if host in WILDCARDS else [host]), *allowed_hosts)
    config = ServeConfig(
        index=Path(index_dir) if index_dir is not None else None,
        gallery=Path(gallery_dir) if gallery_dir is not None else None,
        model=model,
        token=token or os.environ.get(TOKEN_ENV) or None,
        read_token=read_token or os.environ.get(READ_TOKEN_ENV) or None,
        threshold=threshold,
        build=build,
        allowed_hosts=tuple(dict.fromkeys(names)),
    )
    failures: list[str] = []
    server: uvicorn.Server | None = None

    def failed(message: str) -> None:
        failures.append(message)
        if server is not None:
            server.should_exit = True

    app = create_app(config, on_failure=failed)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=host, port=port, log_level="info", access_log=False, http=JsonErrorsH11
        )
    )
    _log_requests()
    print(f"tripletkit serve: http://{host}:{port}/ (API docs at /docs)", flush=True)
    server.run()
    if failures:
        raise ValueError(f"loading failed, the service stopped: {failures[0]}")


class JsonErrorsH11(H11Protocol):
    """uvicorn's h11 protocol, answering the requests it cannot parse with a JSON error (431
    for a request line or headers over the size limit, 400 otherwise) instead of text."""

    def send_400_response(self, msg: str) -> None:
        buffered = len(self.conn.trailing_data[0])
        limit = self.config.h11_max_incomplete_event_size or DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
        status, detail = (
            (
                431,
                f"the request line and headers are longer than {limit} bytes (a query that "
                "long is no search: use POST /api/search)",
            )  # fmt: skip
            if buffered > limit
            else (400, "malformed HTTP request")
        )
        body = json.dumps({"status": status, "detail": detail}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (b"x-content-type-options", b"nosniff"),
        ]
        reason = b"Request Header Fields Too Large" if status == 431 else b"Bad Request"
        self._send_raw(h11.Response(status_code=status, headers=headers, reason=reason), body)

    def _send_raw(self, response: Any, body: bytes) -> None:
        for event in (response, h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


def _log_requests() -> None:
    """Request logs of ``tripletkit.serve`` to stderr at INFO (the root logger is left alone)."""
    log = logging.getLogger("tripletkit.serve")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
