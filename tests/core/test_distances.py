import pytest
import torch

from reference import loop_distances
from tripletkit.distances import (
    DISTANCES,
    distance_gradient_surrogate,
    paired_distances,
    pairwise_distances,
)


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("seed", range(5))
def test_pairwise_matches_loop(distance, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(9, 4, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(
        pairwise_distances(x, distance=distance), loop_distances(x, distance)
    )


@pytest.mark.parametrize("distance", DISTANCES)
def test_pairwise_with_and_without_autograd_agree(distance):
    x = torch.randn(7, 3, dtype=torch.float64)
    tracked = pairwise_distances(x.clone().requires_grad_(), distance=distance)
    with torch.no_grad():
        plain = pairwise_distances(x, distance=distance)
    torch.testing.assert_close(tracked.detach(), plain)
    assert torch.all(torch.diagonal(plain) == 0)


@pytest.mark.parametrize("distance", DISTANCES)
def test_pairwise_between_two_sets(distance):
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    full = loop_distances(torch.cat([x, y]), distance)[:5, 5:]
    torch.testing.assert_close(pairwise_distances(x, y, distance), full)


@pytest.mark.parametrize("distance", DISTANCES)
def test_paired_matches_pairwise(distance):
    x = torch.randn(6, 3, dtype=torch.float64)
    i, j = torch.tensor([0, 1, 2, 5]), torch.tensor([3, 1, 4, 0])
    torch.testing.assert_close(
        paired_distances(x[i], x[j], distance), pairwise_distances(x, distance=distance)[i, j]
    )


@pytest.mark.parametrize("distance", DISTANCES)
def test_gradients_finite_for_coincident_points(distance):
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], requires_grad=True)
    pairwise_distances(x, distance=distance).sum().backward()
    assert torch.isfinite(x.grad).all()
    y = x.detach().clone().requires_grad_()
    paired_distances(y[:1], y[1:2], distance).sum().backward()
    assert torch.isfinite(y.grad).all()


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("dense_part", [False, True])
@pytest.mark.parametrize("n_pairs", [3, 60])
def test_surrogate_gradient_is_weighted_distance_gradient(
    distance, dense_part, n_pairs, gradient_path
):
    gen = torch.Generator().manual_seed(n_pairs)
    n = 8
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    rows = torch.randint(0, n, (n_pairs,), generator=gen)
    cols = (rows + torch.randint(1, n, (n_pairs,), generator=gen)) % n
    weights = torch.randn(n_pairs, generator=gen, dtype=torch.float64)
    dense = torch.randn(n, n, generator=gen, dtype=torch.float64) if dense_part else None

    ref = x.clone().requires_grad_()
    dist = pairwise_distances(ref, distance=distance)
    target = (weights * dist[rows, cols]).sum()
    if dense is not None:
        target = target + (dense * dist).sum()
    target.backward()

    ours = x.clone().requires_grad_()
    values = dist.detach()
    surrogate = distance_gradient_surrogate(
        ours,
        distance,
        (rows, cols, weights, values[rows, cols]),
        None if dense is None else (dense.clone(), values),
    )
    surrogate.backward()
    torch.testing.assert_close(ours.grad, ref.grad)


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("dense_part", [False, True])
@pytest.mark.parametrize("with_scratch", [False, True])
def test_surrogate_gradient_between_two_sets(distance, dense_part, with_scratch, gradient_path):
    """Queries x documents: both sides get the gradient of sum_ij W_ij d(q_i, d_j); a scratch
    buffer (the spent distance matrix) changes nothing."""
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    d = torch.randn(9, 3, generator=gen, dtype=torch.float64)
    rows = torch.randint(0, 5, (40,), generator=gen)
    cols = torch.randint(0, 9, (40,), generator=gen)
    weights = torch.randn(40, generator=gen, dtype=torch.float64)
    dense = torch.randn(5, 9, generator=gen, dtype=torch.float64) if dense_part else None

    rq, rd = q.clone().requires_grad_(), d.clone().requires_grad_()
    dist = pairwise_distances(rq, rd, distance=distance)
    target = (weights * dist[rows, cols]).sum()
    if dense is not None:
        target = target + (dense * dist).sum()
    target.backward()

    oq, od = q.clone().requires_grad_(), d.clone().requires_grad_()
    values = dist.detach().clone()
    surrogate = distance_gradient_surrogate(
        oq,
        distance,
        (rows, cols, weights, values[rows, cols]),
        None if dense is None else (dense.clone(), values.clone()),
        od,
        scratch=values if with_scratch else None,
    )
    surrogate.backward()
    torch.testing.assert_close(oq.grad, rq.grad)
    torch.testing.assert_close(od.grad, rd.grad)


@pytest.mark.parametrize("n", [1, 5, 255, 256, 257, 600])
@pytest.mark.parametrize("block", [7, 256])
def test_add_transpose_in_place(n, block):
    from tripletkit.distances import _add_transpose_

    m = torch.randn(n, n, generator=torch.Generator().manual_seed(n))
    want = m + m.T
    assert _add_transpose_(m, block) is m
    assert torch.equal(m, want)


def test_unknown_distance_is_an_error():
    with pytest.raises(ValueError, match="distance"):
        pairwise_distances(torch.zeros(2, 2), distance="manhattan")
