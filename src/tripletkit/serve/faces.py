"""Faces for the service: photo bytes -> faces with boxes and embeddings, and the identify /
verify / enroll calls over a :class:`~tripletkit.serve.gallery.Gallery`.

``FaceService.photo_faces`` (decode, detect, align, embed) lives here for now; it may move to
``faces/models.py`` once the CLI needs the same from bytes.

The face model is a :class:`tripletkit.faces.models.FaceModel` (the stock pretrained dlib
descriptor, or a model folder written by training): it says what a detected face becomes for
the network (``prepare``), embeds it (``embed``) and carries its calibrated threshold: two faces
are the same person when the Euclidean distance of their unit embeddings is at most it.

Photos are decoded at the size detection needs, not at their own (:func:`decode_photo`): a
JPEG through Pillow's ``draft`` (the decoder's DCT scaling: 1/2, 1/4 or 1/8 of the side), any
image then shrunk by an integer factor (``Image.reduce``) to at most :data:`DECODE_SIDE`
pixels on its longer side, twice the :data:`DETECT_SIDE` the
detector runs at, so that the chips of the smallest faces it finds keep their detail. Boxes are
given in the pixels of the photo as uploaded (upright).
"""

from __future__ import annotations

import hashlib
import io
import math
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from ..faces.align import best_face, find_faces, load_photo, to_rgb
from .gallery import (
    FaceRecord,
    Gallery,
    Identification,
    Person,
    check_name,
    distance_from_similarity,
    name_key,
)

MAX_PIXELS = 25_000_000  # a 24-megapixel camera's photos; decoding one whole takes <= 100 MB
DETECT_SIDE = 1280  # the detector runs on a copy of at most this longer side (find_faces)
DECODE_SIDE = 2 * DETECT_SIDE
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
    """An uploaded photo's size (upright, as uploaded) and faces, left to right."""

    width: int
    height: int
    faces: list[PhotoFace]


@dataclass(frozen=True)
class Decoded:
    """A photo decoded for detection.

    Attributes:
        image: upright 8-bit RGB, at most the ``max_side`` of :func:`decode_photo` on its
            longer side.
        width, height: the upright photo's own size; ``image`` is a scaled copy of it.
    """

    image: Image.Image
    width: int
    height: int

    def to_photo(self, box: Sequence[Any]) -> tuple[int, int, int, int]:
        """A box in ``image``'s pixels -> the photo's own pixels, clipped to it."""
        sx, sy = self.width / self.image.width, self.height / self.image.height
        left, top, right, bottom = (float(v) for v in box)
        return (
            min(max(round(left * sx), 0), self.width),
            min(max(round(top * sy), 0), self.height),
            min(max(round(right * sx), 0), self.width),
            min(max(round(bottom * sy), 0), self.height),
        )


_SWAPS_SIDES = {5, 6, 7, 8}  # EXIF orientations that turn the photo by 90 degrees


def decode_photo(
    data: bytes, name: str, max_pixels: int = MAX_PIXELS, max_side: int = DECODE_SIDE
) -> Decoded:
    """Decode uploaded bytes as an upright 8-bit RGB image of at most ``max_side`` pixels on
    its longer side (see the module docstring: JPEGs are decoded at a reduced scale, other
    formats decoded whole and reduced at once).

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
            image: Image.Image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise PhotoError(f"{name}: {width} x {height} pixels, more than {max_pixels}")
            swapped = image.getexif().get(ExifTags.Base.Orientation) in _SWAPS_SIDES
            image = _reduced(image, max_side)
            ImageOps.exif_transpose(image, in_place=True)  # no copy of the image
            upright = image if image.mode == "RGB" else to_rgb(image)
            if swapped:
                width, height = height, width
            return Decoded(upright, width, height)
    except PhotoError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise PhotoError(f"{name}: too large, refused as a possible decompression bomb") from err
    except UnidentifiedImageError as err:
        raise PhotoError(f"{name}: not an image file Pillow can read") from err
    except Exception as err:  # Pillow's decoders raise many types on corrupt data
        raise PhotoError(f"{name}: corrupt or truncated image data ({err})") from err


def _reduced(image: Image.Image, max_side: int) -> Image.Image:
    """``image`` decoded with its longer side at most ``max_side``: a JPEG at the smallest DCT
    scale that is not smaller than that (``draft``), then any image shrunk by the integer
    factor that brings it under (``reduce``: box averages, straight into the smaller image;
    palette and bilevel images by nearest neighbour, as averaging their indices means
    nothing)."""
    width, height = image.size
    if max(width, height) > max_side:
        scale = max_side / max(width, height)
        image.draft(None, (max(1, int(width * scale)), max(1, int(height * scale))))
    image.load()
    factor = math.ceil(max(image.size) / max_side)
    if factor <= 1:
        return image
    if image.mode in ("1", "P", "PA"):
        size = (math.ceil(image.width / factor), math.ceil(image.height / factor))
        return image.resize(size, Image.Resampling.NEAREST)
    try:
        return image.reduce(factor)
    except ValueError:  # a mode Pillow does not reduce (16-bit gray): as 8-bit RGB first
        return to_rgb(image).reduce(factor)


def dlib_detector(detector: str = "hog", upsample: int = 1, side: int = DETECT_SIDE) -> Detector:
    """:func:`tripletkit.faces.align.find_faces` with fixed options (``side``: its
    ``max_side``)."""

    def detect(image: Image.Image) -> list[Any]:
        return find_faces(image, detector=detector, upsample=upsample, max_side=side)

    return detect


@dataclass(frozen=True)
class Enrollment:
    """An enrollment computed and not yet stored (:meth:`FaceService.prepare_enrollment`).

    Attributes:
        name: the checked name.
        records: the faces to store.
        key, digest: the client's request key (or None) and a digest of the request.
        replayed: the person stored by an earlier request with ``key`` (then nothing is to
            be stored), or None.
    """

    name: str
    records: list[FaceRecord]
    key: str | None = None
    digest: str = ""
    replayed: Person | None = None


def request_digest(name: str, photos: Sequence[tuple[bytes, str]], multiple: bool) -> str:
    """A digest of what an enrollment request holds: the name's key, ``multiple``, and every
    photo's bytes in order."""
    h = hashlib.sha256(f"{name_key(name)}\n{multiple}\n".encode())
    for data, _ in photos:
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


