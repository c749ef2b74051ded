"""The routers: request in, one call of a service, response out.

Built by factories because the limits (``k``, query length, batch size) come from the config.
"""

# no "from __future__ import annotations": FastAPI reads the annotations of the routes, which
# name objects local to the router factories
import hmac
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Response, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from .faces import FaceService, Photo
from .gallery import Identification, Person
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
    PersonOut,
    Rename,
    SearchBatchResult,
    SearchHit,
    SearchResult,
    VerifyResult,
)
from .search import SearchService
from .state import ServeConfig, ServiceState


def health_router(state: ServiceState) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/health", response_model=Health, responses={503: {"model": Health}})
    def health() -> Any:
        """Readiness: 200 once the models, index and gallery are loaded, 503 before."""
        if state.services is None:
            status = "stopped" if state.closed else "failed" if state.error else "loading"
            return JSONResponse(Health(status=status, detail=state.error).model_dump(), 503)
        s = state.services
        return Health(
            status="ready",
            search=s.search is not None,
            faces=s.faces is not None,
            documents=len(s.search.index.ids) if s.search else None,
            faces_enrolled=len(s.faces.gallery) if s.faces else None,
        )

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
        found = state.ready().search
        if found is None:
            raise HTTPException(404, "no search index is loaded (start the service with --index)")
        return found

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


def faces_router(config: ServeConfig, state: ServiceState) -> APIRouter:
    router = APIRouter(prefix="/api/faces", tags=["faces"], responses=ERRORS)
    bearer = HTTPBearer(auto_error=False, description="needed when the service has a token")
    people_k = Query(ge=1, le=config.max_people, description="nearest people per face")
    face_id = PathParam(ge=1, le=2**62)

    def service() -> FaceService:
        found = state.ready().faces
        if found is None:
            raise HTTPException(404, "no face gallery is loaded (start the service with --gallery)")
        return found

    def writer(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> None:
        if config.token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), config.token.encode()):
            raise HTTPException(
                401,
                "this endpoint needs the header Authorization: Bearer <token>"
                if not given
                else "wrong token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def read(upload: UploadFile) -> tuple[bytes, str]:
        name = _upload_name(upload)
        return upload.file.read(config.max_upload_bytes + 1), name

    @router.post(
        "/enroll", response_model=PersonOut, status_code=201, dependencies=[Depends(writer)]
    )
    def enroll(
        name: Annotated[str, Form(description="the person's name", max_length=200)],
        image: Annotated[list[UploadFile], File(description="one or more photos")],
        multiple: Annotated[bool, Form(description="enroll every face of a photo")] = False,
        faces: FaceService = Depends(service),  # noqa: B008
    ) -> PersonOut:
        """Enroll the face of each photo under a name (all photos or none)."""
        return _person(faces.enroll(name, [read(u) for u in image], multiple))

    @router.post("/identify", response_model=IdentifyResult)
    def identify(
        image: Annotated[UploadFile, File(description="a photo")],
        k: Annotated[int, people_k] = 3,
        faces: FaceService = Depends(service),  # noqa: B008
    ) -> IdentifyResult:
        """Every face of a photo: box, nearest people with distances, and the decision."""
        start = time.perf_counter()
        photo, found = faces.identify(*read(image), k)
        return _identified(photo, found, faces.threshold, ms_since(start))

    @router.post("/verify", response_model=VerifyResult)
    def verify(
        image: Annotated[list[UploadFile], File(description="exactly two photos")],
        faces: FaceService = Depends(service),  # noqa: B008
    ) -> VerifyResult:
        """Whether the largest faces of two photos are the same person."""
        if len(image) != 2:
            raise HTTPException(422, f"verify needs exactly 2 photos in 'image', got {len(image)}")
        start = time.perf_counter()
        distance, same = faces.verify(read(image[0]), read(image[1]))
        return VerifyResult(
            distance=distance, same=same, threshold=faces.threshold, took_ms=ms_since(start)
        )

    @router.get("/people", response_model=list[PersonOut])
    def people(faces: FaceService = Depends(service)) -> list[PersonOut]:  # noqa: B008
        """Everyone enrolled, by name, with their faces."""
        return [_person(p) for p in faces.gallery.people()]

    @router.get("/people/{name}", response_model=PersonOut)
    def person(name: str, faces: FaceService = Depends(service)) -> PersonOut:  # noqa: B008
        """One person and their faces."""
        return _person(faces.gallery.person(name))

    @router.patch("/people/{name}", response_model=PersonOut, dependencies=[Depends(writer)])
    def rename(
        name: str,
        body: Rename,
        faces: FaceService = Depends(service),  # noqa: B008
    ) -> PersonOut:
        """Rename a person: ``{"name": "new name"}``."""
        return _person(faces.gallery.rename(name, body.name))

    @router.delete("/people/{name}", response_model=Deleted, dependencies=[Depends(writer)])
    def delete(name: str, faces: FaceService = Depends(service)) -> Deleted:  # noqa: B008
        """Remove a person and all their faces."""
        return Deleted(name=name, faces=faces.gallery.delete(name))

    @router.get(
        "/faces/{face}/thumbnail.jpg",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}},
    )
    def thumbnail(
        face: Annotated[int, face_id],
        faces: FaceService = Depends(service),  # noqa: B008
    ) -> Response:
        """The aligned chip of an enrolled face, as a small JPEG."""
        return Response(faces.gallery.thumbnail(face), media_type="image/jpeg")

    return router


# --- conversions -------------------------------------------------------------------------------


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


def _not_blank(text: str, what: str) -> str:
    """``text`` unless blank. (Lone surrogates never arrive: pydantic refuses them in JSON,
    and query strings are decoded with replacement characters.)"""
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
