import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score, pairwise_distances, roc_auc_score, roc_curve

from tripletkit.faces import metrics


def test_distance_matrix_matches_sklearn():
    x = np.random.default_rng(0).normal(size=(9, 4))
    np.testing.assert_allclose(metrics.distance_matrix(x), pairwise_distances(x), atol=1e-12)


def test_val_at_far_and_eer_hand_computed():
    # 4 same pairs at 1, 2, 3, 6; 4 different pairs at 4, 5, 7, 8
    d = np.array([1, 2, 3, 6, 4, 5, 7, 8], dtype=float)
    same = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    assert metrics.val_at_far(d, same, 0.0) == 0.75  # accept d <= 3
    assert metrics.val_at_far(d, same, 0.5) == 1.0  # accept d <= 6 takes 2 of 4 different
    assert metrics.val_at_far(d, same, 0.25) == 0.75
    # the ROC passes (fpr, fnr) = (0, .25) then (.25, .25): EER 0.25
    assert metrics.equal_error_rate(d, same) == pytest.approx(0.25)


def test_verification_separable_and_auc_matches_sklearn():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(5), 4)
    x = np.eye(5)[labels] * 5 + 0.1 * rng.normal(size=(20, 5))
    dist = metrics.distance_matrix(x)
    out = metrics.verification(dist, labels)
    assert out["verification_accuracy"] == 1.0 and out["eer"] == 0.0
    assert out["val_at_far_1e-3"] == 1.0
    d, same = metrics.all_pairs(dist, labels)
    assert out["roc_auc"] == pytest.approx(roc_auc_score(same, -d))


def test_best_threshold_and_cv_accuracy():
    d = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    same = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    assert metrics.best_threshold(d, same) == pytest.approx(0.5)
    assert metrics.cv_accuracy(d, same, folds=3) == 1.0
    flipped = np.array([0, 0, 0, 1, 1, 1], dtype=bool)
    assert metrics.best_threshold(d, flipped) < 0.1  # reject everything


def test_identification_hand_computed():
    # points on a line; labels a a b b a
    x = np.array([[0.0], [1.0], [2.5], [3.0], [10.0]])
    labels = np.array([0, 0, 1, 1, 0])
    out = metrics.identification(metrics.distance_matrix(x), labels, ks=(1, 2))
    # nearest neighbours: 0->1 (hit), 1->0 (hit), 2->3 (hit), 3->2 (hit), 4->3 (miss)
    assert out["rank1"] == pytest.approx(4 / 5)
    # rank-2: 4's two nearest are 3, 2: miss
    assert out["rank2"] == pytest.approx(4 / 5)
    # MAP@R: R = 2, 2, 1, 1, 2. query 0: order 1(hit),2 -> (1/1)/2 = .5; query 1: 0(hit),2 -> .5
    # query 2: 3 hit -> 1; query 3: 2 hit -> 1; query 4: 3, 2 -> 0
    assert out["map_at_r"] == pytest.approx((0.5 + 0.5 + 1 + 1 + 0) / 5)


def test_clustering_recovers_separated_groups_and_purity():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(4), 5)
    x = np.eye(4)[labels] * 10 + rng.normal(size=(20, 4))
    dist = metrics.distance_matrix(x)
    pred = metrics.agglomerative(dist, n_clusters=4)
    assert adjusted_rand_score(labels, pred) == 1.0
    t = metrics.clustering_threshold(dist, labels)
    assert metrics.clustering_scores(labels, metrics.agglomerative(dist, threshold=t))["ari"] == 1.0
    assert metrics.purity(np.array([0, 0, 1, 1, 1]), np.array([5, 5, 5, 6, 6])) == pytest.approx(
        4 / 5
    )
    with pytest.raises(ValueError, match="exactly one"):
        metrics.agglomerative(dist)


def test_balanced_pairs():
    labels = np.repeat(np.arange(3), 3)
    pairs = metrics.balanced_pairs(labels, seed=0)
    same = labels[pairs[:, 0]] == labels[pairs[:, 1]]
    assert same.sum() == 9 and (~same).sum() == 9 and (pairs[:, 0] < pairs[:, 1]).all()


def test_identification_skips_people_with_one_image():
    x = np.array([[0.0], [1.0], [5.0]])
    out = metrics.identification(metrics.distance_matrix(x), np.array([0, 0, 1]), ks=(1,))
    assert out["rank1"] == 1.0 and out["map_at_r"] == 1.0


def test_training_curves_are_trailing_means_from_the_first_step():
    from tripletkit.faces.report import _smooth

    values = [4.0, 2.0, 6.0, 0.0, 8.0]
    want = [4.0, 3.0, 4.0, 8 / 3, 14 / 3]  # means of the last (up to) 3 values
    np.testing.assert_allclose(_smooth(values, width=3), want)
    assert _smooth([], width=3).shape == (0,)


