"""Corpus-level negatives for the search arms: mined once with the zero-shot encoder and shared
by every arm and seed, or re-mined with the model in training.

The zero-shot encodings of the corpus (``<run>/base/corpus.npz``) and of the training queries
(``<run>/base/queries.<split>.npz``) are cached on disk, keyed on the model, its length and the
texts (:mod:`tripletkit.search.encodings`); within a process, :class:`ZeroShotMiner`
builds the index once and mines each distinct miner once, whatever the number of arms and
seeds that use it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import distributed
from .._io import write_json, write_text
from .config import SearchConfig
from .data import Retrieval
from .encoder import load_encoder
from .encodings import corpus_vectors, encode_sharded, text_vectors, unwrap
from .index import Index
from .negatives import MinedNegatives, MiningConfig, mine_negatives


class ZeroShotMiner:
    """Mines the training queries with the zero-shot encoder (``cfg.model``), loading it,
    encoding and indexing on first use only.

    Args:
        data: the dataset.
        qrels: the training judgments (query id -> document id -> grade).
        cfg: the run's config (model, encoding batch, index kind, split names).
        folder: where the zero-shot encodings are cached (``<run>/base``).
        progress: show progress bars.
    """

    def __init__(
        self,
        data: Retrieval,
        qrels: dict[str, dict[str, int]],
        cfg: SearchConfig,
        folder: Path,
        progress: bool,
    ) -> None:
        self.data, self.qrels, self.cfg = data, qrels, cfg
        self.folder, self.progress = folder, progress
        self.qids = sorted(qrels)
        self._state: tuple[np.ndarray, np.ndarray, Index] | None = None
        self._mined: dict[MiningConfig, MinedNegatives] = {}

    def encodings(self) -> tuple[np.ndarray, np.ndarray, Index]:
        """(N, d) corpus vectors, (Q, d) vectors of the queries ``self.qids`` and an index
        over the corpus vectors, computed (or read from the cache) once."""
        if self._state is None:
            cfg, data = self.cfg, self.data
            model = load_encoder(cfg.model.path, cfg.model.max_seq_length, cfg.model.runtime)
            docs = corpus_vectors(model, data, cfg, self.folder / "corpus.npz", self.progress)
            cache = self.folder / f"queries.{cfg.data.train_split}.npz"
            texts = [data.queries[q] for q in self.qids]
            queries = text_vectors(model, self.qids, texts, cfg, cache, self.progress)
            self._state = (docs, queries, Index.build(docs, data.corpus.ids, cfg.index))
        return self._state

    def mine(
        self, miner: MiningConfig, qrels: dict[str, dict[str, int]] | None = None
    ) -> MinedNegatives:
        """The negatives of ``miner`` for every training query, judged by ``qrels`` (default:
        the training judgments, memoised per miner; pass
        :func:`~tripletkit.search.arms.known_positives` for the naive arm)."""
        if qrels is None and miner in self._mined:
            return self._mined[miner]
        docs, queries, index = self.encodings()
        show = self.progress and distributed.is_main()
        judged = self.qrels if qrels is None else qrels
        ids = self.data.corpus.ids
        mined = mine_negatives(self.qids, queries, ids, docs, judged, miner, index, show)
        if qrels is None:
            self._mined[miner] = mined
        return mined


def mine_with(
    model: Any,
    data: Retrieval,
    qrels: dict[str, dict[str, int]],
    cfg: SearchConfig,
    miner: MiningConfig,
    cache: Path | None,
    progress: bool,
    vectors: np.ndarray | None = None,
) -> MinedNegatives:
    """Mine negatives for the training queries with ``model``'s embeddings (the corpus from
    ``vectors``, or encoded and cached in ``cache``)."""
    if vectors is None:
        if cache is None:
            raise ValueError("mine_with needs the corpus vectors or a cache file for them")
        vectors = corpus_vectors(model, data, cfg, cache, progress)
    qids = sorted(qrels)
    q = encode_sharded(model, [data.queries[i] for i in qids], cfg, progress)
    index = Index.build(vectors, data.corpus.ids, cfg.index)
    show = progress and distributed.is_main()
    return mine_negatives(qids, q, data.corpus.ids, vectors, qrels, miner, index, show)


def remine_with(
    data: Retrieval,
    qrels: dict[str, dict[str, int]],
    cfg: SearchConfig,
    miner: MiningConfig,
    progress: bool,
) -> Callable[[torch.nn.Module], dict[str, list[str]]]:
    """The re-miner of :class:`~tripletkit.search.training.SearchBatches`: model (possibly
    wrapped in DistributedDataParallel, as the training loop passes it) -> negatives per
    training query, mined with that model's current encodings of the corpus and the queries
    (not cached: the model changes between calls). Leaves the model in eval mode."""

    def remine(model: torch.nn.Module) -> dict[str, list[str]]:
        inner = unwrap(model)
        inner.eval()
        vectors = encode_sharded(inner, data.corpus.texts, cfg, progress, "corpus")
        return mine_with(inner, data, qrels, cfg, miner, None, progress, vectors).negatives

    return remine


def write_mined(path: Path, summary: Path, mined: MinedNegatives, miner: MiningConfig) -> None:
    """The negatives as JSONL triplets, and the filter counts as JSON."""
    lines = [
        json.dumps(
            {
                "query_id": q,
                "negative_ids": n,
                "negative_scores": mined.scores[q],
                "positive_score": mined.positive_score[q],
            }
        )
        for q, n in mined.negatives.items()
    ]
    write_text(path, "\n".join(lines) + "\n")
    write_json(
        summary,
        {
            "config": asdict(miner),
            "queries": len(mined.negatives),
            "candidates": mined.candidates,
            "removed": mined.removed,
            "kept": mined.kept,
            "relevant_kept": mined.relevant_kept,
        },
    )
