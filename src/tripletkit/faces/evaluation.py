"""Scoring one fold of a faces run: the baselines (raw pixels, eigenfaces), and every metric of
a method's embeddings on the test people, thresholds chosen on the calibration people."""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA

from . import metrics
from .images import ImageSet
from .runs import Fold

Embeddings = dict[str, dict[str, np.ndarray]]
"""method -> {"calib": the calibration people's embeddings (validation people, or training
people when there are none), "test": the test people's, and optionally "gallery": the test
people's images through another camera, row for row (a clean gallery for a degraded "test")}."""


def calibration_index(fold: Fold) -> np.ndarray:
    """The images thresholds are chosen on: the validation people's, else the training's."""
    return fold.val if len(fold.val) else fold.train


def baselines(data: ImageSet, fold: Fold, parts: dict[str, np.ndarray]) -> Embeddings:
    """ "pixels" (raw pixel vectors) and "eigenfaces" (whitened PCA, up to 100 components,
    fitted on the training and validation people's images, rows made unit length)."""
    pixels = data.images.flatten(1).float().numpy() / 255.0
    fit_on = np.concatenate([fold.train, fold.val])
    pca = PCA(n_components=min(100, len(fit_on) - 1), whiten=True, random_state=0)
    pca.fit(pixels[fit_on])
    return {
        "pixels": {k: pixels[v] for k, v in parts.items()},
        "eigenfaces": {k: _unit(pca.transform(pixels[v])) for k, v in parts.items()},
    }


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def score(
    calib_emb: np.ndarray,
    calib_labels: np.ndarray,
    test_emb: np.ndarray,
    test_labels: np.ndarray,
    seed: int,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, float]:
    """Every metric of one method on one fold; the clustering threshold of "k unknown" is
    chosen on the calibration people."""
    dist = metrics.distance_matrix(test_emb)
    out = metrics.verification(dist, test_labels, seed=seed, pairs=pairs)
    out.update(metrics.identification(dist, test_labels))
    n_people = len(np.unique(test_labels))
    known = metrics.agglomerative(dist, n_clusters=n_people)
    out.update(metrics.clustering_scores(test_labels, known))
    threshold = metrics.clustering_threshold(metrics.distance_matrix(calib_emb), calib_labels)
    unknown = metrics.agglomerative(dist, threshold=threshold)
    out.update(
        {f"{k}_unknown_k": v for k, v in metrics.clustering_scores(test_labels, unknown).items()}
    )
    out["clusters_unknown_k"] = float(len(np.unique(unknown)))
    return out


def fold_pairs(
    pairs: tuple[np.ndarray, np.ndarray], fold: Fold
) -> tuple[np.ndarray, np.ndarray] | None:
    """The pairs whose two images are both in the fold's test set, re-indexed into it."""
    where = {int(g): i for i, g in enumerate(fold.test)}
    keep = [k for k, (a, b) in enumerate(pairs[0]) if int(a) in where and int(b) in where]
    if not keep:
        return None
    idx = np.array([[where[int(a)], where[int(b)]] for a, b in pairs[0][keep]])
    return idx, pairs[1][keep]