def _brute_val_at_far(d, same, far):
    """Try every threshold "accept d <= t" (t = -inf and each distance) one by one."""
    best = 0.0
    for t in [-np.inf, *d]:
        accepted = d <= t
        if (accepted & ~same).sum() / (~same).sum() <= far + 1e-12:
            best = max(best, (accepted & same).sum() / same.sum())
    return best


def test_val_at_far_keeps_collinear_roc_points_on_ties():
    # same pairs at 1, 2, 3; different pairs at 2, 3. Accept d <= 1: VAL 1/3, FAR 0; d <= 2:
    # VAL 2/3, FAR 1/2; d <= 3: VAL 1, FAR 1. The middle point lies on the line between the
    # others, and roc_curve(drop_intermediate=True) dropped it: VAL@FAR=0.5 read 1/3.
    d = np.array([2.0, 3.0, 3.0, 2.0, 1.0])
    same = np.array([1, 1, 0, 0, 1], dtype=bool)
    assert metrics.val_at_far(d, same, 0.5) == pytest.approx(2 / 3)
    assert metrics.val_at_far(d, same, 0.49) == pytest.approx(1 / 3)
    assert _brute_val_at_far(d, same, 0.5) == pytest.approx(2 / 3)


@settings(max_examples=150, deadline=None)
@given(
    d=st.lists(st.integers(0, 4), min_size=2, max_size=12),
    flags=st.lists(st.booleans(), min_size=12, max_size=12),
    far=st.sampled_from([0.0, 1e-3, 0.1, 0.25, 1 / 3, 0.5, 0.9, 1.0]),
)
def test_val_at_far_matches_a_brute_force_loop_and_sklearn_points(d, flags, far):
    d = np.array(d, dtype=float) / 2
    same = np.array(flags[: len(d)])
    assume(same.any() and not same.all())
    assert metrics.val_at_far(d, same, far) == pytest.approx(_brute_val_at_far(d, same, far))
    fpr, tpr = metrics.roc_points(d, same)
    want_fpr, want_tpr, _ = roc_curve(same, -d, drop_intermediate=False)
    np.testing.assert_allclose(fpr, want_fpr)
    np.testing.assert_allclose(tpr, want_tpr)
    assert metrics.roc_auc(d, same) == pytest.approx(roc_auc_score(same, -d))


def test_metrics_without_same_or_different_pairs_are_nan_not_an_index_error():
    d = np.array([0.5, 1.0, 2.0])
    for same in (np.zeros(3, dtype=bool), np.ones(3, dtype=bool)):
        assert np.isnan(metrics.equal_error_rate(d, same))
        assert np.isnan(metrics.val_at_far(d, same, 1e-3))
        assert np.isnan(metrics.roc_auc(d, same))
    singletons = np.arange(4)  # no person with two images: no same-person pair
    dist = metrics.distance_matrix(np.random.default_rng(0).normal(size=(4, 3)))
    out = metrics.verification(dist, singletons) | metrics.identification(dist, singletons)
    assert set(out) >= {"eer", "val_at_far_1e-3", "roc_auc", "verification_accuracy", "rank1"}
    assert all(np.isnan(v) for v in out.values())


def test_pair_metrics_name_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        metrics.equal_error_rate(np.array([0.1, np.nan]), np.array([True, False]))
    with pytest.raises(ValueError, match="shapes"):
        metrics.val_at_far(np.zeros(3), np.zeros(2, dtype=bool), 0.1)


def test_summary_keeps_a_metric_that_is_nan_in_one_fold_and_counts_its_folds():
    rows = [
        {"eer": 0.1, "rank1": 0.9},
        {"eer": float("nan"), "rank1": 0.7},
        {"eer": 0.3, "rank1": 0.8},
    ]
    summary = metrics.summarise_folds(rows)
    assert summary["eer"] == {
        "mean": pytest.approx(0.2),
        "std": pytest.approx(0.1),
        "folds": 2,
        "missing": 1,
    }
    assert summary["rank1"]["folds"] == 3 and summary["rank1"]["missing"] == 0
    none = metrics.summarise_folds([{"eer": float("nan")}])
    assert none["eer"] == {"mean": None, "std": None, "folds": 0, "missing": 1}


def test_metrics_table_marks_missing_folds_and_undefined_metrics():
    from tripletkit.faces.report import metrics_table

    summary = {
        "a": metrics.summarise_folds(
            [{"eer": 0.1, "rank1": 0.5}, {"eer": float("nan"), "rank1": 0.5}]
        ),
        "b": metrics.summarise_folds([{"eer": float("nan"), "rank1": 1.0}]),
    }
    table = metrics_table(summary, [("eer", "EER"), ("rank1", "rank-1")], ["a", "b"])
    assert "| a | 0.100 ± 0.000 (1 of 2 folds) | 0.500 ± 0.000 |" in table
    assert "| b | n/a | 1.000 ± 0.000 |" in table
