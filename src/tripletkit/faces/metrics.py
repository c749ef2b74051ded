"""Evaluation protocols of FaceNet on embeddings: verification, identification, clustering.

scikit-learn computes ROC curves, AUC, NMI, ARI and the agglomerative clustering; this module
holds the protocols around them (pairs, the LFW 10-fold threshold, VAL@FAR, EER, MAP@R, purity).
Distances are Euclidean between the embeddings given.

A metric that is undefined on the images given (EER without a same-person pair, rank-1 when no
person has two images, ...) is NaN, never an exception or a made-up 0: a summary over folds
shows it as missing.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import (
    adjusted_rand_score,
    normalized_mutual_info_score,
    roc_auc_score,
)


def distance_matrix(embeddings: np.ndarray) -> np.ndarray:
    """(N, N) Euclidean distances, diagonal 0."""
    x = np.asarray(embeddings, dtype=np.float64)
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(d2)


def all_pairs(dist: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances and "same identity" flags of every unordered pair i < j."""
    i, j = np.triu_indices(len(labels), k=1)
    return dist[i, j], labels[i] == labels[j]


def cross_distance(probe: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """(N, M) Euclidean distances of every probe row to every gallery row."""
    a = np.asarray(probe, dtype=np.float64)
    b = np.asarray(gallery, dtype=np.float64)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(d2, 0.0))


