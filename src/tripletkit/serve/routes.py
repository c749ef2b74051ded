"""The routers: request in, one call of a service, response out.

Built by factories because the limits (``k``, query length, batch size) and the tokens come
from the config. The photo endpoints are coroutines: they wait for a turn of the photo queue
(:class:`~tripletkit.serve.limits.PhotoQueue`) in the event loop, and the work runs in a
worker thread.
"""

# no "from __future__ import annotations": FastAPI reads the annotations of the routes, which
# name objects local to the router factories
import logging
import time
from typing import Annotated, Any

from fastapi import (
    APIRouter,
    Depends,
    File,
    Form,
    Header,
    HTTPException,
    Query,
    Request,
    Response,
    UploadFile,
)
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from .faces import FaceService, Photo
from .gallery import MAX_NAME_CHARS, Identification, Person
from .limits import PhotoQueue
from .middleware import ms_since
from .schemas import (
    ERRORS,
    Box,
    Deleted,
    EnrolledFaceOut,
    FaceOut,
    Health,
    IdentifyResult,
    MatchOut,
    PartHealth,
    PersonOut,
    Rename,
    SearchBatchResult,
    SearchHit,
    SearchResult,
    VerifyResult,
)
from .search import SearchService
from .security import auth
from .state import ServeConfig, ServiceState

LOG = logging.getLogger("tripletkit.serve")
MAX_KEY_CHARS = 200


def health_router(state: ServiceState) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/health", response_model=Health, responses={503: {"model": Health}})
    def health() -> Any:
        """Readiness: 200 once the models, index and gallery are loaded, 503 before; ``parts``
        says where each part is (the search index's build with its progress)."""
        status = state.status()
        parts = {name: PartHealth(**part.snapshot()) for name, part in state.parts.items()}
        searcher, face_service = (state.parts[n].service for n in ("search", "faces"))
        body = Health(
            status=status,
            search=parts["search"].status == "ready",
            faces=parts["faces"].status == "ready",
            documents=len(searcher.index.ids) if searcher is not None else None,
            faces_enrolled=len(face_service.gallery) if face_service is not None else None,
            detail=_health_detail(parts),
            parts=parts,
        )
        return body if status == "ready" else JSONResponse(body.model_dump(), 503)

    @router.get("/health/live", response_model=Health)
    def live() -> Health:
        """Liveness: 200 whenever the process answers."""
        return Health(status="alive")

    return router


def search_router(config: ServeConfig, state: ServiceState) -> APIRouter:
    router = APIRouter(prefix="/api/search", tags=["search"], responses=ERRORS)
    query = Query(min_length=1, max_length=config.max_query_chars, description="the query")
    k_query = Query(ge=1, le=config.max_k, description="number of results")

    class SearchBatch(BaseModel):
        queries: list[Annotated[str, Field(min_length=1, max_length=config.max_query_chars)]] = (
            Field(min_length=1, max_length=config.max_batch)
        )
        k: int = Field(10, ge=1, le=config.max_k)

    def searcher() -> SearchService:
        return state.search()

    @router.get("", response_model=SearchResult)
    def search(
        q: Annotated[str, query],
        k: Annotated[int, k_query] = 10,
        service: SearchService = Depends(searcher),  # noqa: B008
    ) -> SearchResult:
        """The top k documents for a text query: id, title, score, snippet, time taken."""
        start = time.perf_counter()
        hits = service.search([_not_blank(q, "q")], k)[0]
        return SearchResult(
            query=q, k=k, took_ms=ms_since(start), results=_hits(hits), note=service.snippet_note
        )

    @router.post("", response_model=SearchBatchResult)
    def search_batch(
        body: SearchBatch,
        service: SearchService = Depends(searcher),  # noqa: B008
    ) -> SearchBatchResult:
        """Several queries at once: ``{"queries": [...], "k": 10}``."""
        start = time.perf_counter()
        texts = [_not_blank(q, f"queries[{i}]") for i, q in enumerate(body.queries)]
        found = service.search(texts, body.k)
        return SearchBatchResult(
            k=body.k,
            took_ms=ms_since(start),
            results=[_hits(h) for h in found],
            note=service.snippet_note,
        )

    return router


