import pytest
import torch

from conftest import LAYOUTS, random_labels
from reference import loop_mine
from tripletkit import mine, pairwise_distances
from tripletkit.mining import label_groups

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
            for fallback in ("skip", "hardest", "easiest"):
                got = mine(dist, labels, strategy, offset=offset, fallback=fallback)
                want, dropped = loop_mine(dist.numpy(), labels.tolist(), strategy, offset, fallback)
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
