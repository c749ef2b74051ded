import numpy as np
import pytest

from tripletkit.negatives import MiningConfig, mine_negatives


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