def faces_router(config: ServeConfig, state: ServiceState, queue: PhotoQueue) -> APIRouter:
    router = APIRouter(prefix="/api/faces", tags=["faces"], responses=ERRORS)
    people_k = Query(ge=1, le=config.max_people, description="nearest people per face")
    face_id = PathParam(ge=1, le=2**62)
    writer = auth([config.token], "enroll, rename and delete")
    reader = auth([config.read_token, config.token] if config.read_token else [], "faces' reads")
    key_header = Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=MAX_KEY_CHARS,
        pattern=r"^[!-~]+$",
        description="a key of the client's choosing (printable ASCII): the same request again "
        "with it enrolls nothing twice and answers as the first time",
    )

    def service() -> FaceService:
        return state.faces()

    def read(upload: UploadFile) -> tuple[bytes, str]:
        name = _upload_name(upload)
        return upload.file.read(config.max_upload_bytes + 1), name

    @router.post("/enroll", response_model=PersonOut, status_code=201, dependencies=writer)
    async def enroll(
        request: Request,
        response: Response,
        name: Annotated[str, Form(description="the person's name", max_length=MAX_NAME_CHARS)],
        image: Annotated[list[UploadFile], File(description="one or more photos")],
        multiple: Annotated[bool, Form(description="enroll every face of a photo")] = False,
        idempotency_key: Annotated[str | None, key_header] = None,
        faces: FaceService = Depends(service),  # noqa: B008
    ) -> Any:
        """Enroll the face of each photo under a name (all photos or none; at most
        ``max_enroll_photos`` photos). Nothing is stored when the client has gone before the
        faces are computed; with ``Idempotency-Key``, a retry enrolls nothing twice."""
        await _single(request, "name", "multiple")
        if len(image) > config.max_enroll_photos:
            raise HTTPException(
                422,
                f"body field image: at most {config.max_enroll_photos} photos in one enrollment, "
                f"got {len(image)} (enroll the others in another request)",
            )
        prepared = await queue.run(
            lambda: faces.prepare_enrollment(
                name, [read(u) for u in image], multiple, idempotency_key
            )
        )
        if await request.is_disconnected():  # the client gave up: it will not learn of it
            LOG.info("enrollment not stored: the client disconnected")
            return JSONResponse({"status": 499, "detail": "client disconnected"}, 499)
        person, replayed = await run_in_threadpool(faces.commit, prepared)
        if replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return _person(person)

    @router.post("/identify", response_model=IdentifyResult, dependencies=reader)
    async def identify(
        request: Request,
        image: Annotated[UploadFile, File(description="a photo")],
        k: Annotated[int, people_k] = 3,
        faces: FaceService = Depends(service),  # noqa: B008
    ) -> IdentifyResult:
        """Every face of a photo: box, nearest people with distances, and the decision."""
        await _single(request, "image")
        start = time.perf_counter()
        photo, found = await queue.run(lambda: faces.identify(*read(image), k))
        return _identified(photo, found, faces.threshold, ms_since(start))

    @router.post("/verify", response_model=VerifyResult, dependencies=reader)
    async def verify(
        image: Annotated[list[UploadFile], File(description="exactly two photos")],
        faces: FaceService = Depends(service),  # noqa: B008
    ) -> VerifyResult:
        """Whether the largest faces of two photos are the same person."""
        if len(image) != 2:
            raise HTTPException(422, f"verify needs exactly 2 photos in 'image', got {len(image)}")
        start = time.perf_counter()
        distance, same = await queue.run(lambda: faces.verify(read(image[0]), read(image[1])))
        return VerifyResult(
            distance=distance, same=same, threshold=faces.threshold, took_ms=ms_since(start)
        )

    @router.get("/people", response_model=list[PersonOut], dependencies=reader)
    def people(faces: FaceService = Depends(service)) -> list[PersonOut]:  # noqa: B008
        """Everyone enrolled, by name (case and width ignored), with their faces."""
        return [_person(p) for p in faces.gallery.people()]

    @router.get("/people/{name}", response_model=PersonOut, dependencies=reader)
    def person(name: str, faces: FaceService = Depends(service)) -> PersonOut:  # noqa: B008
        """One person and their faces (the name compared without case and width)."""
        return _person(faces.gallery.person(name))

    @router.patch("/people/{name}", response_model=PersonOut, dependencies=writer)
    def rename(
        name: str,
        body: Rename,
        faces: FaceService = Depends(service),  # noqa: B008
    ) -> PersonOut:
        """Rename a person: ``{"name": "new name"}``."""
        return _person(faces.gallery.rename(name, body.name))

    @router.delete("/people/{name}", response_model=Deleted, dependencies=writer)
    def delete(name: str, faces: FaceService = Depends(service)) -> Deleted:  # noqa: B008
        """Remove a person and all their faces."""
        stored = faces.gallery.person(name).name
        return Deleted(name=stored, faces=faces.gallery.delete(stored))

    @router.get(
        "/faces/{face}/thumbnail.jpg",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}},
        dependencies=reader,
    )
    def thumbnail(
        face: Annotated[int, face_id],
        faces: FaceService = Depends(service),  # noqa: B008
    ) -> Response:
        """The aligned chip of an enrolled face, as a small JPEG."""
        return Response(faces.gallery.thumbnail(face), media_type="image/jpeg")

    return router


