"""Face detection for raw photos: OpenCV's bundled Haar cascade (prebuilt wheel, offline).

Superseded by ``tripletkit.data.align`` (dlib's HOG or CNN detector, 5 landmarks and the
aligned chip of dlib's descriptor): on the 400 ORL images the cascade finds exactly one face in
347, dlib's HOG detector in 390. Kept only while ``--detect`` still calls ``face_cropper``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image


def face_cropper(margin: float = 0.15) -> Callable[[Image.Image], Image.Image | None]:
    """A function that crops the largest frontal face of an image (None when there is none).

    Args:
        margin: extra border around the detected box, as a fraction of its size.

    Raises:
        ValueError: with an install hint when OpenCV is missing.
    """
    try:
        import cv2
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ValueError("--detect needs OpenCV: pip install 'opencv-python-headless<5'") from err
    cascade_file = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"  # type: ignore[attr-defined]
    cascade = cv2.CascadeClassifier(cascade_file)
    if cascade.empty():  # pragma: no cover
        raise ValueError("OpenCV's frontal face cascade could not be loaded")

    def crop(image: Image.Image) -> Image.Image | None:
        gray = np.asarray(image.convert("L"))
        side = min(gray.shape)
        faces = cascade.detectMultiScale(
            gray, scaleFactor=1.1, minNeighbors=5, minSize=(max(16, side // 10),) * 2
        )
        if len(faces) == 0:
            return None
        x, y, w, h = (int(v) for v in max(faces, key=lambda f: int(f[2]) * int(f[3])))
        dx, dy = int(w * margin), int(h * margin)
        box = (
            max(0, x - dx),
            max(0, y - dy),
            min(gray.shape[1], x + w + dx),
            min(gray.shape[0], y + h + dy),
        )
        return image.crop(box)

    return crop