class FaceService:
    """Photos in, gallery answers out: what the face endpoints call.

    Args:
        gallery: the open gallery.
        model: the face model (``prepare`` and ``embed``); its calls hold one lock.
        detect: image -> faces (objects with ``box`` and ``chip``), as ``find_faces``.
        threshold: distance at or below which two faces are the same person; None: the
            model's calibrated one.
        max_pixels: larger uploads are refused.
        decode_side: photos are decoded with at most this longer side.
    """

    def __init__(
        self,
        gallery: Gallery,
        model: Embedder,
        detect: Detector,
        threshold: float | None = None,
        max_pixels: int = MAX_PIXELS,
        decode_side: int = DECODE_SIDE,
    ) -> None:
        self.gallery = gallery
        self.model = model
        self.detect = detect
        self.threshold = float(model.threshold if threshold is None else threshold)
        self.max_pixels = max_pixels
        self.decode_side = decode_side
        self._lock = threading.Lock()

    def photo_faces(self, data: bytes, name: str) -> Photo:
        """Decode, detect, align and embed every face of an uploaded photo."""
        decoded = decode_photo(data, name, self.max_pixels, self.decode_side)
        image = decoded.image
        found = self.detect(image)
        if not found:
            return Photo(decoded.width, decoded.height, [])
        vectors = self._embed(image, found)
        faces = [
            PhotoFace(decoded.to_photo(f.box), vec, f.chip)
            for f, vec in zip(found, vectors, strict=True)
        ]
        return Photo(decoded.width, decoded.height, faces)

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

    def enroll(
        self,
        person: str,
        photos: Sequence[tuple[bytes, str]],
        multiple: bool,
        key: str | None = None,
    ) -> Person:
        """Enroll the faces of ``photos`` under ``person``, all or nothing.

        Args:
            person: the name.
            photos: (bytes, upload name) pairs.
            multiple: enroll every face of a photo; otherwise a photo must hold exactly one.
            key: a request key: the same request again with it stores nothing twice (see
                :meth:`~tripletkit.serve.gallery.Gallery.enroll_once`).

        Raises:
            PhotoError: naming a photo without a face, or with several when not ``multiple``.
            GalleryError: a bad name; ``key`` used for another request.
        """
        return self.commit(self.prepare_enrollment(person, photos, multiple, key))[0]

    def commit(self, enrollment: Enrollment) -> tuple[Person, bool]:
        """Store a prepared enrollment: (the person, whether it replays an earlier one)."""
        if enrollment.replayed is not None:
            return enrollment.replayed, True
        return self.gallery.enroll_once(
            enrollment.name, enrollment.records, enrollment.key, enrollment.digest
        )

    def prepare_enrollment(
        self,
        person: str,
        photos: Sequence[tuple[bytes, str]],
        multiple: bool,
        key: str | None = None,
    ) -> Enrollment:
        """The faces of ``photos`` to enroll under ``person`` (see :meth:`enroll`), computed and
        not stored; or, when ``key`` was recorded for this same request, its stored answer."""
        name = check_name(person)
        digest = request_digest(name, photos, multiple) if key is not None else ""
        if key is not None:
            earlier = self.gallery.replay(key, digest)
            if earlier is not None:
                return Enrollment(name, [], key, digest, earlier)
        records = []
        for data, upload in photos:
            photo = self.photo_faces(data, upload)
            if not photo.faces:
                raise PhotoError(f"{upload}: no face found")
            if len(photo.faces) > 1 and not multiple:
                raise PhotoError(
                    f"{upload}: {len(photo.faces)} faces found; enroll photos of one face, or set "
                    "multiple=true to enroll them all under this name"
                )
            records += [
                FaceRecord(f.embedding, f.box, upload, thumbnail_jpeg(f.chip)) for f in photo.faces
            ]
        return Enrollment(name, records, key, digest)

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
