"""Corpus-level hard-negative mining with false-negative filters.

In search a document can answer many queries, so the documents an encoder ranks just below a
query's positive are often relevant themselves: unfiltered "hard negatives" teach the model to
push answers away. For each query, candidates come from a rank window [r_min, r_max) of an
index search. With an approximate index (HNSW, IVF-PQ) the search only proposes candidates: the
first ``r_max`` it returns are rescored exactly (inner products of the query with the stored
document vectors) and re-ranked by that score before the window is cut, so the filters compare
exact candidate scores with the exact positive score. Then the filters drop, in this order:

1. ``relevant``: any document judged relevant to the query (qrels); the naive miner
   (:meth:`MiningConfig.unfiltered`) drops only the query's first listed positive
   (``positive``), as a miner that knows one positive per training pair does;
2. ``max_score``: candidates scoring above ``max_score``;
3. ``relative``: candidates scoring above p - relative_margin x |p|, where p is the positive's
   score (NV-Retriever's TopK-PercPos, which reads (1 - relative_margin) x p for the positive p
   > 0 it assumes; the |p| keeps the threshold below p when p < 0, where (1 - m) x p would lie
   above it). p is the lowest score of the query's relevant documents, the most cautious
   choice;
4. ``absolute``: candidates scoring above the positive's score - absolute_margin.

The n best-ranked survivors are the query's negatives. Every filter's removals are counted.
Scores are inner products of L2-normalised embeddings (cosine similarities).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .index import Index


@dataclass(frozen=True)
class MiningConfig:
    """Which candidates to consider and which to drop (None disables a filter)."""

    n: int = 4
    r_min: int = 0
    r_max: int = 50
    exclude: str = "relevant"
    max_score: float | None = None
    relative_margin: float | None = 0.05
    absolute_margin: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.r_min < self.r_max:
            raise ValueError(f"need 0 <= r_min < r_max, got r_min={self.r_min}, r_max={self.r_max}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.exclude not in ("relevant", "positive"):
            raise ValueError(f"exclude must be 'relevant' or 'positive', got {self.exclude!r}")
        if self.relative_margin is not None and not 0 <= self.relative_margin < 1:
            raise ValueError(f"relative_margin must be in [0, 1), got {self.relative_margin}")

    @classmethod
    def unfiltered(cls, n: int = 4, r_min: int = 0, r_max: int = 50) -> MiningConfig:
        """The naive miner: the rank window minus the query's first listed positive."""
        return cls(n=n, r_min=r_min, r_max=r_max, exclude="positive", relative_margin=None)


@dataclass
class MinedNegatives:
    """Negatives per query with their scores, the positive score, and filter counts.

    Attributes:
        negatives: query id -> negative document ids, highest exact score first.
        scores: query id -> their exact scores (whatever the index).
        positive_score: query id -> the score used by the margin filters.
        candidates: candidates examined (queries x window).
        removed: filter name -> candidates it removed.
        relevant_kept: chosen negatives that the qrels judge relevant (false negatives; 0 when
            every relevant document is excluded).
    """

    negatives: dict[str, list[str]] = field(default_factory=dict)
    scores: dict[str, list[float]] = field(default_factory=dict)
    positive_score: dict[str, float] = field(default_factory=dict)
    candidates: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    relevant_kept: int = 0

    @property
    def kept(self) -> int:
        return sum(len(v) for v in self.negatives.values())


