"""Pairwise distances between embeddings.

Three distances, all with d(x, x) = 0 and finite gradients everywhere:

- ``"squared"``: ||x - y||^2, the FaceNet default.
- ``"euclidean"``: ||x - y||, with a safe square root whose gradient is 0 (not inf or NaN)
  where two embeddings coincide.
- ``"cosine"``: 1 - cos(x, y).

Besides the full matrix (:func:`pairwise_distances`) and row-wise distances
(:func:`paired_distances`), :func:`distance_gradient_surrogate` turns weights on pairs into a
scalar whose gradient is ``sum_ij W_ij * grad d(x_i, x_j)``: the loss module uses it to
back-propagate a loss that is linear in the distances with one matrix product, without keeping a
B x B autograd graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

DISTANCES = ("squared", "euclidean", "cosine")
# Sparse pair weights go through row gathers while there are at most B^2 / this many of them;
# beyond, one dense (B, B) x (B, d) product is cheaper (measured on 2 cores).
SPARSE_PAIRS_DIVISOR = 80


def check_distance(distance: str) -> None:
    """Raise ValueError when ``distance`` is not one of :data:`DISTANCES`."""
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")


def safe_sqrt(x: Tensor) -> Tensor:
    """Square root of ``x.clamp(min=0)`` whose gradient at 0 is 0 instead of inf."""
    positive = x > 0
    return torch.where(positive, x, torch.ones_like(x)).sqrt() * positive


def pairwise_distances(x: Tensor, y: Tensor | None = None, distance: str = "squared") -> Tensor:
    """All distances between the rows of ``x`` and the rows of ``y``.

    Args:
        x: (B, d) embeddings.
        y: (M, d) embeddings; ``None`` means ``x`` itself, and then the diagonal is exactly 0.
        distance: "squared", "euclidean" or "cosine".

    Returns:
        (B, M) distances, differentiable, never negative.
    """
    check_distance(distance)
    same = y is None
    other = x if y is None else y
    track = torch.is_grad_enabled() and (x.requires_grad or other.requires_grad)
    if distance == "cosine":
        xn = torch.nn.functional.normalize(x, dim=1)
        yn = xn if same else torch.nn.functional.normalize(other, dim=1)
        dist = torch.addmm(torch.ones((), dtype=x.dtype, device=x.device), xn, yn.T, alpha=-1.0)
    else:
        dist = torch.addmm((x * x).sum(1, keepdim=True), x, other.T, alpha=-2.0)
        dist = dist + (other * other).sum(1) if track else dist.add_((other * other).sum(1))
    # Without autograd every step is in place: at B = 8192 each fresh (B, B) temporary costs
    # about as much as a quarter of the matrix product.
    dist = dist.clamp(min=0.0) if track else dist.clamp_(min=0.0)
    if distance == "euclidean":
        dist = safe_sqrt(dist) if track else dist.sqrt_()
    if same:
        dist.fill_diagonal_(0.0)
    return dist


def paired_distances(x: Tensor, y: Tensor, distance: str = "squared") -> Tensor:
    """Row-wise distances d(x_i, y_i).

    Args:
        x: (N, d) embeddings.
        y: (N, d) embeddings.
        distance: "squared", "euclidean" or "cosine".

    Returns:
        (N,) distances, differentiable.
    """
    check_distance(distance)
    if distance == "cosine":
        xn = torch.nn.functional.normalize(x, dim=1)
        yn = torch.nn.functional.normalize(y, dim=1)
        return (1.0 - (xn * yn).sum(1)).clamp(min=0.0)
    sq = ((x - y) ** 2).sum(1)
    return safe_sqrt(sq) if distance == "euclidean" else sq


def distance_gradient_surrogate(
    x: Tensor,
    distance: str,
    pairs: tuple[Tensor, Tensor, Tensor, Tensor],
    dense: tuple[Tensor, Tensor] | None = None,
    y: Tensor | None = None,
    scratch: Tensor | None = None,
) -> Tensor:
    """A scalar whose gradient is ``sum_ij W_ij * grad d(x_i, y_j)`` (y = x when None).

    Its value is meaningless: callers add ``s - s.detach()`` to a loss whose value they
    computed otherwise. W is given as sparse triples plus an optional dense matrix; neither may
    carry gradient. Euclidean weights become weights on squared distances, w / (2 d), with 0 where
    d == 0 (the safe square root's gradient).

    Args:
        x: (B, d) embeddings, requiring grad.
        distance: "squared", "euclidean" or "cosine".
        pairs: (rows, cols, weights, values), each (N,): W[rows, cols] += weights, where values
            are the distances d(x_rows, y_cols) (used by "euclidean" only).
        dense: (weights, values), each (B, M), or None; the weights are modified in place.
        y: (M, d) second embeddings (documents for queries ``x``), or None for x itself.
        scratch: a (B, M) contiguous tensor of x's dtype that may be overwritten (the distance
            matrix once nothing needs it), or None; it saves a (B, M) allocation.

    Returns:
        A 0-d tensor.
    """
    check_distance(distance)
    rows, cols, weights, values = pairs
    if distance == "euclidean":
        weights = _chain_sqrt(weights, values)
        dense = None if dense is None else (_chain_sqrt(*dense), dense[1])
        distance = "squared"
    n_rows, n_cols = len(x), len(x if y is None else y)
    if dense is None and weights.numel() * SPARSE_PAIRS_DIVISOR <= n_rows * n_cols:
        z, cols = (x, cols) if y is None else (torch.cat([x, y]), cols + n_rows)
        if distance == "cosine":  # on unit vectors 1 - cos = ||a - b||^2 / 2, same gradient
            unit = torch.nn.functional.normalize(z, dim=1)
            return 0.5 * _WeightedPairs.apply(unit, rows, cols, weights.to(x.dtype))
        return _WeightedPairs.apply(z, rows, cols, weights.to(x.dtype))
    weights = weights.to(x.dtype)
    if scratch is not None and (
        scratch.dtype != x.dtype or scratch.shape != (n_rows, n_cols) or not scratch.is_contiguous()
    ):
        scratch = None
    symmetric = dense is None and y is None
    if symmetric:  # hold W + W^T, all that the gradient needs when y = x
        rows, cols, weights = torch.cat([rows, cols]), torch.cat([cols, rows]), weights.repeat(2)
    if dense is None:
        matrix = torch.zeros(n_rows, n_cols, dtype=x.dtype, device=x.device, out=scratch)
    else:
        matrix = dense[0].to(x.dtype)
    # a flat scatter: index_put_ with accumulate=True is ~20x slower on CPU
    matrix.view(-1).scatter_add_(0, rows * n_cols + cols, weights)
    if y is None and not symmetric:
        _add_transpose_(matrix)
    return _dense_surrogate(x, matrix, distance, y)


def _add_transpose_(m: Tensor, block: int = 256) -> Tensor:
    """m += m.T in place for a square m, block by block: no second (B, B) buffer, and each
    block's transpose stays in cache (at B = 8192: 68 ms, against 260 ms for m + m.T)."""
    n = len(m)
    for i in range(0, n, block):
        rows = slice(i, i + block)
        diagonal = m[rows, rows]
        diagonal.add_(diagonal.T.clone())
        for j in range(i + block, n, block):
            cols = slice(j, j + block)
            upper, lower = m[rows, cols], m[cols, rows]
            upper.add_(lower.T)
            lower.copy_(upper.T)
    return m


