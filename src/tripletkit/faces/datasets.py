"""The images of a faces run: ORL or a folder per identity, at a resolution factor, optionally
face-cropped, as an :class:`~tripletkit.faces.images.ImageSet`."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from .chips import low_resolution
from .config import DataConfig
from .detect import face_cropper
from .images import SUFFIXES, ImageSet, load_identities, orl_root


def load_faces(cfg: DataConfig, factor: int | None = None) -> ImageSet:
    """The configured image set: ORL or a folder per identity, optionally face-cropped, at
    resolution factor ``factor`` (default the first of ``data.lowres``; see
    :func:`tripletkit.faces.chips.low_resolution`, applied before cropping and resizing)."""
    factor = cfg.lowres[0] if factor is None else factor
    finder = face_cropper() if cfg.detect else None

    def crop(image: Image.Image) -> Image.Image | None:
        image = low_resolution(image, factor)
        return finder(image) if finder is not None else image

    if cfg.source == "orl":
        root, suffixes = orl_root(), {".pgm"}  # ORL ships one stray JPEG
    else:
        root, suffixes = Path(cfg.source), SUFFIXES
    return load_identities(
        root,
        (cfg.height, cfg.width),
        cfg.channels,
        strict=cfg.strict,
        suffixes=suffixes,
        crop=crop if (finder is not None or factor != 1) else None,
    )
