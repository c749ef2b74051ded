"""Evaluation of a search run: the search without the training positives, the seed table and
the choice of comparisons."""

import numpy as np
import pytest
from search_fixtures import TINY_SEARCH, make_beir, tiny_encoder

from tripletkit.cli.settings import load_config
from tripletkit.search import retrieval
from tripletkit.search.data import load_beir
from tripletkit.search.encoder import encode, load_encoder
from tripletkit.search.evaluation import significance, summarise
from tripletkit.search.stats import drop_documents, training_positives


def test_the_search_without_training_positives_is_a_deep_search_minus_them(tmp_path):
    """The restricted ranking equals the full corpus ranked exactly, the training positives
    dropped, cut at 100 (the tiny corpus has 36 documents, so every one is ranked)."""
    data = load_beir(make_beir(tmp_path / "beir"))
    encoder = tiny_encoder(tmp_path)
    cfg = load_config(None, [f"model.path={encoder}", *TINY_SEARCH], task="search")
    model = load_encoder(encoder, 32)
    vectors = encode(model, data.corpus.texts, 16, False)
    qids = sorted(data.split("test"))
    removed = training_positives(data.split("train"))
    assert 0 < len(removed) < len(data.corpus)
    full, rest = retrieval.retrieve_without(model, data, qids, vectors, cfg, False, removed)
    assert all(len(full[q]) == len(data.corpus) for q in qids)
    deep = drop_documents(full, removed, retrieval.TOP_K)
    for qid in qids:
        assert list(rest[qid]) == list(deep[qid])
        assert list(rest[qid].values()) == pytest.approx(list(deep[qid].values()), abs=1e-6)
    q = encode(model, [data.queries[i] for i in qids], 16, False)
    exact = q @ vectors.T
    for row, qid in zip(exact, qids, strict=True):
        kept = [i for i in np.argsort(-row) if data.corpus.ids[i] not in removed]
        assert list(rest[qid]) == [data.corpus.ids[i] for i in kept]


def per_seed(*scores):
    return [{"ndcg@10": dict(zip("abcd", s, strict=True))} for s in scores]


def test_seed_table_and_comparisons_against_the_strongest_bm25():
    scores = {
        "bm25": per_seed([0.1, 0.2, 0.3, 0.4]),
        "bm25_standard": per_seed([0.2, 0.3, 0.4, 0.5]),
        "base": per_seed([0.3, 0.3, 0.3, 0.3]),
        "mined_filtered": per_seed([0.9, 0.8, 0.7, 0.6], [0.7, 0.8, 0.9, 1.0]),
        "mined_unfiltered": per_seed([0.5, 0.5, 0.5, 0.5], [0.6, 0.6, 0.6, 0.6]),
    }
    table = summarise(scores)
    assert table["mined_filtered"]["ndcg@10"]["values"] == pytest.approx([0.75, 0.85])
    assert table["bm25"]["ndcg@10"] == {"mean": 0.25, "std": 0.0, "values": [0.25]}
    result = significance(scores, table)
    assert result["strongest_bm25"] == "bm25_standard"
    pairs = [(t["a"], t["b"]) for t in result["tests"]]
    assert pairs == [
        ("mined_filtered", "mined_unfiltered"),
        ("base", "bm25_standard"),
        ("mined_filtered", "bm25_standard"),
        ("mined_unfiltered", "bm25_standard"),
    ]
    first = result["tests"][0]  # per query, seed means: filtered 0.8 each, unfiltered 0.55
    assert first["diff"] == pytest.approx(0.25) and first["low"] == pytest.approx(0.25)
    assert first["p_value"] == pytest.approx(2 / 16)  # 4 queries, exact: only ++++ and ----
