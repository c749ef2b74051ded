"""What the service holds: its config, and its two parts (search, faces) as they load.

Each part loads in a background thread of its own, so the faces are answered while the search
index is still being built, and each says where it is: "off" (not configured), "loading",
"building" (the index, with how many documents are encoded), "ready", "failed" (and why), or
"stopped" (the app's lifespan ended).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from ..faces.models import load_face_model
from .faces import DETECT_SIDE, MAX_PIXELS, FaceService, dlib_detector
from .gallery import Gallery
from .search import IndexBuild, Report, SearchService, build_index, has_index
from .security import LOOPBACK

LOG = logging.getLogger("tripletkit.serve")
MB = 1 << 20
PARTS = ("search", "faces")


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
        read_token: when set, the faces' reads (people, thumbnails, identify, verify) need
            ``Authorization: Bearer`` with it or with ``token``.
        build: when ``index`` holds no index yet, build it from this in the background (None:
            such a folder is an error).
        allowed_hosts: the names the service answers to in the Host header ("*": any).
        allowed_origins: origins besides the service's own allowed to write (a page served
            under another name by a proxy that forwards another Host).
        max_upload_bytes: largest request body (all photos of a request together).
        max_pixels: largest photo, width x height.
        max_enroll_photos: most photos in one enrollment.
        photo_workers: photos decoded and detected at once; photo_queue: requests that may
            wait for a turn (more get 503); photo_wait_s: longest wait for a turn (then 503).
        max_k: largest ``k`` of a search; max_people: largest ``k`` of an identification.
        max_query_chars: longest search query; max_batch: most queries in one batch POST.
        detector, upsample: face detection options (see ``faces.align.find_faces``);
            detect_side: detection runs on a copy of at most this longer side, and photos are
            decoded at twice that at most.
    """

    index: Path | None = None
    gallery: Path | None = None
    model: str | Path | None = None
    threshold: float | None = None
    token: str | None = None
    read_token: str | None = None
    build: IndexBuild | None = None
    allowed_hosts: tuple[str, ...] = LOOPBACK
    allowed_origins: tuple[str, ...] = ()
    max_upload_bytes: int = 10 * MB
    max_pixels: int = MAX_PIXELS
    max_enroll_photos: int = 10
    photo_workers: int = 2
    photo_queue: int = 32
    photo_wait_s: float = 30.0
    max_k: int = 100
    max_people: int = 20
    max_query_chars: int = 512
    max_batch: int = 64
    detector: str = "hog"
    upsample: int = 1
    detect_side: int = DETECT_SIDE


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
    """Load the index, the encoder, the face model and the gallery that ``config`` names
    (building the index first where ``config.build`` says so)."""
    search = load_search(config) if config.index is not None else None
    faces = load_faces(config) if config.gallery is not None else None
    return Services(search, faces)


def load_search(config: ServeConfig, report: Report | None = None) -> SearchService:
    """The index folder of ``config`` and its encoder, the index built first when the folder
    has none and ``config.build`` says from what; ``report`` hears how the build goes.

    Raises:
        ValueError: no index in the folder and nothing to build it from; a bad folder.
    """
    assert config.index is not None
    folder = Path(config.index)
    if not has_index(folder):
        if config.build is None:
            raise ValueError(missing_index(folder))
        build_index(folder, config.build, report or (lambda *_: None))
    if report is not None:
        report("loading the index and its encoder", None, None)
    return SearchService.from_folder(folder)


def missing_index(folder: Path) -> str:
    """What to say of an index folder without an index."""
    what = "is a file" if folder.is_file() else "holds no index (no meta.json)"
    return (
        f"--index {folder} {what}: build one with tripletkit index --out {folder}, or let the "
        "service build it in the background with --build-index wiki (or a BEIR folder)"
    )


def load_faces(config: ServeConfig) -> FaceService:
    """The face model and the gallery of ``config``."""
    assert config.gallery is not None
    model = load_face_model(config.model if config.model is not None else "dlib")
    dim = model.config.model.dim if model.kind == "scratch" and model.config else 128
    return FaceService(
        Gallery.open(config.gallery, dim),
        model,
        dlib_detector(config.detector, config.upsample, config.detect_side),
        config.threshold,
        config.max_pixels,
        2 * config.detect_side,
    )