def cross_pairs(dist: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances and "same identity" flags of every (probe i, gallery j) pair with i != j, for
    ``dist`` (N, N) from :func:`cross_distance` of two copies of the same N images (a probe
    camera's and a gallery camera's): row i against column j. The diagonal, an image against
    its own other copy, is not a pair; (i, j) and (j, i) are two pairs (different photos)."""
    off = ~np.eye(len(labels), dtype=bool)
    return dist[off], (labels[:, None] == labels[None, :])[off]


def balanced_pairs(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Every same-identity pair and as many seeded different-identity pairs: (M, 2) indices."""
    labels = np.asarray(labels)
    i, j = np.triu_indices(len(labels), k=1)
    same = labels[i] == labels[j]
    rng = np.random.default_rng(seed)
    diff = np.flatnonzero(~same)
    pick = rng.choice(diff, size=min(int(same.sum()), len(diff)), replace=False)
    keep = np.concatenate([np.flatnonzero(same), np.sort(pick)])
    return np.stack([i[keep], j[keep]], 1)


def best_threshold(d: np.ndarray, same: np.ndarray) -> float:
    """The distance threshold (accept d <= t) with the highest accuracy on these pairs; ties go
    to the midpoint between neighbouring distances."""
    order = np.argsort(d, kind="stable")
    ds, ss = d[order], same[order].astype(np.int64)
    # accept the first k pairs: correct = same among them + different among the rest
    correct = np.concatenate([[0], np.cumsum(ss)]) + np.concatenate(
        [np.cumsum((1 - ss)[::-1])[::-1], [0]]
    )
    k = int(np.argmax(correct))
    if k == 0:
        return float(ds[0]) - 1e-12
    if k == len(ds):
        return float(ds[-1])
    return float((ds[k - 1] + ds[k]) / 2)


def cv_accuracy(d: np.ndarray, same: np.ndarray, folds: int = 10, seed: int = 0) -> float:
    """LFW protocol: split pairs into folds; for each, pick the threshold on the others and score
    accuracy on it; return the mean accuracy."""
    if len(d) < 2:
        raise ValueError(f"cross-validated accuracy needs at least 2 pairs, got {len(d)}")
    order = np.random.default_rng(seed).permutation(len(d))
    scores = []
    for part in np.array_split(order, min(folds, len(d))):
        rest = np.setdiff1d(order, part)
        t = best_threshold(d[rest], same[rest])
        scores.append(np.mean((d[part] <= t) == same[part]))
    return float(np.mean(scores))


def _check_pairs(d: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``d`` and ``same`` as float and bool 1-D arrays of one length, ``d`` free of NaN."""
    d, same = np.asarray(d, dtype=np.float64), np.asarray(same)
    if d.ndim != 1 or same.shape != d.shape:
        raise ValueError(
            f"distances and same-person flags must be 1-D of one length, got shapes "
            f"{d.shape} and {same.shape}"
        )
    if np.isnan(d).any():
        raise ValueError(f"{int(np.isnan(d).sum())} of {len(d)} pair distances are NaN")
    return d, same.astype(bool)


def roc_points(d: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every operating point of the rule "accept a pair when d <= t", for t = -inf and each
    distinct distance in increasing order (no point dropped, tied distances accepted together).

    Args:
        d: (M,) pair distances.
        same: (M,) bool, True for a same-person pair.

    Returns:
        (T + 1,) false accept rates FAR(t) = |{different: d <= t}| / |different| and (T + 1,)
        validation rates VAL(t) = |{same: d <= t}| / |same|, both from 0 to 1; the same points as
        ``sklearn.metrics.roc_curve(same, -d, drop_intermediate=False)``. NaN when there is no
        different (FAR) or no same (VAL) pair.
    """
    d, same = _check_pairs(d, same)
    thresholds = np.unique(d)
    counts = []
    for flags in (~same, same):
        accepted = np.searchsorted(np.sort(d[flags]), thresholds, side="right")
        total = int(flags.sum())
        rate = accepted / total if total else np.full(len(thresholds), np.nan)
        counts.append(np.concatenate([[0.0 if total else np.nan], rate]))
    return counts[0], counts[1]


def val_at_far(d: np.ndarray, same: np.ndarray, far: float) -> float:
    """FaceNet's VAL(FAR): the largest share of same pairs accepted by a threshold that accepts
    at most a ``far`` share of different pairs, max VAL(t) over t with FAR(t) <= far (see
    :func:`roc_points`; tied distances are accepted or rejected together).

    Returns:
        A value in [0, 1]; NaN when there is no same-person or no different-person pair.
    """
    fpr, tpr = roc_points(d, same)
    if np.isnan(fpr[0]) or np.isnan(tpr[0]):
        return float("nan")
    return float(tpr[fpr <= far + 1e-12].max())  # t = -inf (accept nothing) always qualifies


def equal_error_rate(d: np.ndarray, same: np.ndarray) -> float:
    """The error rate where the false accept rate FAR(t) equals the false reject rate
    1 - VAL(t), by linear interpolation between neighbouring operating points of
    :func:`roc_points`.

    Returns:
        A value in [0, 1]; NaN when there is no same-person or no different-person pair.
    """
    fpr, tpr = roc_points(d, same)
    if np.isnan(fpr[0]) or np.isnan(tpr[0]):
        return float("nan")
    fnr = 1.0 - tpr
    k = int(np.flatnonzero(fnr <= fpr)[0])  # exists: the last point has fnr 0
    if k == 0:
        return float(fpr[0])
    # between points k-1 (fnr > fpr) and k (fnr <= fpr)
    x0, x1 = fpr[k - 1] - fnr[k - 1], fpr[k] - fnr[k]
    w = x0 / (x0 - x1) if x0 != x1 else 0.0
    return float(fpr[k - 1] + w * (fpr[k] - fpr[k - 1]))


def roc_auc(d: np.ndarray, same: np.ndarray) -> float:
    """Area under the ROC curve of the score -d; NaN when there is no same-person or no
    different-person pair."""
    d, same = _check_pairs(d, same)
    if same.all() or not same.any():
        return float("nan")
    return float(roc_auc_score(same, -d))


def verification(
    dist: np.ndarray,
    labels: np.ndarray,
    seed: int = 0,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, float]:
    """Accuracy on balanced pairs with a 10-fold threshold (or on ``pairs``), and over all
    pairs VAL@FAR=1e-3 and 1e-2, ROC AUC and EER.

    A metric that is undefined on these images is NaN: the accuracy with fewer than 2 pairs,
    the others when there is no same-person pair (every person has one image) or no
    different-person pair (one person).
    """
    if pairs is None:
        bp = balanced_pairs(labels, seed)
        bd, bs = dist[bp[:, 0], bp[:, 1]], labels[bp[:, 0]] == labels[bp[:, 1]]
    else:
        bd, bs = dist[pairs[0][:, 0], pairs[0][:, 1]], pairs[1]
    d, same = all_pairs(dist, labels)
    return {
        "verification_accuracy": cv_accuracy(bd, bs, seed=seed) if len(bd) >= 2 else math.nan,
        "val_at_far_1e-3": val_at_far(d, same, 1e-3),
        "val_at_far_1e-2": val_at_far(d, same, 1e-2),
        "roc_auc": roc_auc(d, same),
        "eer": equal_error_rate(d, same),
    }


def identification(
    dist: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Leave-one-out nearest-neighbour rank-k accuracy and MAP@R, over the queries whose person
    has another image.

    MAP@R (Musgrave et al. 2020): for a query with R other examples of its identity, the mean
    over i = 1..R of precision@i at the ranks i that hold a match.

    Every value is NaN when no person has two images (no query can be answered).
    """
    d = dist.copy()
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")
    match = labels[order] == labels[:, None]
    r = (labels[:, None] == labels[None, :]).sum(1) - 1
    answerable = r > 0  # a person with one image cannot be found by the others
    out = {
        f"rank{k}": float(match[answerable, :k].any(1).mean()) if answerable.any() else math.nan
        for k in ks
    }
    aps = []
    for row, count in zip(match, r, strict=True):
        if count == 0:
            continue
        hits = row[:count]
        precision = np.cumsum(hits) / np.arange(1, count + 1)
        aps.append(float((precision * hits).sum() / count))
    out["map_at_r"] = float(np.mean(aps)) if aps else math.nan
    return out


def agglomerative(
    dist: np.ndarray,
    *,
    n_clusters: int | None = None,
    threshold: float | None = None,
    linkage: str = "average",
) -> np.ndarray:
    """Cluster labels from a distance matrix, with a known number of clusters or a distance
    threshold (FaceNet's photo-collection clustering)."""
    if (n_clusters is None) == (threshold is None):
        raise ValueError("give exactly one of n_clusters and threshold")
    if len(dist) < 2:
        return np.zeros(len(dist), dtype=np.int64)
    model = AgglomerativeClustering(
        n_clusters=n_clusters, distance_threshold=threshold, metric="precomputed", linkage=linkage
    )
    return model.fit_predict(dist)


def purity(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Share of items whose cluster's majority identity is their own."""
    total = 0
    for c in np.unique(predicted):
        _, counts = np.unique(truth[predicted == c], return_counts=True)
        total += counts.max()
    return float(total / len(truth))


def clustering_scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """NMI, ARI and purity."""
    return {
        "nmi": float(normalized_mutual_info_score(truth, predicted)),
        "ari": float(adjusted_rand_score(truth, predicted)),
        "purity": purity(truth, predicted),
    }


def clustering_threshold(dist: np.ndarray, labels: np.ndarray, linkage: str = "average") -> float:
    """The distance threshold with the best ARI on labelled (training) identities."""
    d, _ = all_pairs(dist, labels)
    candidates = np.unique(np.quantile(d, np.linspace(0.005, 0.5, 60)))
    scores = [
        adjusted_rand_score(labels, agglomerative(dist, threshold=t, linkage=linkage))
        for t in candidates
    ]
    return float(candidates[int(np.argmax(scores))])


Summary = dict[str, dict[str, float | int | None]]
"""metric -> {"mean", "std", "folds", "missing"}: see :func:`summarise_folds`."""


def summarise_folds(rows: list[dict[str, float]]) -> Summary:
    """Mean and standard deviation over folds of each metric, over the folds where it is
    defined (finite).

    Returns:
        metric -> {"mean", "std", "folds": how many folds the mean is over, "missing": how many
        folds it is undefined in (NaN: e.g. EER on a fold without a same-person pair)}; mean
        and std are None when no fold defines the metric.
    """
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out: Summary = {}
    for k in keys:
        values = [r.get(k, math.nan) for r in rows]
        finite = [v for v in values if math.isfinite(v)]
        out[k] = {
            "mean": float(np.mean(finite)) if finite else None,
            "std": (float(np.std(finite)) if len(finite) > 1 else 0.0) if finite else None,
            "folds": len(finite),
            "missing": len(values) - len(finite),
        }
    return out
