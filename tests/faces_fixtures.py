"""A tiny generated folder-per-identity image set and a tiny training config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

TINY = [
    "data.height=20",
    "data.width=16",
    "data.folds=2",
    "model.stages=[4, 8]",
    "model.dim=8",
    "train.epochs=2",
    "train.p=3",
    "train.k=2",
    "train.warmup_steps=1",
    "train.threads=1",
]


def make_faces(
    root: Path, identities: int = 6, per_id: int = 4, size=(24, 20), seed=0, prefix="person"
) -> Path:
    """Each identity (``prefix`` and its number): its own random blob pattern; each image:
    shifted, noisy, rescaled."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(identities):
        pattern = rng.random(size)
        folder = root / f"{prefix}{i:02d}"
        folder.mkdir()
        for j in range(per_id):
            img = np.roll(pattern, rng.integers(-2, 3), axis=1) + 0.1 * rng.random(size)
            Image.fromarray((255 * img / img.max()).astype(np.uint8)).save(folder / f"{j}.png")
    return root
