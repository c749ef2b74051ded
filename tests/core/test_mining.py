import numpy as np
import pytest
import torch

import tripletkit.mining as mining
from conftest import LAYOUTS, random_labels
from reference import loop_mine
from tripletkit import mine, pairwise_distances
from tripletkit.mining import FALLBACKS, Relevance, label_groups, scan

# Hand-written case: labels [0, 0, 1, 1]; every value is distinct and far from every
# threshold below, so the expected triplets can be read off the matrix.
LABELS = torch.tensor([0, 0, 1, 1])
D = torch.tensor(
    [
        [0.0, 0.5, 0.6, 1.2],
        [0.5, 0.0, 0.4, 0.9],
        [0.6, 0.4, 0.0, 0.3],
        [1.2, 0.9, 0.3, 0.0],
    ]
)


def test_hand_all():
    expected = [
        (0, 1, 2),
        (0, 1, 3),
        (1, 0, 2),
        (1, 0, 3),
        (2, 3, 0),
        (2, 3, 1),
        (3, 2, 0),
        (3, 2, 1),
    ]
    assert sorted(mine(D, LABELS, "all").as_list()) == expected


def test_hand_hard():
    # farthest positive, closest negative per anchor
    assert mine(D, LABELS, "hard").as_list() == [(0, 1, 2), (1, 0, 2), (2, 3, 1), (3, 2, 1)]


def test_hand_semi_hard():
    # closest negative with D[a,n] > D[a,p]: for (1, 0) negative 2 (0.4) is too close
    result = mine(D, LABELS, "semi-hard")
    assert result.as_list() == [(0, 1, 2), (1, 0, 3), (2, 3, 1), (3, 2, 1)]
    assert result.dropped == 0


@pytest.mark.parametrize(
    ("fallback", "expected", "dropped"),
    [
        ("skip", [(0, 1, 3), (3, 2, 1)], 2),
        ("hardest", [(0, 1, 3), (1, 0, 2), (2, 3, 1), (3, 2, 1)], 0),
        ("easiest", [(0, 1, 3), (1, 0, 3), (2, 3, 0), (3, 2, 1)], 0),
    ],
)
def test_hand_semi_hard_offset_and_fallback(fallback, expected, dropped):
    # t = 0.5: (0,1) needs > 1.0 -> 3; (1,0) > 1.0: none; (2,3) > 0.8: none; (3,2) > 0.8 -> 1
    result = mine(D, LABELS, "semi-hard", offset=0.5, fallback=fallback)
    assert result.as_list() == expected
    assert result.dropped == dropped


def test_hand_semi_hard_infinite_offsets():
    assert mine(D, LABELS, "semi-hard", offset=-float("inf")).as_list() == [
        (0, 1, 2),
        (1, 0, 2),
        (2, 3, 1),
        (3, 2, 1),
    ]
    result = mine(D, LABELS, "semi-hard", offset=float("inf"))
    assert result.as_list() == [] and result.dropped == 4