# --- conversions -------------------------------------------------------------------------------


async def _single(request: Request, *fields: str) -> None:
    """Refuse a form that gives one of ``fields`` more than once (the last one was used,
    silently). The form is the one FastAPI parsed already."""
    form = await request.form()
    for name in fields:
        count = len(form.getlist(name))
        if count > 1:
            raise HTTPException(422, f"body field {name}: give it once, got {count}")


def _health_detail(parts: dict[str, PartHealth]) -> str | None:
    """One line of what the parts that are not ready are doing, or why they failed."""
    said = [
        f"{name}: {part.status}" + (f" ({part.detail})" if part.detail else "")
        for name, part in parts.items()
        if part.status not in ("ready", "off")
    ]
    return "; ".join(said) or None


def _not_blank(text: str, what: str) -> str:
    """``text`` unless blank. (Lone surrogates never arrive: pydantic refuses them in JSON,
    and query strings that are not UTF-8 are refused before.)"""
    if not text.strip():
        raise HTTPException(422, f"{what} is blank")
    return text


def _upload_name(upload: UploadFile) -> str:
    """The upload's file name for messages only (never a path): printable, at most 100 chars."""
    raw = upload.filename or "image"
    clean = "".join(c if c.isprintable() else "?" for c in raw.replace("\\", "/").split("/")[-1])
    return clean[:100] or "image"


def _hits(hits: list[Any]) -> list[SearchHit]:
    return [SearchHit(id=h.id, title=h.title, score=h.score, snippet=h.snippet) for h in hits]


def _box(box: tuple[int, int, int, int]) -> Box:
    return Box(left=box[0], top=box[1], right=box[2], bottom=box[3])


def _person(person: Person) -> PersonOut:
    return PersonOut(
        name=person.name,
        created=person.created,
        faces=[
            EnrolledFaceOut(
                id=f.id,
                box=_box(f.box) if f.box else None,
                source=f.source,
                thumbnail=f"/api/faces/faces/{f.id}/thumbnail.jpg" if f.has_thumbnail else None,
            )
            for f in person.faces
        ],
    )


def _identified(
    photo: Photo, found: list[Identification], threshold: float, took: float
) -> IdentifyResult:
    faces = [
        FaceOut(
            box=_box(face.box),
            name=who.name,
            decision=who.name or "unknown",
            distance=who.distance if who.matches else None,
            matches=[MatchOut(name=m.name, distance=m.distance) for m in who.matches],
        )
        for face, who in zip(photo.faces, found, strict=True)
    ]
    return IdentifyResult(
        width=photo.width, height=photo.height, threshold=threshold, took_ms=took, faces=faces
    )
