import types

import tripletkit


def test_all_is_exactly_the_public_namespace():
    public = {
        name
        for name, value in vars(tripletkit).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public | {"__version__"} == set(tripletkit.__all__)
    assert len(tripletkit.__all__) == len(set(tripletkit.__all__))


def test_core_names_are_public():
    expected = {
        "triplet_loss",
        "TripletLoss",
        "TripletStats",
        "PKSampler",
        "mine",
        "Triplets",
        "pairwise_distances",
        "paired_distances",
        "Schedule",
        "Curriculum",
        "default_curriculum",
    }
    assert expected <= set(tripletkit.__all__)