def test_ties_go_to_smallest_index():
    labels = torch.tensor([0, 0, 1, 1, 2])
    dist = torch.ones(5, 5) - torch.eye(5)
    assert mine(dist, labels, "hard").as_list()[0] == (0, 1, 2)
    assert mine(dist, labels, "semi-hard", offset=-1.0).as_list()[0] == (0, 1, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_negative_zero_ties_with_zero(dtype):
    """-0.0 == 0.0: the tie goes to the smaller index, whatever the sign bit says."""
    labels = torch.tensor([0, 0, 1, 1])
    dist = torch.tensor(
        [[0.0, 0.5, 0.0, -0.0], [0.5, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.2], [-0.0, 1.0, 0.2, 0.0]],
        dtype=dtype,
    )
    assert mine(dist, labels, "semi-hard", offset=-float("inf")).as_list()[0] == (0, 1, 2)
    assert mine(dist, labels, "hard").as_list()[0] == (0, 1, 2)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mining_matches_loop_oracle(layout, dtype, bucketing):
    for seed in range(12):
        gen = torch.Generator().manual_seed(seed)
        labels = random_labels(layout, int(torch.randint(2, 30, (1,), generator=gen)), gen)
        x = torch.randn(len(labels), 4, generator=gen, dtype=dtype)
        dist = pairwise_distances(x)
        if seed % 3 == 0:  # ties on purpose: distances rounded to a coarse grid
            dist = (dist * 4).round() / 4
        if seed % 4 == 1:  # any dissimilarity: negative values too
            dist = dist - dist.mean()
        offset = [0.0, 0.3, -0.4, -float("inf"), float("inf"), 1.5][seed % 6]
        for strategy in ("all", "hard", "semi-hard"):
            semi = strategy == "semi-hard"
            for fallback in ("skip", "hardest", "easiest") if semi else ("skip",):
                t = offset if semi else 0.0
                got = mine(dist, labels, strategy, offset=t, fallback=fallback)
                want, dropped = loop_mine(dist.numpy(), labels.tolist(), strategy, t, fallback)
                if strategy == "all":
                    assert sorted(got.as_list()) == want
                else:
                    assert got.as_list() == want, (seed, strategy, fallback)
                    assert got.dropped == dropped


def test_mining_does_not_modify_the_matrix():
    dist = D.clone()
    mine(dist, LABELS, "semi-hard")
    assert torch.equal(dist, D)


def test_label_groups():
    groups = label_groups(torch.tensor([5, 3, 5, 5, 9]))
    assert groups.positives.tolist() == [2, 0, 2, 2, 0]
    assert groups.negatives.tolist() == [2, 4, 2, 2, 4]
    assert groups.kmax == 3
    pos, valid = groups.positive_slots(torch.arange(5))
    assert pos[valid].tolist() == [2, 3, 0, 3, 0, 2]


INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize("strategy", ["all", "hard", "semi-hard"])
@pytest.mark.parametrize("bad", [INF, NAN, -INF])
def test_non_finite_distances_are_a_clear_error(strategy, bad):
    """Regression: "hard" returned negative -1 when a row's negatives were all +inf or NaN;
    semi-hard and batch-all went on silently."""
    dist = D.clone()
    dist[2, [0, 1]] = bad
    with pytest.raises(ValueError, match="distances are not finite: row 2, column 0"):
        mine(dist, LABELS, strategy)


@pytest.mark.parametrize("scale", [1e-38, 1e-20, 1e20])
def test_only_the_order_of_distances_matters(scale, bucketing):
    """Regression: mine(D * 1e-38) failed on the grid path (its scale cells / spread
    overflowed); any positive factor keeps the order, hence the triplets."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (60,), generator=gen)
    dist = pairwise_distances(torch.randn(60, 4, generator=gen, dtype=torch.float64))
    scaled = dist.float() * scale  # the oracle compares the scaled values themselves
    for strategy in ("hard", "semi-hard"):
        want, _ = loop_mine(scaled.numpy(), labels.tolist(), strategy)
        assert mine(scaled, labels, strategy).as_list() == want, strategy


def test_collapsed_distances_match_oracle(bucketing):
    """Collapsed embeddings: every distance within 1e-6 of the others, the grid's crowded case."""
    gen = torch.Generator().manual_seed(4)
    x = 1.0 + 1e-3 * torch.randn(80, 16, generator=gen)
    labels = torch.randint(0, 4, (80,), generator=gen)
    dist = pairwise_distances(x)
    for strategy in ("hard", "semi-hard"):
        for offset in (0.0, 0.1, -1e-7) if strategy == "semi-hard" else (0.0,):
            got = mine(dist, labels, strategy, offset=offset).as_list()
            assert got == loop_mine(dist.numpy(), labels.tolist(), strategy, offset)[0]


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((torch.zeros(4),), {"labels": [0, 0, 1, 1]}, "distances must be a 2-D tensor"),
        (([[0.0]],), {"labels": [0]}, "distances must be a 2-D tensor"),
        ((torch.zeros(4, 4, dtype=torch.long),), {"labels": [0, 0, 1, 1]}, "floating point"),
        ((torch.zeros(4, 3),), {"labels": [0, 0, 1, 1]}, "must be square"),
        ((torch.zeros(4, 4),), {"labels": [0, 0, 1]}, r"labels must have shape \(4,\)"),
        ((torch.zeros(4, 4),), {"labels": [0.5, 0, 1, 1]}, "labels must be integers"),
        ((torch.zeros(4, 3),), {"relevant": torch.zeros(4, 4, dtype=torch.bool)}, "relevant"),
        (
            (torch.zeros(4, 4),),
            {},
            r"give labels \(with candidate_labels for two sets\) or relevant, not both",
        ),
        ((torch.zeros(4, 4),), {"labels": [0, 0, 1, 1], "offset": True}, "offset must be"),
        ((torch.zeros(4, 4),), {"labels": [0, 0, 1, 1], "offset": "0.1"}, "offset must be"),
    ],
)
def test_mine_bad_input_is_a_clear_error(args, kwargs, message):
    """Regression: mine() had no shape checks (raw index errors deep inside)."""
    with pytest.raises(ValueError, match=message):
        mine(*args, **kwargs)