def mine_negatives(
    query_ids: list[str],
    query_vectors: np.ndarray,
    doc_ids: list[str],
    doc_vectors: np.ndarray,
    qrels: dict[str, dict[str, int]],
    config: MiningConfig,
    index: Index | None = None,
    progress: bool = False,
) -> MinedNegatives:
    """Mine negatives for every query of ``query_ids`` that has a judged-relevant document.

    Args:
        query_ids: (Q,) ids.
        query_vectors: (Q, d) L2-normalised query embeddings.
        doc_ids: (N,) corpus ids.
        doc_vectors: (N, d) L2-normalised document embeddings (may be memory-mapped: only the
            candidates' and the positives' rows are read).
        qrels: query id -> relevant document id -> score (> 0 counts as relevant).
        config: window and filters.
        index: an index over ``doc_vectors`` whose ids are among ``doc_ids`` (exact search when
            None); an approximate one only proposes candidates, rescored exactly.
        progress: show a progress bar over the queries.

    Returns:
        :class:`MinedNegatives`.

    Raises:
        ValueError: the index holds an id that is not in ``doc_ids``.
    """
    if index is None:
        index = Index.build(doc_vectors, doc_ids)
    position = {d: i for i, d in enumerate(doc_ids)}
    keep_q = [i for i, q in enumerate(query_ids) if any(s > 0 for s in qrels.get(q, {}).values())]
    qv = np.asarray(query_vectors, dtype=np.float32)[keep_q]
    dv = np.asarray(doc_vectors, dtype=np.float32)
    scores, rows = exact_candidates(index, qv, dv, doc_ids, position, config.r_max)
    scores, rows = scores[:, config.r_min :], rows[:, config.r_min :]
    relevant = np.zeros(rows.shape, dtype=bool)
    first = np.zeros(rows.shape, dtype=bool)
    positive = np.empty(len(keep_q), dtype=np.float32)
    for r, qi in enumerate(tqdm(keep_q, desc="mine", disable=not progress, leave=False)):
        judged_docs = qrels[query_ids[qi]]
        judged = [position[d] for d, s in judged_docs.items() if s > 0 and d in position]
        relevant[r] = np.isin(rows[r], judged)
        # the first listed positive's row (-2, matching nothing, when it is not in the corpus)
        known = next((position.get(d, -2) for d, s in judged_docs.items() if s > 0), -2)
        first[r] = rows[r] == known
        positive[r] = float((dv[judged] @ qv[r]).min()) if judged else np.inf
    valid = rows >= 0
    out = MinedNegatives(candidates=int(valid.sum()))
    keep = valid.copy()
    for name, drop in _filters(config, scores, positive, relevant, first):
        out.removed[name] = int((keep & drop).sum())
        keep &= ~drop
    for r, qi in enumerate(keep_q):
        chosen = np.flatnonzero(keep[r])[: config.n]
        qid = query_ids[qi]
        out.negatives[qid] = [doc_ids[rows[r, c]] for c in chosen]
        out.scores[qid] = [float(scores[r, c]) for c in chosen]
        out.positive_score[qid] = float(positive[r])
        out.relevant_kept += int(relevant[r, chosen].sum())
    return out


def exact_candidates(
    index: Index,
    queries: np.ndarray,
    doc_vectors: np.ndarray,
    doc_ids: list[str],
    position: dict[str, int],
    k: int,
    chunk: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """The index's top-``k`` candidates per query, rescored exactly and re-ranked.

    Args:
        index: proposes candidates (its scores, approximate for HNSW or IVF-PQ, are dropped).
        queries: (Q, d) query vectors.
        doc_vectors: (N, d) document vectors, row i being ``doc_ids[i]``.
        doc_ids: (N,) ids; ``position`` maps each to its row.
        k: candidates per query.
        chunk: queries rescored at a time (memory holds chunk x k x d floats).

    Returns:
        (Q, k') exact scores s[q, j] = <queries[q], doc_vectors[rows[q, j]]> in decreasing order
        per query, and (Q, k') rows of ``doc_vectors`` (-1, scored -inf and placed last, where
        the index returned fewer than k'), with k' = min(k, index size).

    Raises:
        ValueError: the index holds an id that is not in ``doc_ids``.
    """
    _, found = index.search(queries, k)
    if index.ids != doc_ids:
        missing = next((i for i in index.ids if i not in position), None)
        if missing is not None:
            raise ValueError(f"the index holds id {missing!r}, which is not in doc_ids")
        to_doc = np.array([position[i] for i in index.ids] + [-1], dtype=np.int64)
        found = to_doc[found]  # -1 (past the end) reads the trailing -1
    rows = np.asarray(found, dtype=np.int64)
    scores = np.full(rows.shape, -np.inf, dtype=np.float32)
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        vectors = doc_vectors[np.maximum(part, 0)]  # (c, k', d)
        exact = np.einsum("ckd,cd->ck", vectors, queries[start : start + chunk])
        scores[start : start + chunk] = np.where(part >= 0, exact, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)


def _filters(
    config: MiningConfig,
    scores: np.ndarray,
    positive: np.ndarray,
    relevant: np.ndarray,
    first: np.ndarray,
) -> list[tuple[str, np.ndarray]]:
    """(name, (Q, k) drop mask) of each enabled filter, in the order they apply."""
    filters = [("relevant", relevant) if config.exclude == "relevant" else ("positive", first)]
    if config.max_score is not None:
        filters.append(("max_score", scores > config.max_score))
    if config.relative_margin is not None:
        threshold = relative_threshold(positive, config.relative_margin)
        filters.append(("relative", scores > threshold[:, None]))
    if config.absolute_margin is not None:
        filters.append(("absolute", scores > positive[:, None] - config.absolute_margin))
    return filters


def relative_threshold(positive: np.ndarray, margin: float) -> np.ndarray:
    """The relative filter's threshold p - margin x |p| per positive score p (+inf, dropping
    nothing, where p is +inf: a query none of whose relevant documents is in the corpus).

    Below p for either sign of p: p = 0.86, margin 0.05 gives 0.817 (= 0.95 x 0.86); p = -0.20
    gives -0.21, where (1 - margin) x p = -0.19 would keep a candidate at -0.195 that outscores
    the positive.
    """
    out = np.full(positive.shape, np.inf, dtype=np.float64)
    finite = np.isfinite(positive)
    p = positive[finite].astype(np.float64)
    out[finite] = p - margin * np.abs(p)
    return out
