"""Photos -> faces as a model's inputs: what ``embed``, ``cluster`` and ``verify`` share.

Without detection each photo is one face (the model aligns it as it was trained: the dlib
descriptor aligns the best face of the photo, the whole photo when none is found). With
detection every face of every photo is a row, left to right; a photo with no face is reported
by name and left out.

A photo that cannot be used (missing, a broken symbolic link, not an image, truncated, over
Pillow's decompression-bomb limit, or no face found) is reported by a warning naming the file
and what happened, or, with ``strict``, by one ValueError naming them all; nothing is written.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from .align import ImageError, find_faces, load_photo
from .images import SUFFIXES

if TYPE_CHECKING:
    from PIL import Image

    from .align import Face

Box = tuple[int, int, int, int]
Prepare = Callable[["Image.Image", "Face | None"], torch.Tensor]


@dataclass(frozen=True)
class PhotoFace:
    """One face of one photo.

    Attributes:
        path: the photo file.
        index: the face's number in the photo, left to right (0 without detection).
        box: (left, top, right, bottom) in the upright photo's pixels, right and bottom
            exclusive; without detection the box of the face the model took (the whole photo
            for a scratch model, or where no face was found).
        score: the detector's confidence (NaN for the whole photo).
        detected: found by the detector (else the photo is taken as one face).
    """

    path: str
    index: int
    box: Box
    score: float
    detected: bool

    @property
    def name(self) -> str:
        """``path``, or ``path#index`` for a face found by detection."""
        return f"{self.path}#{self.index}" if self.detected else self.path


def list_photos(folder: str | Path) -> list[Path]:
    """Every file under ``folder`` (recursively) whose name ends in an image suffix, sorted,
    broken symbolic links included (they are reported when read).

    Raises:
        ValueError: no such folder, or no image file in it.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"photo folder not found: {root}")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in SUFFIXES and (p.is_file() or (p.is_symlink() and not p.exists()))
    )
    if not files:
        raise ValueError(f"no image files in {root} (looked for {', '.join(sorted(SUFFIXES))})")
    return files


def read_faces(
    paths: Sequence[str | Path],
    prepare: Prepare,
    *,
    detect: bool = False,
    detector: str = "hog",
    one_face: Callable[[Image.Image], Face | None] | None = None,
    strict: bool = False,
    progress: bool = True,
) -> tuple[list[PhotoFace], torch.Tensor]:
    """The faces of ``paths`` and their model inputs.

    Args:
        paths: photo files.
        prepare: (photo, face or None) -> one model input (C, H, W) uint8
            (:meth:`tripletkit.faces.models.FaceModel.prepare`).
        detect: every face of each photo (dlib's detector, aligned); otherwise the photo is
            one face: ``one_face(photo)``, whose box is recorded.
        detector: "hog" or "cnn" (see :func:`tripletkit.faces.align.find_faces`).
        one_face: without ``detect``, the face a model takes from a photo
            (:meth:`tripletkit.faces.models.FaceModel.one_face`); None, or None returned: the
            whole photo.
        strict: an unusable photo is an error instead of a warning.
        progress: a progress bar over the photos.

    Returns:
        (faces, inputs): inputs (N, C, H, W) uint8, row i the input of faces[i].

    Raises:
        ValueError: with ``strict``, naming every unusable photo; without it, when no photo
            gave a face.
    """
    faces: list[PhotoFace] = []
    inputs: list[torch.Tensor] = []
    problems: list[str] = []
    for path in tqdm(paths, desc="photos", unit="photo", disable=not progress, leave=False):
        try:
            photo = load_photo(path)
        except ImageError as err:
            problems.append(str(err))
            continue
        if not detect:
            face = one_face(photo) if one_face else None
            box = face.box if face else (0, 0, *photo.size)
            score = float(face.score) if face else float("nan")
            faces.append(PhotoFace(str(path), 0, box, score, False))
            inputs.append(prepare(photo, face))
            continue
        found = find_faces(photo, detector=detector)
        if not found:
            problems.append(f"{path}: no face found")
        for i, face in enumerate(found):
            faces.append(PhotoFace(str(path), i, face.box, float(face.score), True))
            inputs.append(prepare(photo, face))
    _report(problems, strict)
    if not faces:
        raise ValueError(f"no face in any of the {len(paths)} photo(s)")
    return faces, torch.stack(inputs)


def _report(problems: list[str], strict: bool) -> None:
    """One warning per problem, or (``strict``) one ValueError naming them."""
    if not problems:
        return
    if strict:
        listing = "; ".join(problems[:20])
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        raise ValueError(f"{len(problems)} unusable photo(s): {listing}{more}")
    for problem in problems:
        warnings.warn(f"skipped {problem}", stacklevel=3)
