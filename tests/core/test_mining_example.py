"""The worked example of tripletkit.mining's docstring runs as a doctest."""

import doctest

import tripletkit.mining


def test_module_docstring_example_runs():
    result = doctest.testmod(tripletkit.mining, raise_on_error=False)
    assert result.attempted >= 8  # the example is there
    assert result.failed == 0
