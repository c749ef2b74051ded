"""The HTTP service (FastAPI): search an index folder and look up faces in a gallery.

Nothing below ``serve`` imports it. FastAPI, uvicorn and python-multipart come with the
``serve`` extra (``pip install tripletkit[serve]``); the gallery needs only FAISS and numpy.
"""

from __future__ import annotations

from typing import Any

from .gallery import Gallery, GalleryError, Identification, Match, Person

__all__ = [
    "Gallery",
    "GalleryError",
    "Identification",
    "Match",
    "Person",
    "ServeConfig",
    "create_app",
    "serve",
]


def __getattr__(name: str) -> Any:
    """``create_app``, ``ServeConfig`` and ``serve`` import FastAPI on first use."""
    if name in ("create_app", "ServeConfig"):
        try:
            from . import app
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("the service needs: pip install tripletkit[serve]") from err
        return getattr(app, name)
    if name == "serve":
        from .run import serve

        return serve
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
