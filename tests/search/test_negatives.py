import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tripletkit.search.index import Index
from tripletkit.search.negatives import MiningConfig, mine_negatives


def score_table(scores: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """A query [1, 0, ...] and documents whose inner product with it is exactly ``scores``."""
    n = len(scores)
    docs = np.zeros((n, n + 1), dtype=np.float64)
    docs[:, 0] = scores
    docs[np.arange(n), np.arange(1, n + 1)] = np.sqrt(1 - np.square(scores))
    query = np.zeros((1, n + 1))
    query[0, 0] = 1.0
    return query.astype(np.float32), docs.astype(np.float32)


# documents by score: d0 .90 (relevant), d1 .88, d2 .86 (relevant: a known false negative),
# d3 .84, d4 .80, d5 .70, d6 .60, d7 .50
SCORES = [0.90, 0.88, 0.86, 0.84, 0.80, 0.70, 0.60, 0.50]
IDS = [f"d{i}" for i in range(8)]
QRELS = {"q": {"d0": 1, "d2": 1}}


def run(config):
    query, docs = score_table(SCORES)
    return mine_negatives(["q"], query, IDS, docs, QRELS, config)


def test_known_false_negatives_are_dropped_and_counted():
    mined = run(MiningConfig(n=3, relative_margin=None))
    assert mined.negatives["q"] == ["d1", "d3", "d4"]
    assert mined.removed == {"relevant": 2} and mined.relevant_kept == 0
    assert mined.candidates == 8


def test_unfiltered_keeps_false_negatives_and_counts_them():
    # the naive miner knows one positive (d0, listed first) and takes d2, also relevant
    mined = run(MiningConfig.unfiltered(n=3))
    assert mined.negatives["q"] == ["d1", "d2", "d3"]
    assert mined.relevant_kept == 1 and mined.removed == {"positive": 1}


def test_relative_margin_is_topk_percpos():
    # positive score = lowest relevant = .86; drop scores above (1 - .05) * .86 = .817
    mined = run(MiningConfig(n=3, relative_margin=0.05))
    assert mined.negatives["q"] == ["d4", "d5", "d6"]
    assert mined.removed == {"relevant": 2, "relative": 2}
    assert mined.positive_score["q"] == pytest.approx(0.86, abs=1e-6)


def test_absolute_margin_and_max_score():
    mined = run(MiningConfig(n=8, relative_margin=None, absolute_margin=0.1))
    assert mined.negatives["q"] == ["d5", "d6", "d7"]  # drop above .86 - .1 = .76
    mined = run(MiningConfig(n=8, relative_margin=None, max_score=0.75))
    assert mined.negatives["q"] == ["d5", "d6", "d7"]
    assert mined.removed == {"relevant": 2, "max_score": 3}


def test_rank_window_is_respected():
    mined = run(MiningConfig(n=8, r_min=3, r_max=6, relative_margin=None))
    assert mined.negatives["q"] == ["d3", "d4", "d5"]  # ranks 3, 4, 5 only
    assert mined.candidates == 3


def test_queries_without_judgments_are_skipped():
    query, docs = score_table(SCORES)
    mined = mine_negatives(
        ["q", "other"],
        np.vstack([query, query]),
        IDS,
        docs,
        QRELS,
        MiningConfig(n=1, relative_margin=None),
    )
    assert list(mined.negatives) == ["q"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"r_min": 5, "r_max": 5}, "r_min < r_max"),
        ({"n": 0}, "n must be"),
        ({"relative_margin": 1.0}, "relative_margin"),
        ({"exclude": "all"}, "exclude must be"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MiningConfig(**kwargs)


# ---- the relative filter for either sign of the positive score (issue 10, item 8) -----------


@pytest.mark.parametrize(
    ("scores", "relevant", "kept", "removed"),
    [
        # the example: positive -0.20, threshold -0.20 - 0.05 x 0.20 = -0.21; the
        # candidate at -0.195 outscores the positive (and -0.205 is within the margin)
        ([-0.10, -0.195, -0.20, -0.205, -0.25, -0.40], ["d2"], ["d4", "d5"], 3),
        # positive 0.86: threshold 0.817 (= 0.95 x 0.86, NV-Retriever's TopK-PercPos)
        ([0.90, 0.88, 0.86, 0.84, 0.80, 0.70], ["d2"], ["d4", "d5"], 3),
        # positive 0: threshold 0, whatever the margin
        ([0.30, 0.01, 0.0, -0.01, -0.50, -0.60], ["d2"], ["d3", "d4", "d5"], 2),
        # positive -0.60 (the lowest relevant), threshold -0.63
        ([-0.10, -0.50, -0.60, -0.62, -0.64, -0.70], ["d1", "d2"], ["d4", "d5"], 2),
    ],
)
def test_relative_margin_stays_below_the_positive_for_either_sign(scores, relevant, kept, removed):
    query, docs = score_table(scores)
    ids = [f"d{i}" for i in range(len(scores))]
    qrels = {"q": dict.fromkeys(relevant, 1)}
    mined = mine_negatives(["q"], query, ids, docs, qrels, MiningConfig(n=6, relative_margin=0.05))
    assert mined.negatives["q"] == kept
    assert mined.removed["relative"] == removed
    positive = mined.positive_score["q"]
    assert all(s <= positive - 0.05 * abs(positive) for s in mined.scores["q"])


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(
        st.floats(-0.99, 0.99, allow_nan=False).map(lambda x: round(x, 3)),
        min_size=2,
        max_size=12,
        unique=True,  # ties have no defined order
    ),
    data=st.data(),
    margin=st.floats(0.0, 0.9),
)
def test_no_kept_negative_scores_above_the_relative_threshold(scores, data, margin):
    n = len(scores)
    judged = data.draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n - 1))
    query, docs = score_table(scores)
    ids = [f"d{i}" for i in range(n)]
    qrels = {"q": {ids[i]: 1 for i in sorted(judged)}}
    mined = mine_negatives(
        ["q"], query, ids, docs, qrels, MiningConfig(n=n, relative_margin=margin)
    )
    positive = min(float(docs[i] @ query[0]) for i in judged)
    threshold = positive - margin * abs(positive)
    exact = docs @ query[0]
    expected = [ids[i] for i in np.argsort(-exact, kind="stable") if i not in judged]
    expected = [d for d in expected if exact[ids.index(d)] <= threshold]
    assert mined.negatives["q"] == expected
    assert all(s <= positive for s in mined.scores["q"])


