"""Aligned face chips of a folder-per-identity dataset (or ORL), computed once and cached.

Each image is read with :func:`~tripletkit.faces.align.load_photo` (optionally made low
resolution first, :func:`low_resolution`) and cut into dlib's aligned 150 x 150 RGB chip by
:func:`~tripletkit.faces.align.best_face` with the whole image as the box when no face is found:
the protocol of issue 9 (HOG detector on the image upscaled 2x, 5-point landmarks, gray copied
to RGB). That costs about 70-100 ms per image on one core, so the chips are cached.

The cache is ``$TRIPLETKIT_CACHE/chips/<key>.npz`` (see
:func:`tripletkit.faces.pretrained.cache_dir`), written atomically. ``key`` is the SHA-256 of
every source file's relative path and contents, the alignment settings, the low-resolution
factor, and the versions of dlib, Pillow and numpy and :data:`CACHE_FORMAT`: any change to one
of them computes the chips again, and nothing else does.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .._io import atomic_write
from .align import ImageError, best_face, load_photo
from .images import SUFFIXES, ImageSet, list_identities, orl_root
from .pretrained import cache_dir

CACHE_FORMAT = "2"  # 2: paths stored relative to the source folder
CHIP_SIZE = 150
CHIP_PADDING = 0.25
UPSAMPLE = 1  # the HOG detector runs on the image upscaled 2x


@dataclass(frozen=True)
class ChipSettings:
    """How chips are cut.

    Attributes:
        lowres: shrink factor of :func:`low_resolution` applied before detection (1: none).
        detector: "hog" or "cnn" (see :func:`~tripletkit.faces.align.find_faces`).
        upsample: doublings of the image before detection (1: upscaled 2x).
        size: chip side in pixels.
        padding: border around the template face, a fraction of its size.
    """

    lowres: int = 1
    detector: str = "hog"
    upsample: int = UPSAMPLE
    size: int = CHIP_SIZE
    padding: float = CHIP_PADDING


def low_resolution(image: Image.Image, factor: int = 4) -> Image.Image:
    """The camera-domain shift of issue 9: ``image`` shrunk ``factor`` times with bilinear
    filtering (Pillow's, which averages over the shrunk pixel's footprint), then enlarged back
    to its size with bilinear interpolation.

    Args:
        image: any mode; the result has the same mode and size.
        factor: shrink factor (>= 1; 1 returns a copy). Each side becomes
            ``max(1, round(side / factor))`` pixels before it is enlarged back.

    Raises:
        ValueError: ``factor`` below 1.
    """
    if factor < 1:
        raise ValueError(f"the low-resolution factor must be >= 1, got {factor}")
    if factor == 1:
        return image.copy()
    width, height = image.size
    small = (max(1, round(width / factor)), max(1, round(height / factor)))
    shrunk = image.resize(small, Image.Resampling.BILINEAR)
    return shrunk.resize((width, height), Image.Resampling.BILINEAR)


def source_files(source: str) -> tuple[Path, list[tuple[str, list[Path]]]]:
    """The root and (identity, image files) of ``source``: "orl" (its ``.pgm`` files) or a
    folder with one sub-folder per identity."""
    if source == "orl":
        root = orl_root()
        return root, list_identities(root, {".pgm"})  # ORL ships one stray JPEG
    root = Path(source)
    return root, list_identities(root, SUFFIXES)


def cache_key(root: Path, files: list[Path], settings: ChipSettings | dict[str, Any]) -> str:
    """SHA-256 (hex) of the files' paths relative to ``root`` and their bytes, ``settings``,
    the package versions that shape a chip and :data:`CACHE_FORMAT`."""
    digest = hashlib.sha256()
    header = {
        "format": CACHE_FORMAT,
        "settings": settings if isinstance(settings, dict) else settings.__dict__,
        "versions": {p: _version(p) for p in ("dlib-bin", "pillow", "numpy")},
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        try:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        except OSError as err:  # unreadable: keyed on the error, reported when chipped
            digest.update(f"unreadable {err.strerror}".encode())
    return digest.hexdigest()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


def load_chips(
    source: str,
    settings: ChipSettings = ChipSettings(),
    *,
    cache: str | Path | None = None,
    strict: bool = False,
    progress: bool = True,
) -> ImageSet:
    """Aligned chips of every image of ``source``, from the cache when it holds them.

    Args:
        source: "orl" or a folder with one sub-folder per identity.
        settings: how chips are cut.
        cache: cache folder (default ``$TRIPLETKIT_CACHE``, see the module docstring).
        strict: an unreadable image is an error instead of a warning.
        progress: a progress bar while chips are computed.

    Returns:
        an :class:`ImageSet` whose images are (N, 3, size, size) uint8 RGB chips, labels index
        ``names`` (identities with a readable image, sorted), ``paths`` the source files.

    Raises:
        ValueError: a missing or empty folder, no readable image, or (``strict``) any
            unreadable one, naming the files.
    """
    root, groups = source_files(source)
    files = [path for _, paths in groups for path in paths]
    key = cache_key(root, files, settings)
    path = (Path(cache) if cache is not None else cache_dir()) / "chips" / f"{key}.npz"
    stored = read_arrays(path, _KEYS)
    if stored is None:
        stored = _compute(root, groups, settings, progress)
        write_arrays(path, stored)
    # paths are stored relative to the source folder: the same files elsewhere (another
    # checkout, another virtual environment) share the cache
    problems = [
        (str(root / p), why) for p, why in zip(stored["bad"], stored["bad_why"], strict=True)
    ]
    _report(problems, strict)
    names = [str(n) for n in stored["names"]]
    if not names:
        raise ValueError(f"no readable images in {root}")
    listing = {name: [str(p) for p in paths] for name, paths in groups}
    return ImageSet(
        # contiguous (N, C, H, W) whether computed (stacked from (H, W, C) chips) or read: the
        # memory layout picks the convolution code path, and its rounding
        torch.from_numpy(np.ascontiguousarray(stored["chips"])),
        torch.from_numpy(stored["labels"].astype(np.int64)),
        names,
        [str(root / p) for p in stored["paths"]],
        listing,
    )


def _compute(
    root: Path, groups: list[tuple[str, list[Path]]], settings: ChipSettings, progress: bool
) -> dict[str, np.ndarray]:
    """Chips, labels, names and paths (relative to ``root``) of the readable files; the others
    with their reason."""
    chips, owners, paths, bad, bad_why = [], [], [], [], []
    jobs = [(name, path) for name, files in groups for path in files]
    desc = "aligning chips" + (
        f" (low resolution x{settings.lowres})" if settings.lowres > 1 else ""
    )
    for name, path in tqdm(jobs, desc=desc, disable=not progress, leave=False):
        try:
            image = low_resolution(load_photo(path), settings.lowres)
        except ImageError as err:
            bad.append(str(path.relative_to(root)))
            bad_why.append(err.reason)
            continue
        face = best_face(
            image,
            whole_image_fallback=True,
            detector=settings.detector,
            upsample=settings.upsample,
            size=settings.size,
            padding=settings.padding,
        )
        if face is None:  # only for an empty image
            bad.append(str(path.relative_to(root)))
            bad_why.append("empty image")
            continue
        chips.append(face.chip.transpose(2, 0, 1))
        owners.append(name)
        paths.append(str(path.relative_to(root)))
    names = sorted(set(owners))
    index = {n: i for i, n in enumerate(names)}
    size = settings.size
    return {
        "chips": np.stack(chips) if chips else np.zeros((0, 3, size, size), np.uint8),
        "labels": np.array([index[n] for n in owners], dtype=np.int64),
        "names": np.array(names, dtype=str),
        "paths": np.array(paths, dtype=str),
        "bad": np.array(bad, dtype=str),
        "bad_why": np.array(bad_why, dtype=str),
    }


def _report(problems: list[tuple[str, str]], strict: bool) -> None:
    if problems and strict:
        listing = "; ".join(f"{p}: {why}" for p, why in problems[:20])
        raise ValueError(f"{len(problems)} image(s) could not be used: {listing}")
    for path, why in problems:
        warnings.warn(f"skipped {path}: {why}", stacklevel=3)


_KEYS = ("chips", "labels", "names", "paths", "bad", "bad_why")


def read_arrays(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The arrays ``keys`` stored in the ``.npz`` at ``path``, or None when it is absent,
    unreadable, damaged or lacks one of them (the caller then computes them again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {k: stored[k] for k in keys}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def write_arrays(path: Path, arrays: dict[str, Any]) -> None:
    """``arrays`` as an ``.npz`` at ``path``, atomically."""

    def write(tmp: Path) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        tmp.write_bytes(buffer.getvalue())

    atomic_write(path, write)
