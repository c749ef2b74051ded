"""Row-wise bucketing of values against sorted thresholds.

``bucketize(values, thresholds)`` answers, for every entry, how many thresholds of its row lie
strictly below it: what ``torch.searchsorted`` computes. On the CPU it does so without the
binary search, whose branches mispredict when distances and thresholds interleave (about 14 ns
per entry on 2 cores); on a GPU it is ``torch.searchsorted``, which takes no host sync.

The convention the miner builds on, stated once. With a row's thresholds sorted,
``bucket = #{j : thresholds[j] < value}``, so for the threshold at sorted position j:

    bucket > j   <=>  value > thresholds[j]
    bucket <= j  <=>  value <= thresholds[j]

Memory. :func:`bucketize` writes its answer into ``out`` (a new tensor when None) and works in
``scratch``, a :class:`BucketScratch` of the caller's (fresh memory when None): nothing is
kept here between calls, and two answers never share memory unless the caller says so. The
grid's one piece of state from chunk to chunk, whether its cells were crowded, goes in as
``crowded`` and comes back in the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import NamedTuple

import torch
from torch import Tensor

# Bucketing by repeated comparisons beats the grid up to about this many thresholds.
COMPARE_MAX_THRESHOLDS = 24
# Cells of the grid per threshold (at most 4 per value of a row).
_CELLS_PER_THRESHOLD = 16
# The grid is laid again when more than 1 / this share of the entries sit in crowded cells.
_CROWDED_SHARE = 16


class Reusable:
    """One block of memory, lent out again and again as a tensor of any shape and dtype on one
    device; it grows when a larger one is asked for.

    A fresh multi-megabyte temporary per chunk of rows costs page faults on first touch (the
    allocator returns freed memory to the system): at B = 8192 that was half the mining time.
    Each purpose gets its own :class:`Reusable`, so a tensor taken from one stays valid until
    the same one is taken again.
    """

    def __init__(self) -> None:
        self._store: Tensor | None = None

    def take(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised tensor of ``shape`` over this memory (overwriting what the last
        one taken held)."""
        nbytes = math.prod(shape) * dtype.itemsize
        store = self._store
        if store is None or store.device != device or store.numel() < nbytes:
            store = self._store = torch.empty(nbytes, dtype=torch.uint8, device=device)
        return store[:nbytes].view(dtype).view(shape)

    def like(self, tensor: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """:meth:`take` with the shape (and by default the dtype) and device of ``tensor``."""
        return self.take(tuple(tensor.shape), dtype or tensor.dtype, tensor.device)

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return 0 if self._store is None else self._store.numel()

    def release(self) -> int:
        """Free the memory; return the bytes released."""
        released, self._store = self.nbytes, None
        return released


@dataclass
class BucketScratch:
    """The memory :func:`bucketize` may overwrite: the caller's, lent for one call at a time.

    Attributes:
        counts: the comparison path's running counts (uint8, or int32 past 255 thresholds).
        flags: bool: one comparison's outcome; on the grid, the entries not done yet.
        cells: int64: each entry's grid cell, then its one step.
        scaled: the values' dtype: (v - lo) x scale, then the threshold after the bucket.
        starts: int64 (R, cells + 4): the grid's thresholds in the cells below each cell.
    """

    counts: Reusable = field(default_factory=Reusable)
    flags: Reusable = field(default_factory=Reusable)
    cells: Reusable = field(default_factory=Reusable)
    scaled: Reusable = field(default_factory=Reusable)
    starts: Reusable = field(default_factory=Reusable)

    def parts(self) -> list[Reusable]:
        return [getattr(self, f.name) for f in fields(self)]


class Bucketed(NamedTuple):
    """What :func:`bucketize` found.

    Attributes:
        buckets: (R, N) int64 in [0, T]: each entry's number of thresholds strictly below it.
        crowded: whether the grid found many entries in crowded cells (collapsed embeddings):
            pass it to the call for the next chunk of the same batch, whose rows look alike,
            so that it lays its grid over the values' range at once. False off the grid.
    """

    buckets: Tensor
    crowded: bool


def bucketize(
    values: Tensor,
    thresholds: Tensor,
    *,
    out: Tensor | None = None,
    scratch: BucketScratch | None = None,
    crowded: bool = False,
) -> Bucketed:
    """For each entry, how many thresholds of its row are strictly below it (module docstring).

    Args:
        values: (R, N) values, finite or +inf.
        thresholds: (R, T) thresholds sorted along each row; may hold -inf and +inf.
        out: (R, N) int64 to hold the answer (a new tensor when None).
        scratch: memory to work in (fresh when None).
        crowded: what the previous chunk's call answered (:class:`Bucketed`).

    Returns:
        :class:`Bucketed`: the buckets (in ``out``) and whether the grid was crowded.
    """
    scratch = BucketScratch() if scratch is None else scratch
    if out is None:
        out = torch.empty(values.shape, dtype=torch.long, device=values.device)
    if searches_on(values.device):
        torch.searchsorted(thresholds.contiguous(), values.contiguous(), out=out)
        return Bucketed(out, False)
    if thresholds.shape[1] <= COMPARE_MAX_THRESHOLDS:
        return Bucketed(_by_comparisons(values, thresholds, out, scratch), False)
    return _by_grid(values, thresholds, out, scratch, crowded)


def searches_on(device: torch.device) -> bool:
    """Whether :func:`bucketize` uses ``torch.searchsorted`` on ``device``: everywhere but the
    CPU. On a GPU a binary search per entry costs no mispredicted branches, and it needs no
    host sync, which the grid's stepping loop takes once or twice per chunk."""
    return device.type != "cpu"


def _by_comparisons(
    values: Tensor, thresholds: Tensor, out: Tensor, scratch: BucketScratch
) -> Tensor:
    """One branch-free pass per threshold; counts in uint8 up to 255 thresholds, else int32."""
    width = thresholds.shape[1]
    acc = scratch.counts.like(values, torch.uint8 if width <= 255 else torch.int32).zero_()
    above = scratch.flags.like(values, torch.bool)
    for j in range(width):
        acc.add_(torch.gt(values, thresholds[:, j : j + 1], out=above))
    return out.copy_(acc)


def _by_grid(
    values: Tensor, thresholds: Tensor, out: Tensor, scratch: BucketScratch, crowded: bool
) -> Bucketed:
    """A uniform grid of cells over each row's finite thresholds, then exact steps in a cell.

    Any map from values to cells that never decreases gives exact answers: thresholds in lower
    cells are below the entry and those in higher cells above it, so an entry starts at the
    number of thresholds in lower cells and steps over the ones in its own cell that are below
    it. Every entry takes one step, which is exact in a cell with at most one threshold; the
    few entries whose next threshold is still below them (crowded cells) step on by themselves.

    When many entries are left in crowded cells (collapsed embeddings: the thresholds D[a,p]
    and the negatives' distances share a cell or two, far below the D[a,p] + m cluster), the
    grid is laid again over the part of the threshold range that the row's values cover,
    which spreads them out; ``crowded`` (the previous chunk's answer) starts there at once.
    Either grid gives exact answers: only the number of steps depends on it.
    """
    finite = torch.isfinite(thresholds) & (thresholds.abs() < torch.finfo(thresholds.dtype).max)
    lo = torch.where(finite, thresholds, float("inf")).amin(1, keepdim=True)
    hi = torch.where(finite, thresholds, -float("inf")).amax(1, keepdim=True)
    padded = torch.cat([thresholds, torch.full_like(thresholds[:, :1], float("inf"))], 1)
    if not crowded:
        behind = _grid_pass(values, thresholds, padded, lo, hi, out, scratch)
        crowded = int(behind.sum()) * _CROWDED_SHARE > values.numel()
    if crowded:
        vlo = values.amin(1, keepdim=True)  # +inf entries are never the minimum of a row
        vhi = torch.where(values < float("inf"), values, -float("inf")).amax(1, keepdim=True)
        lo, hi = torch.maximum(lo, vlo), torch.minimum(hi, vhi)
        behind = _grid_pass(values, thresholds, padded, lo, hi, out, scratch)
    moving = torch.nonzero(behind.view(-1)).squeeze(1)
    if crowded:
        moving = _settle_infinite(out, moving, values, thresholds)
    flat, flat_values = out.view(-1), values.reshape(-1)
    row = torch.div(moving, values.shape[1], rounding_mode="floor")
    while moving.numel():
        flat[moving] += 1
        more = padded[row, flat[moving]] < flat_values[moving]
        moving, row = moving[more], row[more]
    return Bucketed(out, crowded)


def _settle_infinite(bucket: Tensor, moving: Tensor, values: Tensor, thresholds: Tensor) -> Tensor:
    """Give each +inf entry among ``moving`` (flat indices) its answer, the row's number of
    thresholds below +inf, and return the others. On the second grid, laid over the finite
    values, the +inf entries share the top cell with every threshold above the values."""
    infinite = values.reshape(-1)[moving] == float("inf")
    done = moving[infinite]
    below_inf = (thresholds < float("inf")).sum(1)
    bucket.view(-1)[done] = below_inf[torch.div(done, values.shape[1], rounding_mode="floor")]
    return moving[~infinite]


def _grid_pass(
    values: Tensor,
    thresholds: Tensor,
    padded: Tensor,
    lo: Tensor,
    hi: Tensor,
    bucket: Tensor,
    scratch: BucketScratch,
) -> Tensor:
    """Buckets (into ``bucket``) after one step on a grid of uniform cells over [lo, hi] per
    row; returns which entries are not done yet (their next threshold is still below them).

    cell(v) = trunc(clamp((v - lo) * scale, 0, cells + 2)) never decreases in v, whatever the
    rounding; scale = cells / (hi - lo) is computed in float64 and clamped to the dtype's
    finite range, so no spread is too small (1e-38) or too large for it. Values up to hi take
    cells 0 to cells; +inf alone reaches cells + 2 when the thresholds end at hi.
    """
    rows, width = thresholds.shape
    cells = min(_CELLS_PER_THRESHOLD * width, max(4 * values.shape[1], width))
    spread = hi.double() - lo.double()
    usable = torch.isfinite(spread) & (spread > 0)
    info = torch.finfo(thresholds.dtype)
    scale = torch.where(usable, cells / torch.where(usable, spread, 1.0), 1.0)
    scale = scale.clamp(info.tiny, info.max).to(thresholds.dtype)
    lo = torch.where(torch.isfinite(lo), lo, 0.0)

    def cell(v: Tensor, out: Tensor, index: Tensor) -> Tensor:
        torch.sub(v, lo, out=out).mul_(scale).clamp_(0, cells + 2)
        return index.copy_(out)

    thr_cell = cell(
        thresholds,
        torch.empty_like(thresholds),
        torch.empty(thresholds.shape, dtype=torch.long, device=thresholds.device),
    )
    # column c: the number of thresholds in cells below c
    start = scratch.starts.take((rows, cells + 4), torch.long, thresholds.device).zero_()
    start[:, 1:].scatter_add_(1, thr_cell, torch.ones_like(thr_cell))
    start.cumsum_(1)

    scaled = scratch.scaled.like(values)
    index = scratch.cells.like(values, torch.long)
    torch.gather(start, 1, cell(values, scaled, index), out=bucket)
    torch.gather(padded, 1, bucket, out=scaled)  # the first threshold at or after the bucket
    bucket.add_(torch.lt(scaled, values, out=index))
    torch.gather(padded, 1, bucket, out=scaled)
    return torch.lt(scaled, values, out=scratch.flags.like(values, torch.bool))
