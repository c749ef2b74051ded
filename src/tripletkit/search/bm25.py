"""BM25 baselines for search (bm25s, Lucene's scoring), in two settings.

- ``bm25``: k1 = 1.5, b = 0.75, Lucene's 33 English stop words, no stemming, the document text
  alone (the setting of the project's first search table);
- ``bm25_standard``: the baseline BEIR papers report (Anserini / Pyserini): k1 = 0.9, b = 0.4,
  Porter stemming (PyStemmer's "porter"), the same stop words, and the title indexed with the
  text where the corpus has titles.

Both tokenise with bm25s's pattern (lower case, words of two or more letters or digits); the
queries go through the same analyser as the documents. The score of document d for query q is
Lucene's (since version 8, which drops the constant factor k1 + 1): the sum over the query's
terms t of idf(t) x tf(t, d) / (tf(t, d) + k1 (1 - b + b |d| / avgdl)), with idf(t) =
log(1 + (N - df(t) + 0.5) / (df(t) + 0.5)) and |d| counted after stop words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .data import Corpus, Retrieval


@dataclass(frozen=True)
class BM25Settings:
    """One BM25 setting: the scoring's k1 and b, the stemmer (a PyStemmer algorithm name, or
    None), and whether titles are indexed with the text."""

    k1: float
    b: float
    stemmer: str | None
    titles: bool


VARIANTS = {
    "bm25": BM25Settings(k1=1.5, b=0.75, stemmer=None, titles=False),
    "bm25_standard": BM25Settings(k1=0.9, b=0.4, stemmer="porter", titles=True),
}


def document_texts(corpus: Corpus, titles: bool) -> list[str]:
    """What is indexed per document: "title text" where ``titles`` and the title is non-empty,
    else the text."""
    if not titles:
        return list(corpus.texts)
    return [
        f"{t} {x}" if t.strip() else x for t, x in zip(corpus.titles, corpus.texts, strict=True)
    ]


def _tokenize(texts: list[str], settings: BM25Settings) -> list[list[str]]:
    import bm25s

    stemmer = None
    if settings.stemmer is not None:
        try:
            import Stemmer
        except ImportError as err:  # pragma: no cover - PyStemmer ships in the search extra
            raise ImportError(
                "bm25_standard needs PyStemmer: pip install 'tripletkit[search]'"
            ) from err
        stemmer = Stemmer.Stemmer(settings.stemmer).stemWords
    tokens: Any = bm25s.tokenize(
        texts, stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False
    )
    return [list(t) for t in tokens]


def bm25_run(
    data: Retrieval,
    query_ids: list[str],
    variant: str = "bm25",
    k: int = 100,
    exclude: set[str] | None = None,
) -> dict[str, dict[str, float]]:
    """The top-``k`` documents of each query under one BM25 setting.

    Args:
        data: the corpus and the queries.
        query_ids: (Q,) ids of ``data.queries``.
        variant: a key of :data:`VARIANTS`.
        k: documents per query (at most the corpus size); a query none of whose terms is in
            the corpus still gets k documents, all scored 0.
        exclude: documents left out of every ranking (a search of the rest of the corpus).

    Returns:
        query id -> document id -> score.

    Raises:
        ValueError: an unknown variant, or a query id that is not in ``data.queries``.
    """
    import bm25s

    if variant not in VARIANTS:
        raise ValueError(f"unknown BM25 variant {variant!r}; variants: {', '.join(VARIANTS)}")
    missing = next((q for q in query_ids if q not in data.queries), None)
    if missing is not None:
        raise ValueError(f"query id {missing!r} is not among the queries")
    settings = VARIANTS[variant]
    retriever = bm25s.BM25(k1=settings.k1, b=settings.b)
    corpus_tokens = _tokenize(document_texts(data.corpus, settings.titles), settings)
    retriever.index(corpus_tokens, show_progress=False)
    queries = _tokenize([data.queries[q] for q in query_ids], settings)
    ids = data.corpus.ids
    mask = None
    if exclude:
        mask = np.array([d not in exclude for d in ids], dtype=np.float32)
    depth = min(k, int(mask.sum()) if mask is not None else len(ids))
    if depth == 0:
        return {qid: {} for qid in query_ids}
    rows, scores = retriever.retrieve(
        queries, k=depth, show_progress=False, n_threads=1, weight_mask=mask
    )
    return {
        qid: {ids[r]: float(s) for r, s in zip(row, srow, strict=True) if mask is None or mask[r]}
        for qid, row, srow in zip(query_ids, rows, scores, strict=True)
    }
