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


def _finite_mean(values: list[float]) -> float:
    """The mean of the finite values (NaN when there are none)."""
    finite = [x for x in values if np.isfinite(x)]
    return float(np.mean(finite)) if finite else float("nan")


def _percentile_interval(values: list[float], level: float) -> tuple[float, float]:
    """The central ``level`` share of ``values`` (NaN, NaN when empty)."""
    if not values:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


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
    return pairs_of_draw(dist, labels, *resample_people(labels, rng))


def pairs_of_draw(
    dist: np.ndarray,
    labels: np.ndarray,
    index: np.ndarray,
    new: np.ndarray,
    *,
    cross: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of the draw (``index``, ``new``) of :func:`resample_people`, without the pairs
    between two copies of one person: the pairs i < j of a symmetric ``dist``, or with
    ``cross`` the pairs (probe i, gallery j) of :func:`~tripletkit.faces.metrics.cross_pairs`
    (an image never against itself)."""
    sub = dist[np.ix_(index, index)]
    if cross:
        same = new[:, None] == new[None, :]
        was_same = labels[index][:, None] == labels[index][None, :]
        keep = (same | ~was_same) & (index[:, None] != index[None, :])
        return sub[keep], same[keep]
    d, same = metrics.all_pairs(sub, new)
    _, was_same = metrics.all_pairs(sub, labels[index])
    keep = same | ~was_same
    return d[keep], same[keep]


def paired_difference(
    folds: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    cross: bool = False,
    draws: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Method B minus method A for each of :data:`METRICS`, averaged over folds, with a
    percentile bootstrap interval over people: each draw resamples every fold's people once
    and scores both methods on the same draw, so what the two share (which people are hard)
    cancels.

    Args:
        folds: per fold, (A's distances (N, N), B's distances (N, N), person labels (N,)).
        cross: the distances are probe rows against gallery columns
            (:func:`~tripletkit.faces.metrics.cross_pairs`), else symmetric.

    Returns:
        metric -> {"difference": on every person, "low", "high"}; NaN where undefined.
    """

    def pairs(dist: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return metrics.cross_pairs(dist, labels) if cross else metrics.all_pairs(dist, labels)

    point = {
        k: _finite_mean([f(*pairs(b, y)) - f(*pairs(a, y)) for a, b, y in folds])
        for k, f in METRICS.items()
    }
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {k: [] for k in METRICS}
    for _ in range(draws):
        per_fold: dict[str, list[float]] = {k: [] for k in METRICS}
        for a, b, y in folds:
            index, new = resample_people(y, rng)
            da, sa = pairs_of_draw(a, y, index, new, cross=cross)
            db, sb = pairs_of_draw(b, y, index, new, cross=cross)
            for k, f in METRICS.items():
                per_fold[k].append(f(db, sb) - f(da, sa))
        for k, v in per_fold.items():
            value = _finite_mean(v)
            if np.isfinite(value):
                values[k].append(value)
    out: dict[str, dict[str, float]] = {}
    for k, v in values.items():
        low, high = _percentile_interval(v, level)
        out[k] = {"difference": point[k], "low": low, "high": high}
    return out


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
            value = _finite_mean(v)
            if np.isfinite(value):
                values[k].append(value)
    return {k: _percentile_interval(v, level) for k, v in values.items()}
