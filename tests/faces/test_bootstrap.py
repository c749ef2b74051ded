"""Pairs of a gallery / probe protocol, bootstrap draws over people and the paired difference
of two methods, against loop oracles and hand-computed cases."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import pairwise_distances

from tripletkit.faces import metrics
from tripletkit.faces.bootstrap import (
    draw_pairs,
    paired_difference,
    pairs_of_draw,
    resample_people,
)


def _cross_pairs_loop(dist, labels):
    d, same = [], []
    for i in range(len(labels)):
        for j in range(len(labels)):
            if i != j:
                d.append(dist[i, j])
                same.append(labels[i] == labels[j])
    return np.array(d), np.array(same, dtype=bool)


def _draw_loop(dist, labels, index, new, cross):
    """Every pair of the drawn images, as a list, leaving out an image against itself (cross)
    and two copies of one person."""
    d, same = [], []
    n = len(index)
    for i in range(n):
        for j in range(n) if cross else range(i + 1, n):
            if i == j or (cross and index[i] == index[j]):
                continue
            copies = new[i] != new[j] and labels[index[i]] == labels[index[j]]
            if copies:
                continue
            d.append(dist[index[i], index[j]])
            same.append(new[i] == new[j])
    return np.array(d), np.array(same, dtype=bool)


def test_cross_distance_matches_sklearn():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 5)), rng.normal(size=(4, 5))
    np.testing.assert_allclose(metrics.cross_distance(a, b), pairwise_distances(a, b), atol=1e-9)


def test_cross_pairs_hand_computed():
    dist = np.array([[0.0, 1.0, 2.0], [3.0, 0.5, 4.0], [5.0, 6.0, 0.1]])
    d, same = metrics.cross_pairs(dist, np.array([0, 0, 1]))
    assert d.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # the diagonal is not a pair
    assert same.tolist() == [True, False, True, False, False, False]


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 3), min_size=2, max_size=12),
    seed=st.integers(0, 2**31 - 1),
    cross=st.booleans(),
)
def test_pairs_of_a_draw_match_a_loop(labels, seed, cross):
    labels = np.array(labels)
    rng = np.random.default_rng(seed)
    dist = rng.random((len(labels), len(labels)))
    if not cross:
        dist = dist + dist.T
    if cross:
        np.testing.assert_array_equal(
            np.sort(metrics.cross_pairs(dist, labels)[0]),
            np.sort(_cross_pairs_loop(dist, labels)[0]),
        )
    index, new = resample_people(labels, rng)
    d, same = pairs_of_draw(dist, labels, index, new, cross=cross)
    d_loop, same_loop = _draw_loop(dist, labels, index, new, cross)
    order, order_loop = np.lexsort((same, d)), np.lexsort((same_loop, d_loop))
    np.testing.assert_array_equal(d[order], d_loop[order_loop])
    np.testing.assert_array_equal(same[order], same_loop[order_loop])


def test_draw_pairs_is_pairs_of_draw_of_one_resampling():
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    dist = metrics.distance_matrix(np.random.default_rng(1).normal(size=(7, 3)))
    d, same = draw_pairs(dist, labels, np.random.default_rng(5))
    index, new = resample_people(labels, np.random.default_rng(5))
    d2, same2 = pairs_of_draw(dist, labels, index, new)
    np.testing.assert_array_equal(d, d2)
    np.testing.assert_array_equal(same, same2)


def _separable(rng, labels, spread):
    """Embeddings of ``labels``' people around random centres, ``spread`` apart within a
    person."""
    centres = rng.normal(size=(labels.max() + 1, 8))
    return centres[labels] + spread * rng.normal(size=(len(labels), 8))


@pytest.mark.parametrize("cross", [False, True])
def test_a_method_against_itself_differs_by_exactly_zero(cross):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 4)
    folds = []
    for _ in range(2):
        e = _separable(rng, labels, 0.6)
        if cross:
            dist = metrics.cross_distance(e + 0.1 * rng.normal(size=e.shape), e)
        else:
            dist = metrics.distance_matrix(e)
        folds.append((dist, dist, labels))
    out = paired_difference(folds, cross=cross, draws=30)
    for k in ("eer", "val_at_far_1e-3"):
        assert out[k] == {"difference": 0.0, "low": 0.0, "high": 0.0}


def test_a_better_method_has_an_interval_below_zero_in_eer():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(10), 5)
    folds = []
    for _ in range(3):
        worse = metrics.distance_matrix(_separable(rng, labels, 1.5))
        better = metrics.distance_matrix(_separable(rng, labels, 0.3))
        folds.append((worse, better, labels))
    out = paired_difference(folds, draws=50)
    eer = out["eer"]
    assert eer["high"] < 0 and eer["low"] <= eer["difference"] <= eer["high"]
    # the point estimate is the mean over folds of B's EER minus A's
    expected = np.mean(
        [
            metrics.equal_error_rate(*metrics.all_pairs(b, y))
            - metrics.equal_error_rate(*metrics.all_pairs(a, y))
            for a, b, y in folds
        ]
    )
    assert eer["difference"] == pytest.approx(expected)
    assert out["val_at_far_1e-3"]["low"] > 0
