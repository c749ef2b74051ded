"""Face crops for the from-scratch model: the largest face of a photo, as a box crop.

Detection is dlib's (:func:`tripletkit.faces.align.find_faces`, HOG or MMOD CNN), the same the
pretrained descriptor uses. It replaced OpenCV's Haar cascade, which on the 400 ORL images
found exactly one face in 347 against HOG's 390 and gave no landmarks.
"""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from .align import find_faces


def face_cropper(
    margin: float = 0.15, detector: str = "hog"
) -> Callable[[Image.Image], Image.Image | None]:
    """A function that crops the largest face of an image (None when there is none).

    Args:
        margin: extra border around the detected box, as a fraction of its size.
        detector: "hog" or "cnn" (see :func:`tripletkit.faces.align.find_faces`).
    """

    def crop(image: Image.Image) -> Image.Image | None:
        faces = find_faces(image, detector=detector)
        if not faces:
            return None
        left, top, right, bottom = max(
            (f.box for f in faces), key=lambda b: (b[2] - b[0]) * (b[3] - b[1])
        )
        dx, dy = int((right - left) * margin), int((bottom - top) * margin)
        width, height = image.size
        return image.crop(
            (max(0, left - dx), max(0, top - dy), min(width, right + dx), min(height, bottom + dy))
        )

    return crop
