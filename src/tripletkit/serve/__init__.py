"""The HTTP service (FastAPI): search an index folder and look up faces in a gallery.

Nothing below ``serve`` imports it; it reaches faces and search through their public
functions. FastAPI, uvicorn, python-multipart and the Swagger UI files of ``/docs``
(swagger-ui-bundle-v2) come with the ``serve`` extra (``pip install tripletkit[serve]``).
"""

from __future__ import annotations

from .app import create_app
from .gallery import Gallery, GalleryError, Identification, Match, Person
from .run import serve
from .search import IndexBuild
from .state import ServeConfig

__all__ = [
    "Gallery",
    "GalleryError",
    "Identification",
    "IndexBuild",
    "Match",
    "Person",
    "ServeConfig",
    "create_app",
    "serve",
]
