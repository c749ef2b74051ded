"""Statistics of the search table: per-query scores, seeds, paired tests against brute force,
and re-scoring without the training positives against hand-made runs."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tripletkit.search import metrics
from tripletkit.search.stats import (
    drop_documents,
    drop_judgments,
    paired_test,
    per_query_scores,
    randomisation_p,
    seed_summary,
    training_positives,
)


def brute_force_p(d: np.ndarray) -> float:
    """Every one of the 2^Q sign patterns, by explicit loops."""
    hits = 0
    for signs in itertools.product((1, -1), repeat=len(d)):
        flipped = sum(s * x for s, x in zip(signs, d, strict=True)) / len(d)
        hits += abs(flipped) >= abs(d.mean()) - 1e-12
    return hits / 2 ** len(d)


def test_randomisation_p_by_hand():
    """d = (1, 1, 1): of the 8 sign patterns only +++ and --- reach |mean| 1, so p = 2/8."""
    result = paired_test(np.ones(3), np.zeros(3))
    assert result.p_value == pytest.approx(0.25) and result.diff == 1.0
    assert result.low == result.high == 1.0  # every resample of a constant difference is 1
    # d = (1, -1): every pattern has |mean| >= 0, p = 1
    assert paired_test(np.array([1.0, 0.0]), np.array([0.0, 1.0])).p_value == 1.0


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-1, 1, allow_nan=False), min_size=1, max_size=9), st.integers(0, 99))
def test_exact_randomisation_p_equals_brute_force(values, seed):
    d = np.array(values)
    got = randomisation_p(d, 10000, np.random.default_rng(seed))
    assert got == pytest.approx(brute_force_p(d), abs=1e-12)


def test_sampled_randomisation_p_approaches_the_exact_value():
    """14 queries (16,384 patterns) with 4,000 random patterns: within sampling error of the
    exact p (standard error <= 0.008)."""
    rng = np.random.default_rng(3)
    d = rng.normal(0.15, 0.5, 14)
    exact = brute_force_p(d)
    sampled = randomisation_p(d, 4000, np.random.default_rng(0))
    assert abs(sampled - exact) < 0.04


def test_bootstrap_interval_matches_enumerated_resamples():
    """4 queries: the 4^4 = 256 equally likely resamples enumerated give the bootstrap
    distribution exactly; 20,000 random resamples give its 2.5% and 97.5% quantiles."""
    a, b = np.array([0.9, 0.4, 0.7, 0.2]), np.array([0.5, 0.5, 0.3, 0.1])
    d = a - b
    means = [np.mean(d[list(rows)]) for rows in itertools.product(range(4), repeat=4)]
    low, high = np.quantile(means, [0.025, 0.975])
    result = paired_test(a, b, samples=20000)
    assert result.low == pytest.approx(low, abs=0.02) and result.high == pytest.approx(
        high, abs=0.02
    )
    assert result.diff == pytest.approx(d.mean()) and result.queries == 4


def test_paired_test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="one length"):
        paired_test(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="at least one query"):
        paired_test(np.ones(0), np.ones(0))
    with pytest.raises(ValueError, match="finite"):
        paired_test(np.array([np.nan]), np.ones(1))
    with pytest.raises(ValueError, match="level"):
        paired_test(np.ones(2), np.ones(2), level=1.5)


def test_seed_summary():
    assert seed_summary([0.5]) == {"mean": 0.5, "std": 0.0, "values": [0.5]}
    row = seed_summary([1.0, 2.0, 3.0])
    assert row["mean"] == 2.0 and row["std"] == pytest.approx(1.0)  # sample std, n - 1
    with pytest.raises(ValueError, match="at least one value"):
        seed_summary([])


def test_per_query_scores_average_to_ir_scores():
    rng = np.random.default_rng(0)
    docs = [f"d{i}" for i in range(30)]
    qrels = {f"q{i}": {d: 1 for d in rng.choice(docs, 3, replace=False)} for i in range(12)}
    qrels["unjudged"] = {"d0": 0}
    run = {q: {d: float(rng.random()) for d in docs} for q in qrels if q != "q5"}  # q5 missing
    per = per_query_scores(run, qrels)
    assert set(per["ndcg@10"]) == {f"q{i}" for i in range(12)} and per["map"]["q5"] == 0.0
    means = {m: float(np.mean(list(v.values()))) for m, v in per.items()}
    assert means == pytest.approx(metrics.ir_scores(run, qrels))


def test_rescoring_without_training_positives_by_hand():
    """Documents a and c are training positives. Query q1 ranks a > d > b > c; its relevant
    documents are a and b. On the whole corpus: a at 1, b at 3, nDCG@10 = (1 + 1/log2 4) /
    (1 + 1/log2 3). Without a and c the ranking is d > b and only b is judged: b at 2,
    nDCG@10 = 1/log2 3. Query q2's only relevant document is a training positive: it cannot be
    scored without it and is dropped."""
    train = {"t1": {"a": 1, "x": 0}, "t2": {"c": 2}}
    removed = training_positives(train)
    assert removed == {"a", "c"}
    run = {"q1": {"a": 4.0, "d": 3.5, "b": 3.0, "c": 2.0}, "q2": {"a": 1.0, "e": 0.5}}
    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"a": 1}}
    rest, judged = drop_documents(run, removed, k=10), drop_judgments(qrels, removed)
    assert rest == {"q1": {"d": 3.5, "b": 3.0}, "q2": {"e": 0.5}}
    assert judged == {"q1": {"b": 1}}
    whole = per_query_scores(run, qrels)["ndcg@10"]
    assert whole["q1"] == pytest.approx((1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3)))
    assert whole["q2"] == pytest.approx(1.0)
    assert per_query_scores(rest, judged)["ndcg@10"] == {"q1": pytest.approx(1 / np.log2(3))}
    assert drop_documents(run, removed, k=1) == {"q1": {"d": 3.5}, "q2": {"e": 0.5}}