class _WeightedPairs(torch.autograd.Function):
    """sum_t w_t ||x[rows_t] - x[cols_t]||^2, with a backward of two index_add_ calls (autograd's
    own backward of row indexing is several times slower)."""

    @staticmethod
    def forward(ctx, x: Tensor, rows: Tensor, cols: Tensor, weights: Tensor) -> Tensor:
        diff = x[rows] - x[cols]
        ctx.save_for_backward(diff, rows, cols, weights)
        ctx.n = len(x)
        return (weights * (diff * diff).sum(1)).sum()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        diff, rows, cols, weights = ctx.saved_tensors
        g = diff * (2.0 * grad * weights)[:, None]
        out = torch.zeros(ctx.n, diff.shape[1], dtype=diff.dtype, device=diff.device)
        return out.index_add_(0, rows, g).index_add_(0, cols, -g), None, None, None


def _chain_sqrt(weights: Tensor, values: Tensor) -> Tensor:
    """Weights on ||.|| turned into weights on ||.||^2: w / (2 d), and 0 where d == 0."""
    positive = values > 0
    return torch.where(positive, weights / (2.0 * torch.where(positive, values, 1.0)), 0.0)


def _dense_surrogate(x: Tensor, matrix: Tensor, distance: str, y: Tensor | None = None) -> Tensor:
    """sum_ij M_ij d(x_i, y_j) up to a constant (its value is 0), for squared L2 or cosine
    distance, with one (B, M) x (M, d) product per side in the backward. For y = x, ``matrix``
    must be symmetric: W + W^T for weights W."""
    if distance == "cosine":  # -sum_ij M_ij <xn_i, yn_j>: no diagonal terms
        xn = torch.nn.functional.normalize(x, dim=1)
        yn = None if y is None else torch.nn.functional.normalize(y, dim=1)
        return _DenseWeights.apply(matrix, False, xn, yn)
    return _DenseWeights.apply(matrix, True, x, y)


class _DenseWeights(torch.autograd.Function):
    """Zero, with the gradient of sum_ij M_ij ||x_i - y_j||^2 (``squared``) or of
    -sum_ij M_ij <x_i, y_j> (otherwise).

    With y = x and M = W + W^T this is the gradient of sum_ij W_ij d(x_i, x_j):
    2 (r x - M x) for squared L2 with r the row sums of M, one product for both sides.
    """

    @staticmethod
    def forward(ctx, matrix: Tensor, squared: bool, x: Tensor, y: Tensor | None) -> Tensor:
        ctx.squared = squared
        ctx.save_for_backward(matrix, x, y)
        return x.new_zeros(())

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, None, Tensor | None, Tensor | None]:
        matrix, x, y = ctx.saved_tensors
        if y is None:
            if ctx.squared:
                return None, None, (matrix.sum(1)[:, None] * x - matrix @ x) * (2.0 * grad), None
            return None, None, (matrix @ x) * -grad, None
        gx, gy = matrix @ y, matrix.T @ x
        if not ctx.squared:
            return None, None, gx * -grad, gy * -grad
        scale = 2.0 * grad
        gx = (matrix.sum(1)[:, None] * x - gx) * scale
        gy = (matrix.sum(0)[:, None] * y - gy) * scale
        return None, None, gx, gy
