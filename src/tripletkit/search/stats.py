"""Statistics of a search table: per-query scores, the mean and spread over seeds, paired tests
over queries, and re-scoring without some documents.

A comparison of two arms A and B is paired over the Q test queries: d_q = s_A(q) - s_B(q), each
arm's per-query score s(q) being its mean over that arm's seeds. Reported are the mean
difference, a percentile bootstrap confidence interval of it (queries resampled with
replacement), and the two-sided p-value of a paired randomisation (sign-flip) test: under the
null hypothesis that the two arms are exchangeable on each query, every sign pattern of the
d_q is equally likely, and p is the share of patterns whose |mean| is at least the observed
one (exact when 2^Q <= ``samples``, else estimated from ``samples`` random patterns, with the
observed one counted: (1 + hits) / (1 + samples)).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy as np

METRIC_KEYS = {
    "ndcg@10": "ndcg_cut_10",
    "recall@10": "recall_10",
    "recall@100": "recall_100",
    "map": "map",
}


def per_query_scores(
    run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]
) -> dict[str, dict[str, float]]:
    """nDCG@10, MRR@10, Recall@10, Recall@100 and MAP of every judged query (trec_eval
    semantics, pytrec_eval), whose means are :func:`tripletkit.search.metrics.ir_scores`.

    Args:
        run: query id -> document id -> score (higher is better).
        qrels: query id -> document id -> grade; queries with no grade > 0 are not judged.

    Returns:
        metric -> query id -> score, over the judged queries (0 for a query missing from
        ``run``).

    Raises:
        ValueError: no judged query.
    """
    import pytrec_eval

    judged = {q: docs for q, docs in qrels.items() if any(v > 0 for v in docs.values())}
    if not judged:
        raise ValueError("no judged query has a relevant document")
    full = {q: {d: float(s) for d, s in run.get(q, {}).items()} for q in judged}
    top10 = {q: dict(sorted(docs.items(), key=lambda kv: -kv[1])[:10]) for q, docs in full.items()}
    found = pytrec_eval.RelevanceEvaluator(judged, set(METRIC_KEYS.values())).evaluate(full)
    rr = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(top10)
    out = {
        name: {q: float(found.get(q, {}).get(key, 0.0)) for q in judged}
        for name, key in METRIC_KEYS.items()
    }
    out["mrr@10"] = {q: float(rr.get(q, {}).get("recip_rank", 0.0)) for q in judged}
    return {name: out[name] for name in ("ndcg@10", "mrr@10", "recall@10", "recall@100", "map")}


def seed_summary(values: list[float]) -> dict[str, float | list[float]]:
    """{"mean", "std", "values"} of one metric over seeds: std is the sample standard deviation
    (n - 1 in the denominator), 0 for a single value.

    Raises:
        ValueError: no values.
    """
    if not values:
        raise ValueError("seed_summary needs at least one value")
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "values": [float(v) for v in arr]}


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison over queries: mean difference, its bootstrap confidence interval
    [low, high] at ``level``, the randomisation test's two-sided p-value, and the number of
    queries."""

    diff: float
    low: float
    high: float
    p_value: float
    queries: int
    level: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def paired_test(
    a: np.ndarray, b: np.ndarray, *, samples: int = 10000, level: float = 0.95, seed: int = 0
) -> PairedTest:
    """Compare per-query scores ``a`` and ``b`` (see the module docstring).

    Args:
        a: (Q,) scores of arm A, query by query.
        b: (Q,) scores of arm B on the same queries, in the same order.
        samples: bootstrap resamples, and random sign patterns when 2^Q > samples.
        level: the confidence interval's coverage, in (0, 1).
        seed: of the resampling.

    Returns:
        :class:`PairedTest` of A - B.

    Raises:
        ValueError: shapes differ, no query, non-finite scores, or a bad ``samples``/``level``.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"a and b must be (Q,) of one length, got {a.shape} and {b.shape}")
    if len(a) == 0:
        raise ValueError("a paired test needs at least one query")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("a and b must be finite")
    if samples < 1 or not 0 < level < 1:
        raise ValueError(f"need samples >= 1 and 0 < level < 1, got {samples} and {level}")
    d = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    for start in range(0, samples, 1000):  # memory: 1000 x Q at a time
        rows = rng.integers(0, len(d), size=(min(1000, samples - start), len(d)))
        means[start : start + len(rows)] = d[rows].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return PairedTest(
        diff=float(d.mean()),
        low=float(low),
        high=float(high),
        p_value=randomisation_p(d, samples, rng),
        queries=len(d),
        level=level,
    )


def randomisation_p(d: np.ndarray, samples: int, rng: np.random.Generator) -> float:
    """Two-sided p-value of the sign-flip test of mean(d) = 0 (module docstring): exact over
    all 2^Q sign patterns when 2^Q <= ``samples``."""
    observed = abs(d.mean()) - 1e-12 * max(1.0, float(np.abs(d).max()))  # ties count as hits
    if len(d) <= 20 and 2 ** len(d) <= samples:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
        return float(np.mean(np.abs(signs @ d / len(d)) >= observed))
    hits = 0
    for start in range(0, samples, 1000):
        n = min(1000, samples - start)
        signs = rng.choice((-1.0, 1.0), size=(n, len(d)))
        hits += int((np.abs(signs @ d / len(d)) >= observed).sum())
    return (1 + hits) / (1 + samples)


def drop_documents(
    run: dict[str, dict[str, float]], removed: set[str], k: int
) -> dict[str, dict[str, float]]:
    """Each query's ranking without the ``removed`` documents, cut to its best ``k``: the
    ranking a search over the rest of the corpus returns when ``run`` was retrieved at least
    k + len(removed) deep."""
    out = {}
    for q, docs in run.items():
        kept = sorted(((d, s) for d, s in docs.items() if d not in removed), key=lambda x: -x[1])
        out[q] = dict(kept[:k])
    return out


def drop_judgments(
    qrels: dict[str, dict[str, int]], removed: set[str]
) -> dict[str, dict[str, int]]:
    """The qrels without judgments of the ``removed`` documents; a query left with no relevant
    document is dropped (it cannot be scored)."""
    out = {}
    for q, docs in qrels.items():
        kept = {d: g for d, g in docs.items() if d not in removed}
        if any(g > 0 for g in kept.values()):
            out[q] = kept
    return out


def training_positives(qrels: dict[str, dict[str, int]]) -> set[str]:
    """Every document that some query of ``qrels`` (the training split) judges relevant."""
    return {d for docs in qrels.values() for d, g in docs.items() if g > 0}
