"""What the service holds: its config, the loaded services, and whether loading is done."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException

from ..faces.models import load_face_model
from .faces import MAX_PIXELS, FaceService, dlib_detector
from .gallery import Gallery
from .search import SearchService

LOG = logging.getLogger("tripletkit.serve")
MB = 1 << 20


@dataclass(frozen=True)
class ServeConfig:
    """What the service serves and its limits.

    Attributes:
        index: an index folder written by ``tripletkit index`` (None: no search).
        gallery: the face gallery folder, created when absent (None: no faces).
        model: a face model folder written by training, or "dlib" (None: "dlib", the stock
            pretrained descriptor; see ``faces.models.load_face_model``).
        threshold: identification / verification distance; None: the model's calibrated one.
        token: when set, enroll, rename and delete need ``Authorization: Bearer <token>``.
        max_upload_bytes: largest request body (all photos of a request together).
        max_pixels: largest photo, width x height.
        max_k: largest ``k`` of a search; max_people: largest ``k`` of an identification.
        max_query_chars: longest search query; max_batch: most queries in one batch POST.
        detector, upsample: face detection options (see ``faces.align.find_faces``).
    """

    index: Path | None = None
    gallery: Path | None = None
    model: str | Path | None = None
    threshold: float | None = None
    token: str | None = None
    max_upload_bytes: int = 10 * MB
    max_pixels: int = MAX_PIXELS
    max_k: int = 100
    max_people: int = 20
    max_query_chars: int = 512
    max_batch: int = 64
    detector: str = "hog"
    upsample: int = 1


@dataclass
class Services:
    """What the routes call; None where the service was not configured with it."""

    search: SearchService | None = None
    faces: FaceService | None = None

    def close(self) -> None:
        if self.search is not None:
            self.search.close()
        if self.faces is not None:
            self.faces.gallery.close()


def load_services(config: ServeConfig) -> Services:
    """Load the index, the encoder, the face model and the gallery that ``config`` names."""
    search = SearchService.from_folder(config.index) if config.index is not None else None
    faces = None
    if config.gallery is not None:
        model = load_face_model(config.model if config.model is not None else "dlib")
        dim = model.config.model.dim if model.kind == "scratch" and model.config else 128
        faces = FaceService(
            Gallery.open(config.gallery, dim),
            model,
            dlib_detector(config.detector, config.upsample),
            config.threshold,
            config.max_pixels,
        )
    return Services(search, faces)


class ServiceState:
    """The services once loaded, or why loading failed (loading runs in a background thread),
    or that they were closed (the app's lifespan ended)."""

    def __init__(self, services: Services | None) -> None:
        self.services = services
        self.error: str | None = None
        self.closed = False

    def load(self, loader: Callable[[], Services]) -> None:
        try:
            self.services = loader()
        except Exception as err:  # reported by /health and every endpoint
            LOG.exception("loading the service failed")
            self.error = f"{type(err).__name__}: {err}"

    def ready(self) -> Services:
        if self.closed:
            raise HTTPException(503, "the service has shut down")
        if self.services is None:
            detail = f"loading failed: {self.error}" if self.error else "still loading the models"
            raise HTTPException(503, detail)
        return self.services

    def close(self) -> None:
        """Close the services; requests after this get 503 instead of waiting on them."""
        self.closed = True
        services, self.services = self.services, None
        if services is not None:
            services.close()