def test_mine_takes_labels_of_any_integer_kind():
    want = mine(D, LABELS).as_list()
    assert mine(D, [0, 0, 1, 1]).as_list() == want
    assert mine(D, np.array([3, 3, 200, 200], dtype=np.uint8)).as_list() == want
    assert mine(D, torch.tensor([-1, -1, 5, 5], dtype=torch.int8)).as_list() == want
    assert mine(D, LABELS, offset=np.float32(0.0)).as_list() == want


@pytest.mark.parametrize("strategy", ["all", "hard"])
@pytest.mark.parametrize("options", [{"offset": 0.1}, {"fallback": "hardest"}])
def test_offset_and_fallback_outside_semi_hard_warn(strategy, options):
    """Regression: offset and fallback were silently ignored by "all" and "hard"."""
    with pytest.warns(UserWarning, match="apply to mining='semi-hard' only"):
        got = mine(D, LABELS, strategy, **options)
    assert got.as_list() == mine(D, LABELS, strategy).as_list()


SCAN_FIELDS = ("pos", "pos_valid", "d_ap", "has_neg", "valid_triplets", "hard_triplets")
SCAN_FIELDS += ("not_easy_triplets", "n_ap", "n_an", "hinge_count", "neg_weight")
SCAN_FIELDS += ("chosen", "closest", "farthest")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rectangular", [False, True])
def test_small_path_scans_as_the_chunked_pass(layout, rectangular, monkeypatch):
    """The small matrices' direct comparison gives the chunked pass's counts, choices and
    weights exactly, and its sums to rounding, on square and anchors x candidates matrices
    with ties, negative values and every strategy, offset and fallback."""
    for seed in range(10):
        gen = torch.Generator().manual_seed(seed)
        labels = random_labels(layout, int(torch.randint(2, 40, (1,), generator=gen)), gen)
        x = torch.randn(len(labels), 4, generator=gen, dtype=torch.float64)
        if rectangular:
            cols = labels[torch.randperm(len(labels), generator=gen)][: max(1, len(labels) // 2)]
            y = torch.randn(len(cols), 4, generator=gen, dtype=torch.float64)
            dist, structure = pairwise_distances(x, y), Relevance.from_labels(labels, cols)
        else:
            dist, structure = pairwise_distances(x), label_groups(labels)
        if seed % 3 == 0:  # ties on purpose
            dist = (dist * 4).round() / 4
        if seed % 4 == 1:
            dist = dist - dist.mean()
        offset = [0.0, 0.3, -0.4, -float("inf"), float("inf")][seed % 5]
        for strategy, fallback in [("all", "skip"), ("hard", "skip")] + [
            ("semi-hard", f) for f in FALLBACKS
        ]:
            options = dict(margin=0.2, strategy=strategy, offset=offset, fallback=fallback)
            found = {}
            for name, small in (("small", 10**12), ("chunked", 0)):
                monkeypatch.setattr(mining, "SMALL_DISTANCES", small)
                monkeypatch.setattr(mining, "SMALL_ELEMENTS", small)
                found[name] = scan(dist, structure, **options)
            for field in SCAN_FIELDS:
                got, want = getattr(found["small"], field), getattr(found["chunked"], field)
                assert (got is None) == (want is None), field
                if got is not None:
                    assert torch.equal(got, want), (seed, strategy, fallback, field)
            for field in ("sum_d_ap", "sum_d_an", "hinge_sum"):
                got, want = getattr(found["small"], field), getattr(found["chunked"], field)
                if got is not None:
                    torch.testing.assert_close(got, want, msg=f"{seed} {strategy} {field}")
