"""Bootstrap intervals over people for verification metrics averaged over folds.

With 10 test people per fold, a handful of look-alike pairs decide VAL@1e-3; resampling the
PEOPLE (not the pairs, which are not independent) shows how much the figure depends on which
people happened to be tested.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import metrics

METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "val_at_far_1e-3": lambda d, same: metrics.val_at_far(d, same, 1e-3),
    "eer": metrics.equal_error_rate,
}


def resample_people(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One bootstrap draw: as many people as there are, drawn with replacement.

    Returns:
        (index into ``labels`` of the drawn people's images, their new labels): a person
        drawn twice appears twice, under two labels (:func:`draw_pairs` leaves out the pairs
        between the two copies, which are neither same- nor different-person pairs).
    """
    people = np.unique(labels)
    drawn = rng.choice(people, size=len(people), replace=True)
    index = [np.flatnonzero(labels == p) for p in drawn]
    new = [np.full(len(ix), k) for k, ix in enumerate(index)]
    return np.concatenate(index), np.concatenate(new)


def draw_pairs(
    dist: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pair distances and same-person flags of one bootstrap draw of the people of ``dist``
    (N x N) with ``labels`` (N,), without the pairs between two copies of one person."""
    index, new = resample_people(labels, rng)
    d, same = metrics.all_pairs(dist[np.ix_(index, index)], new)
    _, was_same = metrics.all_pairs(dist[np.ix_(index, index)], labels[index])
    keep = same | ~was_same
    return d[keep], same[keep]


def fold_mean_interval(
    folds: list[tuple[np.ndarray, np.ndarray]],
    *,
    draws: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of each of :data:`METRICS` averaged over folds.

    Each draw resamples the test people of every fold (:func:`resample_people`), computes the
    metric on each fold's resampled pairs and averages over folds; the interval holds the
    central ``level`` share of the draws.

    Args:
        folds: per fold, (test embeddings (N, d), person labels (N,)).

    Returns:
        metric -> (low, high); NaN when no draw defines it.
    """
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {k: [] for k in METRICS}
    dists = [metrics.distance_matrix(e) for e, _ in folds]
    for _ in range(draws):
        per_fold: dict[str, list[float]] = {k: [] for k in METRICS}
        for dist, (_, labels) in zip(dists, folds, strict=True):
            d, same = draw_pairs(dist, labels, rng)
            for k, f in METRICS.items():
                per_fold[k].append(f(d, same))
        for k, v in per_fold.items():
            finite = [x for x in v if np.isfinite(x)]
            if finite:
                values[k].append(float(np.mean(finite)))
    tail = (1 - level) / 2 * 100
    return {
        k: (
            (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail)))
            if v
            else (float("nan"), float("nan"))
        )
        for k, v in values.items()
    }