@dataclass
class Part:
    """One part of the service (search or faces) as it loads.

    Attributes:
        name: "search" or "faces".
        status: off, loading, building, ready, failed or stopped.
        service: the loaded service once ready.
        error: why loading failed.
        doing, done, total: what loading is doing now ("encoding the corpus", 3072, 10033).
    """

    name: str
    status: str = "off"
    service: Any = None
    error: str | None = None
    doing: str | None = None
    done: int | None = None
    total: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def report(self, doing: str, done: int | None = None, total: int | None = None) -> None:
        """What loading does now: with a count, the part is "building" the index."""
        with self._lock:
            if self.status in ("loading", "building"):
                self.status = "building" if total is not None else "loading"
                self.doing, self.done, self.total = doing, done, total

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            detail = self.error if self.status == "failed" else self.describe()
            return {"status": self.status, "detail": detail, "done": self.done, "total": self.total}

    def describe(self) -> str | None:
        """'encoding the corpus: 3,072 of 10,033 documents (31%)', or what it does."""
        if self.doing is None:
            return None
        if self.total:
            share = 100 * (self.done or 0) // self.total
            return f"{self.doing}: {self.done or 0:,} of {self.total:,} documents ({share}%)"
        return self.doing


class ServiceState:
    """The parts of the service, each as it loads; see the module docstring.

    Args:
        services: ready services (tests), or None: they are loaded with :meth:`load` or
            :meth:`load_part`.
        on_failure: called with the message when loading a part fails (``tripletkit serve``
            stops then, instead of answering 503 forever).
    """

    def __init__(
        self, services: Services | None = None, on_failure: Callable[[str], None] | None = None
    ) -> None:
        self.parts = {name: Part(name) for name in PARTS}
        self.closed = False
        self.on_failure = on_failure
        if services is not None:
            self._set(services)

    def expect(self, names: tuple[str, ...] = PARTS) -> None:
        """These parts are about to load (again)."""
        self.closed = False
        for name in names:
            self.parts[name] = Part(name, "loading")

    def load(self, loader: Callable[[], Services]) -> None:
        """Every part from one call of ``loader``."""
        try:
            services = loader()
        except Exception as err:  # reported by /health and every endpoint
            self._fail(PARTS, err)
            return
        if self.closed:
            services.close()
            return
        self._set(services)

    def load_part(self, name: str, load: Callable[[Part], Any]) -> None:
        """Part ``name`` from ``load(part)`` (which may ``part.report`` its progress)."""
        part = self.parts[name]
        try:
            service = load(part)
        except Exception as err:
            self._fail((name,), err)
            return
        with part._lock:
            if not self.closed and part.status in ("loading", "building"):
                part.service, part.status = service, "ready"
                part.doing = part.done = part.total = None
                return
        _close(service)

    @property
    def services(self) -> Services | None:
        """Every configured part's service once all are ready, else None."""
        if self.status() != "ready":
            return None
        return Services(self.parts["search"].service, self.parts["faces"].service)

    def status(self) -> str:
        """stopped, failed, loading or ready: the whole service's."""
        states = {p.status for p in self.parts.values()}
        if self.closed:
            return "stopped"
        if "failed" in states:
            return "failed"
        return "ready" if states <= {"ready", "off"} else "loading"

    def search(self) -> SearchService:
        """The search service, or the HTTP error that says why there is none."""
        found: SearchService = self._ready(
            "search", "no search index is loaded (start the service with --index)"
        )
        return found

    def faces(self) -> FaceService:
        """The face service, or the HTTP error that says why there is none."""
        found: FaceService = self._ready(
            "faces", "no face gallery is loaded (start the service with --gallery)"
        )
        return found

    def _ready(self, name: str, missing: str) -> Any:
        if self.closed:
            raise HTTPException(503, "the service has shut down")
        part = self.parts[name]
        if part.status == "ready":
            return part.service
        if part.status == "off":
            raise HTTPException(404, missing)
        if part.status == "failed":
            raise HTTPException(503, f"loading failed: {part.error}")
        if part.status == "building":
            raise HTTPException(
                503,
                f"the search index is being built ({part.describe()}); try again later",
                headers={"Retry-After": "10"},
            )
        detail = f" ({part.describe()})" if part.doing else ""
        raise HTTPException(503, f"still loading the models{detail}", headers={"Retry-After": "2"})

    def close(self) -> None:
        """Close the services; requests after this get 503 instead of waiting on them."""
        self.closed = True
        for part in self.parts.values():
            with part._lock:
                service, part.service = part.service, None
                if part.status != "off":
                    part.status = "stopped"
            _close(service)

    def _set(self, services: Services) -> None:
        for name in PARTS:
            service = getattr(services, name)
            self.parts[name] = Part(name, "ready" if service is not None else "off", service)

    def _fail(self, names: tuple[str, ...], err: Exception) -> None:
        LOG.exception("loading the service failed")
        message = f"{type(err).__name__}: {err}"
        for name in names:
            part = self.parts[name]
            with part._lock:
                part.status, part.error = "failed", message
        if self.on_failure is not None:
            self.on_failure(message)


def _close(service: Any) -> None:
    """Close a part's service: a SearchService, or a FaceService's gallery."""
    if isinstance(service, FaceService):
        service.gallery.close()
    elif service is not None:
        service.close()
