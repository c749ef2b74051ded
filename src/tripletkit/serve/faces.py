"""Faces for the service: photo bytes -> faces with boxes and embeddings, and the identify /
verify / enroll calls over a :class:`~tripletkit.serve.gallery.Gallery`.

``FaceService.photo_faces`` (decode, detect, align, embed) lives here for now; it may move to
``faces/models.py`` once the CLI needs the same from bytes.

The face model is a :class:`tripletkit.faces.models.FaceModel` (the stock pretrained dlib
descriptor, or a model folder written by training): it says what a detected face becomes for
the network (``prepare``), embeds it (``embed``) and carries its calibrated threshold: two faces
are the same person when the Euclidean distance of their unit embeddings is at most it.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..faces.align import best_face, find_faces, load_photo, to_rgb
from .gallery import FaceRecord, Gallery, Identification, Person, distance_from_similarity

MAX_PIXELS = 40_000_000
Detector = Callable[[Image.Image], list[Any]]  # image -> faces with .box and .chip


class Embedder(Protocol):
    """What the service needs of a face model (:class:`~tripletkit.faces.models.
    FaceModel` is one)."""

    @property
    def threshold(self) -> float:
        """Same person at a distance of at most this."""

    def prepare(self, image: Image.Image, face: Any) -> Any:
        """One face of an upright RGB photo -> the network's (C, H, W) uint8 input."""

    def embed(self, inputs: Any) -> np.ndarray:
        """(N, C, H, W) uint8 -> (N, d) float32 unit rows."""


class PhotoError(ValueError):
    """An upload that is not a usable photo; the message names the upload and the reason."""


@dataclass(frozen=True)
class PhotoFace:
    """A face of an uploaded photo.

    Attributes:
        box: (left, top, right, bottom) in the upright photo's pixels.
        embedding: (d,) unit float32.
        chip: (150, 150, 3) uint8 aligned RGB chip.
    """

    box: tuple[int, int, int, int]
    embedding: np.ndarray
    chip: np.ndarray


@dataclass(frozen=True)
class Photo:
    """An uploaded photo's size and faces, left to right."""

    width: int
    height: int
    faces: list[PhotoFace]


