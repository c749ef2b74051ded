"""The JSON bodies of the service's responses (and so of its OpenAPI schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from .gallery import MAX_NAME_CHARS


class ErrorBody(BaseModel):
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = None


class PartHealth(BaseModel):
    status: str = Field(description="off, loading, building, ready, failed or stopped")
    detail: str | None = Field(default=None, description="what it does, or why it failed")
    done: int | None = Field(default=None, description="building: documents encoded")
    total: int | None = Field(default=None, description="building: documents in all")


class Health(BaseModel):
    status: str = Field(description="ready, loading, failed, stopped (alive: /health/live)")
    search: bool = Field(default=False, description="search is ready")
    faces: bool = Field(default=False, description="faces are ready")
    documents: int | None = None
    faces_enrolled: int | None = None
    detail: str | None = None
    parts: dict[str, PartHealth] = Field(default_factory=dict)


class SearchHit(BaseModel):
    id: str
    title: str
    score: float
    snippet: str | None


class SearchResult(BaseModel):
    query: str
    k: int
    took_ms: float
    results: list[SearchHit]
    note: str | None = None


class SearchBatchResult(BaseModel):
    k: int
    took_ms: float
    results: list[list[SearchHit]]
    note: str | None = None


class Box(BaseModel):
    left: int
    top: int
    right: int
    bottom: int


class MatchOut(BaseModel):
    name: str
    distance: float


class FaceOut(BaseModel):
    box: Box
    name: str | None = Field(description="the person, or null when unknown")
    decision: str = Field(description="the person's name or 'unknown'")
    distance: float | None = Field(description="distance to the nearest person; null if none")
    matches: list[MatchOut]


class IdentifyResult(BaseModel):
    width: int
    height: int
    threshold: float
    took_ms: float
    faces: list[FaceOut]


class VerifyResult(BaseModel):
    distance: float
    same: bool
    threshold: float
    took_ms: float


class EnrolledFaceOut(BaseModel):
    id: int
    box: Box | None
    source: str | None
    thumbnail: str | None = Field(description="URL of the aligned chip's JPEG")


class PersonOut(BaseModel):
    name: str
    created: float
    faces: list[EnrolledFaceOut]


class Deleted(BaseModel):
    name: str
    faces: int


class Rename(BaseModel):
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS, description="the new name")


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 422, 503)
}
