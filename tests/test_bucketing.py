"""bucketize against a loop oracle: how many thresholds of each row lie strictly below."""

import pytest
import torch

from tripletkit._bucketing import Workspace, bucketize

INF = float("inf")


def loop_bucketize(values: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(values.shape, dtype=torch.long)
    for r in range(values.shape[0]):
        for c in range(values.shape[1]):
            out[r, c] = sum(1 for t in thresholds[r].tolist() if t < values[r, c].item())
    return out


def random_case(seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rows = int(torch.randint(1, 6, (1,), generator=gen))
    cols = int(torch.randint(0, 40, (1,), generator=gen))
    width = int(torch.randint(1, 60, (1,), generator=gen))
    values = torch.randn(rows, cols, generator=gen, dtype=dtype)
    thresholds = torch.randn(rows, width, generator=gen, dtype=dtype)
    if seed % 2:  # crowded cells: thresholds and values on a coarse grid, many exact ties
        values, thresholds = (values * 2).round() / 2, (thresholds * 2).round() / 2
    if seed % 3 == 0:  # what the miner passes: +inf for masked entries and unused slots
        values[torch.rand(values.shape, generator=gen) < 0.2] = INF
        thresholds[torch.rand(thresholds.shape, generator=gen) < 0.2] = INF
    if seed % 5 == 0:  # offsets of -inf, and the largest finite value
        thresholds[torch.rand(thresholds.shape, generator=gen) < 0.1] = -INF
        thresholds[:, :1] = torch.finfo(dtype).max
    if seed % 7 == 0:  # one outlier stretches the grid
        thresholds[:, -1:] = 1e30
    return values, thresholds.sort(dim=1).values


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bucketize_matches_loop_oracle(dtype, bucketing):
    ws = Workspace()
    for seed in range(40):
        values, thresholds = random_case(seed, dtype)
        got = bucketize(values, thresholds, ws).clone()
        assert torch.equal(got, loop_bucketize(values, thresholds)), seed
        assert torch.equal(got, torch.searchsorted(thresholds, values.contiguous()))


def test_bucketize_hand_cases(bucketing):
    ws = Workspace()
    thresholds = torch.tensor([[1.0, 1.0, 1.0, 2.0, INF], [-INF, 0.0, 0.0, 0.0, 0.0]])
    values = torch.tensor([[0.5, 1.0, 1.5, 2.0, 3.0, INF], [-INF, -1.0, 0.0, 1e-30, 5.0, INF]])
    want = torch.tensor([[0, 0, 3, 3, 4, 4], [0, 1, 1, 5, 5, 5]])
    assert torch.equal(bucketize(values, thresholds, ws), want)
    # every threshold infinite: nothing lies below a finite value
    every = torch.full((1, 3), INF)
    assert torch.equal(bucketize(torch.tensor([[0.0, INF]]), every, ws), torch.tensor([[0, 0]]))
