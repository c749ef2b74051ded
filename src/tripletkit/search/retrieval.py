"""Retrieval with an encoder: the top-100 documents of each query by inner product over the
corpus vectors (exact FAISS search), over the whole corpus or without some documents."""

from __future__ import annotations

from typing import Any

import numpy as np

from .config import SearchConfig
from .data import Retrieval
from .encodings import encode_sharded
from .index import Index


def retrieve(
    model: Any,
    data: Retrieval,
    query_ids: list[str],
    vectors: np.ndarray,
    cfg: SearchConfig,
    progress: bool,
) -> dict[str, dict[str, float]]:
    """Top-100 documents per query by inner product over ``vectors`` (N, d)."""
    q = encode_sharded(model, [data.queries[i] for i in query_ids], cfg, progress)
    return _search(vectors, data.corpus.ids, q, query_ids, cfg)


def retrieve_without(
    model: Any,
    data: Retrieval,
    query_ids: list[str],
    vectors: np.ndarray,
    cfg: SearchConfig,
    progress: bool,
    exclude: set[str],
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """:func:`retrieve`, and the top-100 of a search over the corpus without the ``exclude``
    documents, the queries encoded once: (full ranking, ranking without ``exclude``)."""
    q = encode_sharded(model, [data.queries[i] for i in query_ids], cfg, progress)
    keep = [i for i, d in enumerate(data.corpus.ids) if d not in exclude]
    ids = [data.corpus.ids[i] for i in keep]
    full = _search(vectors, data.corpus.ids, q, query_ids, cfg)
    return full, _search(np.asarray(vectors)[keep], ids, q, query_ids, cfg)


def _search(
    vectors: np.ndarray, ids: list[str], q: np.ndarray, query_ids: list[str], cfg: SearchConfig
) -> dict[str, dict[str, float]]:
    if not ids:
        return {qid: {} for qid in query_ids}
    hits = Index.build(vectors, ids, cfg.index).search_ids(q, min(TOP_K, len(ids)))
    return {qid: dict(h) for qid, h in zip(query_ids, hits, strict=True)}


def dev_subset(
    data: Retrieval, cfg: SearchConfig, queries: int = 200, extra_docs: int = 1000
) -> tuple[list[str], list[int]]:
    """A fixed dev subset for the curve during training: some dev queries, their relevant
    documents and random others (a small corpus, so the curve costs seconds, not minutes)."""
    qrels = data.split(cfg.data.dev_split)
    rng = np.random.default_rng(cfg.data.seed)
    qids = sorted(qrels)
    qids = sorted(rng.choice(qids, size=min(queries, len(qids)), replace=False).tolist())
    docs = {data.corpus.index[d] for q in qids for d in qrels[q]}
    docs |= set(
        rng.choice(len(data.corpus), size=min(extra_docs, len(data.corpus)), replace=False).tolist()
    )
    return qids, sorted(docs)


TOP_K = 100
