"""bucketize against a loop oracle: how many thresholds of each row lie strictly below."""

import pytest
import torch

from tripletkit._bucketing import BucketScratch, Reusable, bucketize

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
    scratch = BucketScratch()
    for seed in range(40):
        values, thresholds = random_case(seed, dtype)
        got = bucketize(values, thresholds, scratch=scratch).buckets
        assert torch.equal(got, loop_bucketize(values, thresholds)), seed
        assert torch.equal(got, torch.searchsorted(thresholds, values.contiguous()))


def test_bucketize_hand_cases(bucketing):
    thresholds = torch.tensor([[1.0, 1.0, 1.0, 2.0, INF], [-INF, 0.0, 0.0, 0.0, 0.0]])
    values = torch.tensor([[0.5, 1.0, 1.5, 2.0, 3.0, INF], [-INF, -1.0, 0.0, 1e-30, 5.0, INF]])
    want = torch.tensor([[0, 0, 3, 3, 4, 4], [0, 1, 1, 5, 5, 5]])
    assert torch.equal(bucketize(values, thresholds).buckets, want)
    # every threshold infinite: nothing lies below a finite value
    every = torch.full((1, 3), INF)
    got = bucketize(torch.tensor([[0.0, INF]]), every).buckets
    assert torch.equal(got, torch.tensor([[0, 0]]))


def test_comparisons_count_past_255_thresholds():
    """Regression: the counter was uint8 and wrapped to 0 at 256 thresholds."""
    from tripletkit._bucketing import _by_comparisons

    thresholds = torch.arange(300.0)[None]
    values = torch.tensor([[-1.0, 0.5, 255.5, 256.5, 299.5, INF]])
    out = torch.empty(values.shape, dtype=torch.long)
    got = _by_comparisons(values, thresholds, out, BucketScratch())
    assert got.tolist() == [[0, 1, 256, 257, 300, 300]]


@pytest.mark.parametrize("scale", [1e-38, 1e-30, 1e30, 3e38])
def test_grid_keeps_order_at_any_scale(scale, bucketing):
    """Regression: the grid's scale cells / spread overflowed for spreads near 1e-38 (and the
    offset 1 - lo * scale for large values), although only the order matters."""
    gen = torch.Generator().manual_seed(1)
    thresholds = (torch.rand(3, 40, generator=gen) * scale).sort(dim=1).values
    values = torch.rand(3, 50, generator=gen) * scale
    values[:, :5] = thresholds[:, :5]  # exact ties
    got = bucketize(values, thresholds).buckets
    assert torch.equal(got, torch.searchsorted(thresholds, values.contiguous()))


def test_grid_collapsed_rows_match_searchsorted():
    """Collapse: values and the first threshold cluster share a cell of the plain grid, far
    below a second cluster; the grid laid again over the values' range stays exact."""
    gen = torch.Generator().manual_seed(2)
    low = 2e-6 + torch.rand(4, 30, generator=gen, dtype=torch.float64) * 1e-7
    thresholds = torch.cat([low, low + 0.2], 1).sort(dim=1).values
    values = 2e-6 + torch.rand(4, 200, generator=gen, dtype=torch.float64) * 1e-7
    values[:, :30] = low  # ties with every threshold of the first cluster
    values[:, -3:] = torch.tensor([0.2, INF, 1.0], dtype=torch.float64)
    got = bucketize(values, thresholds).buckets
    assert torch.equal(got, torch.searchsorted(thresholds, values.contiguous()))


def test_reusable_serves_every_dtype_from_one_block():
    """One block per purpose: another dtype or a smaller shape reuses the memory."""
    memory = Reusable()
    first = memory.take((10,), torch.float64, torch.device("cpu"))
    smaller = memory.take((3, 2), torch.int32, torch.device("cpu"))
    assert smaller.data_ptr() == first.data_ptr() and smaller.dtype == torch.int32
    assert memory.nbytes == 80
    assert memory.release() == 80 and memory.nbytes == 0


def test_two_results_do_not_alias():
    """Regression: bucketize returned a view of a shared buffer, so a second call overwrote
    the first answer (r1 = bucketize(...); bucketize(...) changed r1)."""
    thresholds = torch.tensor([[0.0, 1.0, 2.0]])
    first = bucketize(torch.tensor([[0.5, 1.5, 2.5]]), thresholds).buckets
    second = bucketize(torch.tensor([[-1.0, -1.0, -1.0]]), thresholds).buckets
    assert first.tolist() == [[1, 2, 3]] and second.tolist() == [[0, 0, 0]]
    assert first.data_ptr() != second.data_ptr()
    # the same holds with a shared scratch: only ``out`` holds an answer
    scratch = BucketScratch()
    a = bucketize(torch.tensor([[0.5, 1.5, 2.5]]), thresholds, scratch=scratch).buckets
    bucketize(torch.tensor([[-1.0, -1.0, -1.0]]), thresholds, scratch=scratch)
    assert a.tolist() == [[1, 2, 3]]


def test_buffers_are_bounded_and_can_be_released():
    """Regression: after one B = 1024 call with 4 identities about 100 MB stayed, forever."""
    import tripletkit
    from tripletkit.mining import KEEP_BYTES, shared_buffers

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 8, generator=gen)
    tripletkit.triplet_loss(x, torch.arange(4).repeat_interleave(256), mining="all")
    held = shared_buffers().nbytes
    assert 0 < held <= KEEP_BYTES
    assert tripletkit.release_workspace() == held
    assert shared_buffers().nbytes == 0
    assert tripletkit.release_workspace() == 0


def test_grid_stays_exact_whatever_the_previous_chunk_was():
    """After a crowded chunk the next one starts on the values' grid: still exact, whether or
    not that chunk is crowded too."""
    gen = torch.Generator().manual_seed(3)
    low = 2e-6 + torch.rand(3, 30, generator=gen) * 1e-7
    crowded = torch.cat([low, low + 0.2], 1).sort(dim=1).values
    crowded_values = 2e-6 + torch.rand(3, 100, generator=gen) * 1e-7
    plain = torch.randn(3, 60, generator=gen).sort(dim=1).values
    plain_values = torch.randn(3, 100, generator=gen) * 2
    plain_values[:, :3] = INF
    crowded_before, answers = False, []
    for values, thresholds in [(crowded_values, crowded), (plain_values, plain)] * 2:
        got, crowded_before = bucketize(values, thresholds, crowded=crowded_before)
        assert torch.equal(got, torch.searchsorted(thresholds, values.contiguous()))
        answers.append(crowded_before)
    # the crowded state is a value, passed in and returned: the crowded chunk says so, and
    # the plain chunk after it keeps the values' grid (the state carries on)
    assert answers[0] is True
