"""The loss and the miner between two embedding sets (anchors x candidates, each with labels)
against the naive loop oracles, and hand-written cases."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reference import loop_loss, loop_mine
from tripletkit import TripletLoss, cross_triplet_loss, mine, relevance_triplet_loss

OPTIONS = [
    {"mining": "all", "reduction": "mean"},
    {"mining": "all", "reduction": "mean_active", "soft": True},
    {"mining": "hard", "reduction": "sum"},
    {"mining": "semi-hard", "reduction": "mean"},
    {"mining": "semi-hard", "reduction": "mean_active", "soft": True},
]


def loop_relevance(labels, candidate_labels) -> np.ndarray:
    """The positives of each anchor, one pair at a time: the candidates with its label."""
    out = np.zeros((len(labels), len(candidate_labels)), dtype=bool)
    for a, y in enumerate(labels):
        for c, z in enumerate(candidate_labels):
            out[a, c] = y == z
    return out


def random_sets(seed: int, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(seed)
    n_a = int(torch.randint(1, 12, (1,), generator=gen))
    n_c = int(torch.randint(1, 16, (1,), generator=gen))
    people = int(torch.randint(1, 5, (1,), generator=gen))
    labels = torch.randint(0, people, (n_a,), generator=gen)
    # candidates of the anchors' people and of people no anchor has (pure negatives)
    candidate_labels = torch.randint(0, people + 2, (n_c,), generator=gen)
    anchors = torch.randn(n_a, 5, generator=gen, dtype=dtype)
    candidates = torch.randn(n_c, 5, generator=gen, dtype=dtype)
    if seed % 3 == 0:  # candidates that are the anchors themselves, seen again: distance 0
        k = min(n_a, n_c)
        candidates[:k], candidate_labels[:k] = anchors[:k], labels[:k]
    return anchors, labels, candidates, candidate_labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cross_loss_matches_loop_oracle(dtype, bucketing, gradient_path):
    for seed in range(10):
        anchors, labels, candidates, candidate_labels = random_sets(seed, dtype)
        relevant = loop_relevance(labels.tolist(), candidate_labels.tolist())
        distance = ("squared", "euclidean", "cosine")[seed % 3]
        offset = [0.0, 0.25, -0.3, 1.0][seed % 4]
        frozen = seed % 2 == 0  # a teacher's side carries no gradient
        for options in OPTIONS:
            semi = options["mining"] == "semi-hard"
            chosen = dict(offset=offset if semi else 0.0, fallback="easiest" if semi else "skip")
            a1 = anchors.clone().requires_grad_()
            c1 = candidates.clone().requires_grad_(not frozen)
            loss, stats = cross_triplet_loss(
                a1, labels, c1, candidate_labels, distance=distance, **chosen, **options
            )
            a2 = anchors.clone().requires_grad_()
            c2 = candidates.clone().requires_grad_(not frozen)
            ref, ref_stats = loop_loss(
                a2, relevant, documents=c2, distance=distance, **chosen, **options
            )
            if ref.requires_grad:
                loss.backward()
                ref.backward()
            tol = 1e-5 if dtype == torch.float32 else 1e-10
            grad_tol = 1e-4 if dtype == torch.float32 else 1e-7
            torch.testing.assert_close(loss.detach(), ref.detach(), rtol=tol, atol=tol)
            if ref.requires_grad:
                torch.testing.assert_close(a1.grad, a2.grad, rtol=grad_tol, atol=grad_tol)
                if not frozen:
                    torch.testing.assert_close(c1.grad, c2.grad, rtol=grad_tol, atol=grad_tol)
                else:
                    assert c1.grad is None
            for key, value in ref_stats.items():
                got = stats.as_dict()[key]
                assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(
                    value, abs=1e-6
                ), key


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    strategy=st.sampled_from(["all", "hard", "semi-hard"]),
    offset=st.sampled_from([0.0, 0.1, -0.2, -math.inf]),
    fallback=st.sampled_from(["skip", "hardest", "easiest"]),
)
def test_mine_with_candidate_labels_matches_loop_oracle(seed, strategy, offset, fallback):
    anchors, labels, candidates, candidate_labels = random_sets(seed, torch.float32)
    dist = torch.cdist(anchors, candidates)
    if strategy != "semi-hard":
        offset, fallback = 0.0, "skip"
    got = mine(
        dist, labels, strategy, candidate_labels=candidate_labels, offset=offset, fallback=fallback
    )
    relevant = loop_relevance(labels.tolist(), candidate_labels.tolist())
    want, dropped = loop_mine(dist.numpy(), relevant, strategy, offset, fallback)
    assert got.as_list() == want and got.dropped == dropped


def test_the_anchors_own_example_seen_otherwise_is_a_positive():
    """A student's view of face 0 against the teacher's clean face 0: a positive (distance
    0.3), not left out as a diagonal would be; the closest other person's face is the
    negative."""
    anchors = torch.tensor([[0.0, 0.0], [5.0, 0.0]])
    candidates = torch.tensor([[0.3, 0.0], [1.0, 0.0], [5.2, 0.0]])
    triplets = mine(torch.cdist(anchors, candidates), [7, 8], "hard", candidate_labels=[7, 7, 8])
    assert triplets.as_list() == [(0, 1, 2), (1, 2, 1)]
    loss, stats = cross_triplet_loss(
        anchors, [7, 8], candidates, [7, 7, 8], mining="semi-hard", margin=100.0
    )
    assert stats.valid_triplets == 2 * 1 + 1 * 2  # anchor 0: 2 positives x 1 negative; 1: 1 x 2
    assert loss.item() > 0


def test_cross_loss_is_the_relevance_loss_of_the_label_relation():
    gen = torch.Generator().manual_seed(0)
    a, c = torch.randn(6, 4, generator=gen), torch.randn(9, 4, generator=gen)
    y, z = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 2, 0, 1, 2, 3, 3, 0])
    cross, _ = cross_triplet_loss(a, y, c, z, mining="all")
    rel, _ = relevance_triplet_loss(a, c, y[:, None] == z[None, :], mining="all")
    assert cross.item() == pytest.approx(rel.item())
    module = TripletLoss(mining="all", margin=0.3)
    assert (
        module.cross(a, y, c, z)[0] == cross_triplet_loss(a, y, c, z, mining="all", margin=0.3)[0]
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((torch.zeros(2, 3), [0, 1], torch.zeros(4, 2), [0, 1, 0, 1]), "same dimension"),
        ((torch.zeros(2, 3), [0, 1], torch.zeros(4, 3), [0, 1]), "candidate_labels must have"),
        ((torch.zeros(2, 3), [0, 1], torch.zeros(4, 3), [0.5, 1, 0, 1]), "candidate_labels must"),
        ((torch.zeros(2, 3), [0], torch.zeros(4, 3), [0, 1, 0, 1]), "labels must have shape"),
        (
            (torch.zeros(2, 3), [0, 1], torch.zeros(4, 3, dtype=torch.float64), [0, 1, 0, 1]),
            "same dtype",
        ),
    ],
)
def test_bad_input_names_the_argument(args, message):
    with pytest.raises(ValueError, match=message):
        cross_triplet_loss(*args)
