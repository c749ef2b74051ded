"""The BM25 rows: today's setting and Anserini's BEIR setting (stemming, stop words, k1 0.9,
b 0.4, title + text), on hand-made corpora."""

import math

import pytest

from tripletkit.search.bm25 import VARIANTS, bm25_run, document_texts
from tripletkit.search.data import Corpus, Retrieval


def retrieval(docs: dict[str, tuple[str, str]], queries: dict[str, str]) -> Retrieval:
    ids = list(docs)
    corpus = Corpus(
        ids, [docs[d][0] for d in ids], [docs[d][1] for d in ids], {d: i for i, d in enumerate(ids)}
    )
    return Retrieval(corpus, queries, {})


def ranked(run: dict[str, dict[str, float]], qid: str) -> list[str]:
    return [d for d, s in sorted(run[qid].items(), key=lambda kv: -kv[1]) if s > 0]


DOCS = {
    "plain": ("", "a cat and a dog"),
    "inflected": ("", "cats sleeping on warm mats"),
    "filler": ("", "an old river bridge over the water"),
    "titled": ("Violin", "a bowed string instrument"),
}


def test_stemming_finds_the_inflected_document():
    """'cat sleeps': without stemming only the document with the bare word 'cat' matches;
    Porter stemming reduces 'cats'/'sleeping'/'sleeps' to 'cat'/'sleep', and the document
    with both terms ranks first."""
    data = retrieval(DOCS, {"q": "cat sleeps"})
    assert ranked(bm25_run(data, ["q"], "bm25"), "q") == ["plain"]
    assert ranked(bm25_run(data, ["q"], "bm25_standard"), "q") == ["inflected", "plain"]


def test_stop_words_score_nothing():
    """'the' and 'of' are stop words in both settings: a query of stop words matches no
    document, and adding them to a query leaves its scores unchanged."""
    data = retrieval(DOCS, {"stop": "the of the", "river": "river", "the river": "the river"})
    for variant in VARIANTS:
        run = bm25_run(data, ["stop", "river", "the river"], variant)
        assert ranked(run, "stop") == []
        assert run["river"] == run["the river"]
        assert ranked(run, "river") == ["filler"]


def test_the_standard_setting_indexes_titles():
    data = retrieval(DOCS, {"q": "violin"})
    assert ranked(bm25_run(data, ["q"], "bm25"), "q") == []
    assert ranked(bm25_run(data, ["q"], "bm25_standard"), "q") == ["titled"]
    assert document_texts(data.corpus, True)[3] == "Violin a bowed string instrument"
    assert document_texts(data.corpus, True)[0] == "a cat and a dog"  # no empty title glued on


@pytest.mark.parametrize("variant", ["bm25", "bm25_standard"])
def test_scores_match_lucene_bm25_by_hand(variant):
    """Lucene's BM25 (since Lucene 8, without the constant factor k1 + 1) with the variant's
    k1 and b: idf log(1 + (N - df + 0.5) / (df + 0.5)) times tf / (tf + k1 (1 - b + b |d| /
    avgdl)), lengths counted after stop words."""
    docs = {
        "a": ("", "river river bank"),
        "b": ("", "river delta mud silt"),
        "c": ("", "mountain"),
    }
    data = retrieval(docs, {"q": "river"})
    k1, b = VARIANTS[variant].k1, VARIANTS[variant].b
    lengths = {"a": 3, "b": 4, "c": 1}
    avgdl = sum(lengths.values()) / 3
    idf = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))

    def score(tf: int, n: int) -> float:
        return idf * tf / (tf + k1 * (1 - b + b * n / avgdl))

    run = bm25_run(data, ["q"], variant)["q"]
    assert run["a"] == pytest.approx(score(2, 3), rel=1e-5)
    assert run["b"] == pytest.approx(score(1, 4), rel=1e-5)


def test_excluded_documents_are_left_out_of_every_ranking():
    data = retrieval(DOCS, {"q": "cat sleeps"})
    run = bm25_run(data, ["q"], "bm25_standard", exclude={"inflected"})
    assert "inflected" not in run["q"] and ranked(run, "q") == ["plain"]
    assert bm25_run(data, ["q"], "bm25", exclude=set(DOCS)) == {"q": {}}


def test_bad_variant_or_query_names_it():
    data = retrieval(DOCS, {"q": "cat"})
    with pytest.raises(ValueError, match="unknown BM25 variant 'bm42'"):
        bm25_run(data, ["q"], "bm42")
    with pytest.raises(ValueError, match="query id 'nope'"):
        bm25_run(data, ["nope"], "bm25")
