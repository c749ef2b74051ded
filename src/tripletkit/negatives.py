"""Corpus-level hard-negative mining with false-negative filters.

In search a document can answer many queries, so the documents an encoder ranks just below a
query's positive are often relevant themselves: unfiltered "hard negatives" teach the model to
push answers away. For each query, candidates come from a rank window [r_min, r_max) of an
index search, then filters drop, in this order:

1. ``relevant``: any document judged relevant to the query (qrels); the naive miner
   (:meth:`MiningConfig.unfiltered`) drops only the query's first listed positive
   (``positive``), as a miner that knows one positive per training pair does;
2. ``max_score``: candidates scoring above ``max_score``;
3. ``relative``: candidates scoring above (1 - relative_margin) x the positive's score
   (NV-Retriever's TopK-PercPos; the positive's score is the lowest of the query's relevant
   documents, the most cautious choice);
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
        negatives: query id -> negative document ids, best-ranked first.
        scores: query id -> their scores.
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
        doc_vectors: (N, d) L2-normalised document embeddings.
        qrels: query id -> relevant document id -> score (> 0 counts as relevant).
        config: window and filters.
        index: an index over ``doc_vectors`` (exact search when None).
        progress: show a progress bar over the queries.

    Returns:
        :class:`MinedNegatives`.
    """
    if index is None:
        index = Index.build(doc_vectors, doc_ids)
    position = {d: i for i, d in enumerate(doc_ids)}
    keep_q = [i for i, q in enumerate(query_ids) if any(s > 0 for s in qrels.get(q, {}).values())]
    qv = np.asarray(query_vectors, dtype=np.float32)[keep_q]
    scores, rows = index.search(qv, config.r_max)
    scores, rows = scores[:, config.r_min :], rows[:, config.r_min :]
    relevant = np.zeros(rows.shape, dtype=bool)
    first = np.zeros(rows.shape, dtype=bool)
    positive = np.empty(len(keep_q), dtype=np.float32)
    dv = np.asarray(doc_vectors, dtype=np.float32)
    for r, qi in enumerate(tqdm(keep_q, desc="mine", disable=not progress, leave=False)):
        judged = [position[d] for d, s in qrels[query_ids[qi]].items() if s > 0 and d in position]
        judged_ids = {doc_ids[j] for j in judged}
        relevant[r] = [index.ids[c] in judged_ids if c >= 0 else False for c in rows[r]]
        known = next((d for d, s in qrels[query_ids[qi]].items() if s > 0), None)
        first[r] = [c >= 0 and index.ids[c] == known for c in rows[r]]
        positive[r] = float((dv[judged] @ qv[r]).min()) if judged else np.inf
    valid = rows >= 0
    out = MinedNegatives(candidates=int(valid.sum()))
    keep = valid.copy()
    filters = [
        ("relevant", relevant if config.exclude == "relevant" else None),
        ("positive", first if config.exclude == "positive" else None),
        ("max_score", scores > config.max_score if config.max_score is not None else None),
        (
            "relative",
            scores > (1.0 - config.relative_margin) * positive[:, None]
            if config.relative_margin is not None
            else None,
        ),
        (
            "absolute",
            scores > positive[:, None] - config.absolute_margin
            if config.absolute_margin is not None
            else None,
        ),
    ]
    for name, drop in filters:
        if drop is None:
            continue
        out.removed[name] = int((keep & drop).sum())
        keep &= ~drop
    for r, qi in enumerate(keep_q):
        chosen = np.flatnonzero(keep[r])[: config.n]
        qid = query_ids[qi]
        out.negatives[qid] = [index.ids[rows[r, c]] for c in chosen]
        out.scores[qid] = [float(scores[r, c]) for c in chosen]
        out.positive_score[qid] = float(positive[r])
        out.relevant_kept += int(relevant[r, chosen].sum())
    return out
