import collections

import numpy as np
import pytest

from tripletkit import PKSampler


def make_labels(sizes):
    return np.repeat(np.arange(len(sizes)), sizes)


def check_batches(batches, labels, p, k, singletons=0):
    for batch in batches:
        assert len(batch) == p * k + singletons
        ids = labels[batch[: p * k]]
        counts = collections.Counter(ids.tolist())
        assert len(counts) == p and set(counts.values()) == {k}
        # each group of k is one identity
        assert all(len(set(ids[i : i + k])) == 1 for i in range(0, p * k, k))


def test_balanced_epoch_uses_every_example_once():
    labels = make_labels([8] * 10)
    sampler = PKSampler(labels, p=5, k=4, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4
    check_batches(batches, labels, 5, 4)
    assert sorted(i for b in batches for i in b) == list(range(80))


def test_unbalanced_epoch_uses_every_example_at_least_once():
    labels = make_labels([5, 9, 4, 12, 7, 6, 4, 10])
    sampler = PKSampler(labels, p=3, k=4, seed=0)
    batches = list(sampler)
    check_batches(batches, labels, 3, 4)
    used = {i for b in batches for i in b}
    # leftovers are only chunks that cannot make a batch of 3 different identities
    assert len(batches) == len(sampler)
    assert len(used) >= len(labels) - 4 * 2


def test_deterministic_per_seed_and_epoch():
    labels = make_labels([6] * 12)
    a, b = PKSampler(labels, 4, 3, seed=7), PKSampler(labels, 4, 3, seed=7)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    a.set_epoch(0)
    assert list(a) == first
    assert list(PKSampler(labels, 4, 3, seed=8)) != first


def test_small_identities_replace_or_drop():
    labels = make_labels([2, 8, 8, 8])
    with pytest.warns(UserWarning, match="1 identities have fewer than k=4"):
        replace = PKSampler(labels, 2, 4, small="replace")
    assert any(set(labels[b]) & {0} for b in replace)
    with pytest.warns(UserWarning, match="left out"):
        drop = PKSampler(labels, 2, 4, small="drop")
    assert not any(0 in labels[b] for b in drop)


def test_singletons_only_serve_as_negatives():
    labels = np.concatenate([make_labels([4] * 6), np.arange(100, 110)])
    with pytest.warns(UserWarning, match="single example"):
        PKSampler(labels, 3, 4)
    sampler = PKSampler(labels, 3, 4, singletons=2)
    batches = list(sampler)
    check_batches(batches, labels, 3, 4, singletons=2)
    for batch in batches:
        assert all(labels[i] >= 100 for i in batch[12:])
        assert not any(labels[i] >= 100 for i in batch[:12])


def test_rank_shards_are_disjoint_cover_the_data_and_have_equal_length():
    labels = make_labels([4, 6, 8, 4, 5, 9, 4, 4, 7, 4, 6, 4])
    samplers = [PKSampler(labels, 2, 4, seed=3, rank=r, world_size=3) for r in range(3)]
    for epoch in range(3):
        identities = []
        for s in samplers:
            s.set_epoch(epoch)
            batches = list(s)
            check_batches(batches, labels, 2, 4)
            identities.append({int(labels[i]) for b in batches for i in b})
        assert len({len(s) for s in samplers}) == 1
        assert not (
            identities[0] & identities[1]
            or identities[0] & identities[2]
            or identities[1] & identities[2]
        )
    # over the shards' own plans (before truncation to equal length) every identity is dealt
    order = samplers[0]._identity_order(samplers[0]._rng())
    dealt = sorted(np.concatenate([order[r::3] for r in range(3)]).tolist())
    assert dealt == list(range(12))


def test_state_dict_round_trip():
    labels = make_labels([4] * 8)
    sampler = PKSampler(labels, 2, 4, seed=5)
    sampler.set_epoch(3)
    other = PKSampler(labels, 2, 4)
    other.load_state_dict(sampler.state_dict())
    assert list(other) == list(sampler)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"p": 1}, "p must be an integer >= 2"),
        ({"k": 1}, "k must be an integer >= 2"),
        ({"small": "pad"}, "small must be one of"),
        ({"rank": 2, "world_size": 2}, "rank must be in"),
        ({"p": 9}, "needs at least 9 identities"),
        ({"singletons": 1}, "single-example identities"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = {"p": 2, "k": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        PKSampler(make_labels([3] * 4), **args)


def test_float_labels_are_an_error():
    with pytest.raises(ValueError, match="integers"):
        PKSampler([0.0, 1.0], 2, 2)