def decode_photo(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode uploaded bytes as an upright 8-bit RGB image.

    Only images Pillow identifies are decoded; one of more than ``max_pixels`` pixels is refused
    before it is decoded (Pillow's decompression-bomb guard stays on as well).

    Raises:
        PhotoError: naming ``name``: empty, not an image, truncated or corrupt, too large.
    """
    if not data:
        raise PhotoError(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                probe.verify()
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > max_pixels:
                raise PhotoError(
                    f"{name}: {image.width} x {image.height} pixels, more than {max_pixels}"
                )
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
    except PhotoError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise PhotoError(f"{name}: too large, refused as a possible decompression bomb") from err
    except UnidentifiedImageError as err:
        raise PhotoError(f"{name}: not an image file Pillow can read") from err
    except Exception as err:  # Pillow's decoders raise many types on corrupt data
        raise PhotoError(f"{name}: corrupt or truncated image data ({err})") from err


def dlib_detector(detector: str = "hog", upsample: int = 1) -> Detector:
    """:func:`tripletkit.faces.align.find_faces` with fixed options."""

    def detect(image: Image.Image) -> list[Any]:
        return find_faces(image, detector=detector, upsample=upsample)

    return detect


class FaceService:
    """Photos in, gallery answers out: what the face endpoints call.

    Args:
        gallery: the open gallery.
        model: the face model (``prepare`` and ``embed``); its calls hold one lock.
        detect: image -> faces (objects with ``box`` and ``chip``), as ``find_faces``.
        threshold: distance at or below which two faces are the same person; None: the
            model's calibrated one.
        max_pixels: larger uploads are refused.
    """

    def __init__(
        self,
        gallery: Gallery,
        model: Embedder,
        detect: Detector,
        threshold: float | None = None,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        self.gallery = gallery
        self.model = model
        self.detect = detect
        self.threshold = float(model.threshold if threshold is None else threshold)
        self.max_pixels = max_pixels
        self._lock = threading.Lock()

    def photo_faces(self, data: bytes, name: str) -> Photo:
        """Decode, detect, align and embed every face of an uploaded photo."""
        image = decode_photo(data, name, self.max_pixels)
        found = self.detect(image)
        if not found:
            return Photo(image.width, image.height, [])
        vectors = self._embed(image, found)
        faces = [
            PhotoFace(_int_box(f.box), vec, f.chip) for f, vec in zip(found, vectors, strict=True)
        ]
        return Photo(image.width, image.height, faces)

    def _embed(self, image: Image.Image, found: list[Any]) -> np.ndarray:
        """(n, d) unit embeddings of the detected faces of ``image``."""
        import torch

        inputs = torch.stack([torch.as_tensor(self.model.prepare(image, f)) for f in found])
        with self._lock:
            return np.asarray(self.model.embed(inputs), dtype=np.float32)

    def identify(self, data: bytes, name: str, k: int) -> tuple[Photo, list[Identification]]:
        """Every face of a photo with its nearest ``k`` people and the decision."""
        photo = self.photo_faces(data, name)
        if not photo.faces:
            return photo, []
        queries = np.stack([f.embedding for f in photo.faces])
        return photo, self.gallery.identify(queries, k, threshold=self.threshold)

    def verify(self, first: tuple[bytes, str], second: tuple[bytes, str]) -> tuple[float, bool]:
        """(distance, same person) between the largest faces of two photos.

        Raises:
            PhotoError: naming a photo without a face.
        """
        a, b = (self._largest(data, name) for data, name in (first, second))
        distance = float(distance_from_similarity(np.float32(a.embedding @ b.embedding)))
        return distance, distance <= self.threshold

    def enroll(self, person: str, photos: Sequence[tuple[bytes, str]], multiple: bool) -> Person:
        """Enroll the faces of ``photos`` under ``person``, all or nothing.

        Args:
            person: the name.
            photos: (bytes, upload name) pairs.
            multiple: enroll every face of a photo; otherwise a photo must hold exactly one.

        Raises:
            PhotoError: naming a photo without a face, or with several when not ``multiple``.
        """
        records = []
        for data, name in photos:
            photo = self.photo_faces(data, name)
            if not photo.faces:
                raise PhotoError(f"{name}: no face found")
            if len(photo.faces) > 1 and not multiple:
                raise PhotoError(
                    f"{name}: {len(photo.faces)} faces found; enroll photos of one face, or set "
                    "multiple=true to enroll them all under this name"
                )
            records += [
                FaceRecord(f.embedding, f.box, name, thumbnail_jpeg(f.chip)) for f in photo.faces
            ]
        return self.gallery.enroll(person, records)

    def enroll_folder(
        self,
        folder: str | Path,
        per_person: int | None = None,
        fallback: Detector | None = None,
    ) -> dict[str, int]:
        """Enroll a folder with one sub-folder of photos per person (ORL's layout), one face
        per photo: the largest detected, or, when none is, what ``fallback`` finds (default:
        the whole image, aligned by its landmarks, as ``faces.align.best_face`` does).

        Args:
            folder: the folder; sub-folder names become the names, files are read sorted.
            per_person: enroll at most this many photos of each person (None: all).
            fallback: image -> [face] when the detector finds nothing.

        Returns:
            faces enrolled per person.

        Raises:
            ValueError: naming a folder without sub-folders or a photo that cannot be read
                (``faces.align.ImageError``) or yields no face.
        """
        people = sorted(p for p in Path(folder).iterdir() if p.is_dir())
        if not people:
            raise ValueError(f"{folder}: no sub-folders (one per person) to enroll")
        done = {}
        for person in people:
            files = sorted(p for p in person.iterdir() if p.is_file())[:per_person]
            records = []
            for path in files:
                image = load_photo(path)
                found = self.detect(image) or (fallback or _whole_image)(image)
                if not found:
                    raise ValueError(f"{path}: no face found")
                face = max(found, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
                (vector,) = self._embed(image, [face])
                box, thumb = _int_box(face.box), thumbnail_jpeg(face.chip)
                records.append(FaceRecord(vector, box, path.name, thumb))
            if records:
                done[person.name] = len(self.gallery.enroll(person.name, records).faces)
        return done

    def _largest(self, data: bytes, name: str) -> PhotoFace:
        faces = self.photo_faces(data, name).faces
        if not faces:
            raise PhotoError(f"{name}: no face found")
        return max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))


def _int_box(box: Sequence[Any]) -> tuple[int, int, int, int]:
    left, top, right, bottom = (int(v) for v in box)
    return left, top, right, bottom


def _whole_image(image: Image.Image) -> list[Any]:
    """The best face of ``image``, or the whole image aligned by its landmarks."""
    face = best_face(image, whole_image_fallback=True)
    return [] if face is None else [face]


def thumbnail_jpeg(chip: np.ndarray, size: int = 96) -> bytes:
    """A small JPEG of an aligned chip, for the gallery view."""
    image = Image.fromarray(np.asarray(chip, dtype=np.uint8)).resize((size, size))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()
