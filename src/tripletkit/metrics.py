"""Evaluation protocols of FaceNet on embeddings: verification, identification, clustering.

scikit-learn computes ROC curves, AUC, NMI, ARI and the agglomerative clustering; this module
holds the protocols around them (pairs, the LFW 10-fold threshold, VAL@FAR, EER, MAP@R, purity).
Distances are Euclidean between the embeddings given.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import (
    adjusted_rand_score,
    normalized_mutual_info_score,
    roc_auc_score,
    roc_curve,
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


def val_at_far(d: np.ndarray, same: np.ndarray, far: float) -> float:
    """FaceNet's VAL(FAR): the share of same pairs accepted at the strictest-needed threshold
    that accepts at most a ``far`` share of different pairs."""
    fpr, tpr, _ = roc_curve(same, -d)
    ok = fpr <= far + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def equal_error_rate(d: np.ndarray, same: np.ndarray) -> float:
    """The error rate where false accepts equal false rejects (linear interpolation)."""
    fpr, tpr, _ = roc_curve(same, -d)
    fnr = 1.0 - tpr
    k = int(np.flatnonzero(fnr <= fpr)[0])
    if k == 0:
        return float(fpr[0])
    # between points k-1 (fnr > fpr) and k (fnr <= fpr)
    x0, x1 = fpr[k - 1] - fnr[k - 1], fpr[k] - fnr[k]
    w = x0 / (x0 - x1) if x0 != x1 else 0.0
    return float(fpr[k - 1] + w * (fpr[k] - fpr[k - 1]))


def verification(
    dist: np.ndarray,
    labels: np.ndarray,
    seed: int = 0,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, float]:
    """Accuracy on balanced pairs with a 10-fold threshold (or on ``pairs``), and over all
    pairs VAL@FAR=1e-3 and 1e-2, ROC AUC and EER."""
    if pairs is None:
        bp = balanced_pairs(labels, seed)
        bd, bs = dist[bp[:, 0], bp[:, 1]], labels[bp[:, 0]] == labels[bp[:, 1]]
    else:
        bd, bs = dist[pairs[0][:, 0], pairs[0][:, 1]], pairs[1]
    d, same = all_pairs(dist, labels)
    return {
        "verification_accuracy": cv_accuracy(bd, bs, seed=seed),
        "val_at_far_1e-3": val_at_far(d, same, 1e-3),
        "val_at_far_1e-2": val_at_far(d, same, 1e-2),
        "roc_auc": float(roc_auc_score(same, -d)),
        "eer": equal_error_rate(d, same),
    }


def identification(
    dist: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Leave-one-out nearest-neighbour rank-k accuracy and MAP@R, over the queries whose person
    has another image.

    MAP@R (Musgrave et al. 2020): for a query with R other examples of its identity, the mean
    over i = 1..R of precision@i at the ranks i that hold a match.
    """
    d = dist.copy()
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")
    match = labels[order] == labels[:, None]
    r = (labels[:, None] == labels[None, :]).sum(1) - 1
    answerable = r > 0  # a person with one image cannot be found by the others
    out = {
        f"rank{k}": float(match[answerable, :k].any(1).mean()) if answerable.any() else 0.0
        for k in ks
    }
    aps = []
    for row, count in zip(match, r, strict=True):
        if count == 0:
            continue
        hits = row[:count]
        precision = np.cumsum(hits) / np.arange(1, count + 1)
        aps.append(float((precision * hits).sum() / count))
    out["map_at_r"] = float(np.mean(aps)) if aps else 0.0
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


IR_METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@100", "map")


def ir_scores(
    run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]
) -> dict[str, float]:
    """nDCG@10, MRR@10, Recall@10, Recall@100 and MAP with trec_eval semantics (pytrec_eval),
    averaged over the judged queries; a judged query missing from ``run`` scores 0.

    Args:
        run: query id -> document id -> score (higher is better).
        qrels: query id -> document id -> relevance grade.
    """
    import pytrec_eval

    judged = {q: docs for q, docs in qrels.items() if any(v > 0 for v in docs.values())}
    if not judged:
        raise ValueError("no judged query has a relevant document")
    full = {q: {d: float(s) for d, s in run.get(q, {}).items()} for q in judged}
    top10 = {q: dict(sorted(docs.items(), key=lambda kv: -kv[1])[:10]) for q, docs in full.items()}
    measures = {"ndcg_cut.10", "recall.10", "recall.100", "map"}
    per_query = pytrec_eval.RelevanceEvaluator(judged, measures).evaluate(full)
    rr = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(top10)
    names = {
        "ndcg@10": "ndcg_cut_10",
        "recall@10": "recall_10",
        "recall@100": "recall_100",
        "map": "map",
    }
    out = {
        name: float(np.mean([per_query.get(q, {}).get(key, 0.0) for q in judged]))
        for name, key in names.items()
    }
    out["mrr@10"] = float(np.mean([rr.get(q, {}).get("recip_rank", 0.0) for q in judged]))
    return {k: out[k] for k in IR_METRICS}


def trec_run(run: dict[str, dict[str, float]], tag: str) -> str:
    """A TREC run file: ``qid Q0 docid rank score tag`` lines, best first."""
    lines = []
    for q, docs in run.items():
        ranked = sorted(docs.items(), key=lambda kv: -kv[1])
        lines += [f"{q} Q0 {d} {i} {s:.6f} {tag}" for i, (d, s) in enumerate(ranked, 1)]
    return "\n".join(lines) + "\n"
