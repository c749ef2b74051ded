"""Naive oracles: explicit Python loops over (a, p, n), written for clarity, not speed.

Every comparison is made in the dtype of the distance matrix, exactly as the module docstrings
state it (active: d_an < d_ap + m; hard: d_an <= d_ap; easy: not hard and d_an >= d_ap + m;
semi-hard candidate: d_an > d_ap + t), so ties and rounding agree with the fast code by definition.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from tripletkit.distances import pairwise_distances


def loop_distances(x: torch.Tensor, distance: str) -> torch.Tensor:
    """(B, B) distances, one pair at a time."""
    n = len(x)
    out = torch.zeros(n, n, dtype=x.dtype)
    for i in range(n):
        for j in range(n):
            if distance == "cosine":
                cos = torch.dot(x[i], x[j]) / (x[i].norm() * x[j].norm())
                out[i, j] = 0.0 if i == j else max(0.0, 1.0 - float(cos))
            else:
                sq = float(((x[i] - x[j]) ** 2).sum())
                out[i, j] = math.sqrt(sq) if distance == "euclidean" else sq
    return out


def _members(labels, a: int) -> tuple[list[int], list[int]]:
    """Positives and negatives of row a: from labels (a list) or a (Q, D) relevance array."""
    if isinstance(labels, np.ndarray) and labels.ndim == 2:
        row = labels[a]
        return [j for j in range(len(row)) if row[j]], [j for j in range(len(row)) if not row[j]]
    pos = [p for p in range(len(labels)) if p != a and labels[p] == labels[a]]
    neg = [n for n in range(len(labels)) if labels[n] != labels[a]]
    return pos, neg


def loop_mine(
    dist: np.ndarray, labels, strategy: str, offset: float = 0.0, fallback: str = "skip"
) -> tuple[list[tuple[int, int, int]], int]:
    """Triplets (sorted by anchor, positive) and the number of dropped pairs. ``labels`` is a
    list of labels, or a (Q, D) bool array of relevance for query x document distances."""
    t = dist.dtype.type(offset)
    out: list[tuple[int, int, int]] = []
    dropped = 0
    for a in range(len(labels)):
        pos, neg = _members(labels, a)
        if not pos or not neg:
            continue
        if strategy == "all":
            out += [(a, p, n) for p in pos for n in neg]
        elif strategy == "hard":
            p = max(pos, key=lambda q: (dist[a, q], -q))
            n = min(neg, key=lambda q: (dist[a, q], q))
            out.append((a, p, n))
        else:
            for p in pos:
                cands = [n for n in neg if dist[a, n] > dist[a, p] + t]
                if cands:
                    out.append((a, p, min(cands, key=lambda q: (dist[a, q], q))))
                elif fallback == "hardest":
                    out.append((a, p, min(neg, key=lambda q: (dist[a, q], q))))
                elif fallback == "easiest":
                    out.append((a, p, max(neg, key=lambda q: (dist[a, q], -q))))
                else:
                    dropped += 1
    return out, dropped


def loop_loss(
    embeddings: torch.Tensor,
    labels,
    *,
    documents: torch.Tensor | None = None,
    margin: float = 0.2,
    mining: str = "semi-hard",
    offset: float = 0.0,
    fallback: str = "skip",
    distance: str = "squared",
    soft: bool = False,
    reduction: str = "mean",
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss through autograd on the full distance matrix, and the statistics, by loops.
    With ``documents``, ``labels`` is the (Q, D) relevance array of queries ``embeddings``."""
    dist = pairwise_distances(embeddings, documents, distance=distance)
    d = dist.detach().numpy()
    m = d.dtype.type(margin)
    triplets, dropped = loop_mine(d, labels, mining, offset, fallback)
    terms = []
    active = 0
    for a, p, n in triplets:
        if soft:
            terms.append(torch.nn.functional.softplus(dist[a, p] - dist[a, n]))
            active += 1
        elif d[a, n] < d[a, p] + m:
            terms.append((dist[a, p] + m) - dist[a, n])
            active += 1
    zero = embeddings.sum() * 0.0 + (0.0 if documents is None else documents.sum() * 0.0)
    total = torch.stack(terms).sum() if terms else zero
    divisor = {"mean": len(triplets), "mean_active": active, "sum": 1}[reduction]
    loss = total / divisor if divisor else zero

    valid, easy, hard = 0, 0, 0
    ap, an = [], []
    for a in range(len(labels)):
        pos, neg = _members(labels, a)
        ap += [float(d[a, p]) for p in pos]
        an += [float(d[a, n]) for n in neg]
        for p in pos:
            for n in neg:
                valid += 1
                is_hard = bool(d[a, n] <= d[a, p])
                hard += is_hard
                easy += not is_hard and bool(d[a, n] >= d[a, p] + m)
    stats = {
        "triplets": float(len(triplets)),
        "active_fraction": active / len(triplets) if triplets else 0.0,
        "valid_triplets": float(valid),
        "easy_fraction": easy / valid if valid else 0.0,
        "semihard_fraction": (valid - easy - hard) / valid if valid else 0.0,
        "hard_fraction": hard / valid if valid else 0.0,
        "mean_d_ap": float(np.mean(ap)) if ap else math.nan,
        "mean_d_an": float(np.mean(an)) if an else math.nan,
        "dropped_pairs": float(dropped),
    }
    return loss, stats