# ---- approximate indexes: candidates rescored exactly (issue 10, item 11) -------------------


class ApproximateSearch:
    """A FAISS-like index that proposes ``order`` (FAISS rows) with the made-up ``scores``."""

    def __init__(self, order: list[int], scores: list[float]) -> None:
        self.order, self.scores = order, scores

    def search(self, queries, k):
        rows = np.array([self.order[:k]] * len(queries), dtype=np.int64)
        return np.array([self.scores[:k]] * len(queries), dtype=np.float32), rows


def test_approximate_candidate_scores_are_rescored_before_the_filters():
    query, docs = score_table(SCORES)
    # the index stores the documents in another order than doc_ids (row j holds stored[j]) and
    # under-scores d1 (.88) and d3 (.84) below the relative threshold .817
    stored = ["d7", "d3", "d0", "d1", "d6", "d5", "d4", "d2"]
    faiss_like = ApproximateSearch(
        order=[2, 1, 3, 6, 5, 7, 4, 0],  # d0, d3, d1, d4, d5, d2, d6, d7
        scores=[0.91, 0.80, 0.79, 0.78, 0.77, 0.75, 0.61, 0.49],
    )
    index = Index(faiss_like, stored, "hnsw", {})
    mined = mine_negatives(["q"], query, IDS, docs, QRELS, MiningConfig(n=3), index)
    assert mined.negatives["q"] == ["d4", "d5", "d6"]
    assert mined.scores["q"] == pytest.approx([0.80, 0.70, 0.60], abs=1e-6)
    assert mined.removed == {"relevant": 2, "relative": 2}


def test_an_ivfpq_index_gives_exact_scores():
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((400, 16)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    queries = docs[:5] + 0.3 * rng.standard_normal((5, 16)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = [f"d{i}" for i in range(400)]
    qids = [f"q{i}" for i in range(5)]
    qrels = {q: {f"d{i}": 1} for i, q in enumerate(qids)}
    index = Index.build(docs, ids, "ivfpq", nprobe=4)
    approx, _ = index.search(queries, 20)
    exact_top = np.sort(queries @ docs.T, axis=1)[:, ::-1][:, :20]
    assert not np.allclose(approx, exact_top, atol=1e-3)  # the index is approximate
    mined = mine_negatives(qids, queries, ids, docs, qrels, MiningConfig(n=5, r_max=20), index)
    for i, q in enumerate(qids):
        rows = [ids.index(d) for d in mined.negatives[q]]
        np.testing.assert_allclose(mined.scores[q], docs[rows] @ queries[i], atol=1e-5)
        assert mined.scores[q] == sorted(mined.scores[q], reverse=True)
        positive = mined.positive_score[q]
        assert all(s <= positive - 0.05 * abs(positive) for s in mined.scores[q])


def test_an_index_with_unknown_ids_is_refused():
    query, docs = score_table(SCORES)
    index = Index.build(docs, [*IDS[:-1], "elsewhere"])
    with pytest.raises(ValueError, match="'elsewhere', which is not in doc_ids"):
        mine_negatives(["q"], query, IDS, docs, QRELS, MiningConfig(n=3), index)
