"""Degraded training views of a face dataset: each image through several cameras drawn from a
:class:`~tripletkit.faces.cameras.CameraFamily`, then aligned, computed once and cached.

View v of image i goes through the camera drawn by ``view_rng(seed, i, v)``, applied to the
clean photo before alignment, as a camera would. Alignment (``align``):

- "box": the face box is found once, on the clean photo (``detector``), and the 5 landmarks
  and the chip come from the degraded photo inside that box: the landmarks carry the
  degradation's errors, and no detector runs per view (dlib's CNN detector costs about 0.4 s
  an image on 2 cores);
- "detect": the detector runs on every degraded photo (the whole photo as the box when it
  finds nothing), as at test time.

The cache is ``$TRIPLETKIT_CACHE/views/<key>.npz``, keyed like the chips
(:func:`tripletkit.faces.chips.cache_key`) on the files and every setting.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from .align import DETECTORS, Face, ImageError, best_face, face_in_box, load_photo
from .cameras import CameraFamily, view_rng
from .chips import (
    CHIP_PADDING,
    CHIP_SIZE,
    UPSAMPLE,
    cache_key,
    read_arrays,
    source_files,
    write_arrays,
)
from .pretrained import cache_dir

ALIGNMENTS = ("box", "detect")


@dataclass(frozen=True)
class ViewSettings:
    """Which views are cut, and how (module docstring)."""

    family: CameraFamily
    views: int
    seed: int = 0
    detector: str = "cnn"
    align: str = "box"
    upsample: int = UPSAMPLE
    size: int = CHIP_SIZE
    padding: float = CHIP_PADDING

    def __post_init__(self) -> None:
        if self.views < 1:
            raise ValueError(f"views must be at least 1, got {self.views}")
        if self.detector not in DETECTORS:
            raise ValueError(f"detector must be one of {DETECTORS}, got {self.detector!r}")
        if self.align not in ALIGNMENTS:
            raise ValueError(f"align must be one of {ALIGNMENTS}, got {self.align!r}")


@dataclass(frozen=True)
class ViewSet:
    """The views of every readable image.

    Attributes:
        chips: (N, V, 3, size, size) uint8 RGB.
        cameras: (N, V) the spec of each view's camera.
        labels: (N,) indices into ``names``.
        names: identities, sorted.
        paths: each image's file.
    """

    chips: Tensor
    cameras: list[list[str]]
    labels: Tensor
    names: list[str]
    paths: list[str]


def load_views(
    source: str,
    settings: ViewSettings,
    *,
    cache: str | Path | None = None,
    progress: bool = True,
) -> ViewSet:
    """The degraded views of every image of ``source`` ("orl" or a folder per identity),
    from the cache when it holds them. Unreadable images are left out, as by
    :func:`tripletkit.faces.chips.load_chips` (which reports them)."""
    root, groups = source_files(source)
    files = [path for _, paths in groups for path in paths]
    key = cache_key(root, files, dataclasses.asdict(settings))
    path = (Path(cache) if cache is not None else cache_dir()) / "views" / f"{key}.npz"
    stored = read_arrays(path, ("chips", "cameras", "labels", "names", "paths"))
    if stored is None:
        stored = _compute(root, groups, settings, progress)
        write_arrays(path, stored)
    return ViewSet(
        torch.from_numpy(np.ascontiguousarray(stored["chips"])),
        [[str(c) for c in row] for row in stored["cameras"]],
        torch.from_numpy(stored["labels"].astype(np.int64)),
        [str(n) for n in stored["names"]],
        [str(root / p) for p in stored["paths"]],
    )


def _compute(
    root: Path, groups: list[tuple[str, list[Path]]], settings: ViewSettings, progress: bool
) -> dict[str, np.ndarray]:
    chips, cameras, owners, paths = [], [], [], []
    jobs = [(name, path) for name, files in groups for path in files]
    desc = f"cutting {settings.views} degraded views per image"
    for i, (name, path) in enumerate(tqdm(jobs, desc=desc, disable=not progress, leave=False)):
        try:
            photo = load_photo(path)
        except ImageError:
            continue
        clean = _best(photo, settings)
        if clean is None:
            continue
        row, specs = [], []
        for v in range(settings.views):
            rng = view_rng(settings.seed, i, v)
            camera = settings.family.draw(rng)
            degraded = camera.apply(photo, rng)
            if settings.align == "box":
                face = face_in_box(
                    degraded, clean.box, size=settings.size, padding=settings.padding
                )
            else:
                face = _best(degraded, settings) or clean
            row.append(face.chip.transpose(2, 0, 1))
            specs.append(camera.spec)
        chips.append(np.stack(row))
        cameras.append(specs)
        owners.append(name)
        paths.append(str(path.relative_to(root)))
    if not chips:
        raise ValueError(f"no readable images in {root}")
    names = sorted(set(owners))
    index = {n: k for k, n in enumerate(names)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "chips": np.stack(chips),
            "cameras": np.array(cameras, dtype=str),
            "labels": np.array([index[n] for n in owners], dtype=np.int64),
            "names": np.array(names, dtype=str),
            "paths": np.array(paths, dtype=str),
        }


def _best(image: Image.Image, settings: ViewSettings) -> Face | None:
    return best_face(
        image,
        whole_image_fallback=True,
        detector=settings.detector,
        upsample=settings.upsample,
        size=settings.size,
        padding=settings.padding,
    )
