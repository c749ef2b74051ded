"""Start the service with uvicorn: what ``tripletkit serve`` calls."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .app import ServeConfig, create_app

TOKEN_ENV = "TRIPLETKIT_SERVE_TOKEN"


def serve(
    index_dir: str | Path | None = None,
    gallery_dir: str | Path | None = None,
    model: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    threshold: float | None = None,
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

    Raises:
        ValueError: when neither folder is given or the port is out of range.
    """
    import uvicorn

    if index_dir is None and gallery_dir is None:
        raise ValueError("give an index folder (--index), a gallery folder (--gallery) or both")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535, got {port}")
    config = ServeConfig(
        index=Path(index_dir) if index_dir is not None else None,
        gallery=Path(gallery_dir) if gallery_dir is not None else None,
        model=model,
        token=token or os.environ.get(TOKEN_ENV) or None,
        threshold=threshold,
    )
    _log_requests()
    print(f"tripletkit serve: http://{host}:{port}/ (API docs at /docs)", flush=True)
    uvicorn.run(create_app(config), host=host, port=port, log_level="info", access_log=False)


def _log_requests() -> None:
    """Request logs of ``tripletkit.serve`` to stderr at INFO (the root logger is left alone)."""
    log = logging.getLogger("tripletkit.serve")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
