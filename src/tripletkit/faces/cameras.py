"""Cameras worse than the enrolment one: what a photo goes through before detection, named and
drawn at random.

A named camera is a short spec, applied to the clean image as a camera would, in this order:
blur (optics), shrink (sensor resolution), noise (sensor), JPEG (the encoder), and the image
enlarged back to its size (so that detection and alignment see a photo of the usual size):

    "x1"          the image as it is
    "x4"          shrunk 4 times with bilinear filtering and enlarged back: issue 9's low
                  resolution, the same pixels as ``chips.low_resolution(image, 4)``
    "x4q20"       shrunk 4 times, saved as JPEG at quality 20, enlarged back
    "x3b1n4q30"   blur of radius 1, shrunk 3 times, noise of std 4 (0..255), JPEG quality 30

Training draws a fresh camera per view from a :class:`CameraFamily` (ranges of each part),
seeded per (seed, image, view), so a run sees the same views wherever it runs.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

_SPEC = re.compile(
    r"x(?P<factor>\d+(?:\.\d+)?)(?:b(?P<blur>\d+(?:\.\d+)?))?(?:n(?P<noise>\d+(?:\.\d+)?))?(?:q(?P<quality>\d+))?"
)


@dataclass(frozen=True)
class Camera:
    """One camera: each part of the module docstring's chain (0: that part is skipped).

    Attributes:
        factor: shrink factor (>= 1; 1 keeps the resolution).
        blur: Gaussian blur radius in pixels of the full-size image.
        noise: standard deviation of Gaussian pixel noise, on the 0..255 scale.
        quality: JPEG quality 1..95 (0: no JPEG).
    """

    factor: float = 1.0
    blur: float = 0.0
    noise: float = 0.0
    quality: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.factor) and self.factor >= 1):
            raise ValueError(f"a camera's shrink factor must be >= 1, got {self.factor}")
        if not (self.blur >= 0 and self.noise >= 0):
            raise ValueError(f"blur and noise must be >= 0, got {self.blur} and {self.noise}")
        if not (self.quality == 0 or 1 <= self.quality <= 95):
            raise ValueError(f"JPEG quality must be 1..95 (0: none), got {self.quality}")

    @classmethod
    def parse(cls, spec: str) -> Camera:
        """The camera of a spec such as "x4q20" (module docstring).

        Raises:
            ValueError: naming the spec when it does not parse.
        """
        match = _SPEC.fullmatch(str(spec))
        if match is None:
            raise ValueError(
                f"camera {spec!r}: expected x<shrink>[b<blur>][n<noise>][q<JPEG quality>], "
                "e.g. x1, x4, x4q20, x3b1n4q30"
            )
        parts = match.groupdict()
        return cls(
            float(parts["factor"]),
            float(parts["blur"] or 0),
            float(parts["noise"] or 0),
            int(parts["quality"] or 0),
        )

    @property
    def spec(self) -> str:
        """The spec that parses back to this camera."""
        out = f"x{_number(self.factor)}"
        if self.blur:
            out += f"b{_number(self.blur)}"
        if self.noise:
            out += f"n{_number(self.noise)}"
        if self.quality:
            out += f"q{self.quality}"
        return out

    @property
    def clean(self) -> bool:
        return self == Camera()

    def apply(self, image: Image.Image, rng: np.random.Generator | None = None) -> Image.Image:
        """``image`` through this camera: the same mode and size. ``rng`` draws the noise
        (a fixed seed per image when None, so a named camera is deterministic)."""
        out = image.copy()
        width, height = out.size
        if self.blur:
            out = out.filter(ImageFilter.GaussianBlur(self.blur))
        small = (max(1, round(width / self.factor)), max(1, round(height / self.factor)))
        if small != (width, height):
            out = out.resize(small, Image.Resampling.BILINEAR)
        if self.noise:
            rng = rng if rng is not None else np.random.default_rng(0)
            base = np.asarray(out, dtype=np.float64)
            pixels = base + rng.normal(0.0, self.noise, base.shape)
            out = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), out.mode)
        if self.quality:
            out = _jpeg(out, self.quality)
        if out.size != (width, height):
            out = out.resize((width, height), Image.Resampling.BILINEAR)
        return out


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    """``image`` saved as JPEG at ``quality`` and read back (4:2:0 chroma for RGB)."""
    mode = image.mode
    source = image if mode in ("L", "RGB") else image.convert("RGB")
    buffer = io.BytesIO()
    source.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        decoded.load()
        return decoded.convert(mode) if decoded.mode != mode else decoded.copy()


def _number(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class CameraFamily:
    """Ranges to draw training cameras from: each part uniform in its [low, high] (a
    quality range low..high of integers), and applied with its probability.

    Attributes:
        factor: shrink factor range.
        blur: blur radius range; ``blur_share`` of the views are blurred.
        noise: noise std range; ``noise_share`` of the views get noise.
        quality: JPEG quality range; ``jpeg_share`` of the views are compressed.
    """

    factor: tuple[float, float] = (1.0, 1.0)
    blur: tuple[float, float] = (0.0, 0.0)
    blur_share: float = 0.0
    noise: tuple[float, float] = (0.0, 0.0)
    noise_share: float = 0.0
    quality: tuple[int, int] = (0, 0)
    jpeg_share: float = 0.0

    def draw(self, rng: np.random.Generator) -> Camera:
        """One camera of the family."""
        factor = float(rng.uniform(*self.factor))
        blur = float(rng.uniform(*self.blur)) if rng.random() < self.blur_share else 0.0
        noise = float(rng.uniform(*self.noise)) if rng.random() < self.noise_share else 0.0
        quality = 0
        if rng.random() < self.jpeg_share:
            quality = int(rng.integers(self.quality[0], self.quality[1] + 1))
        return Camera(max(1.0, factor), blur, noise, quality)


def view_rng(seed: int, image: int, view: int) -> np.random.Generator:
    """The generator of one training view: seeded by (seed, image, view)."""
    return np.random.default_rng([seed, image, view])
