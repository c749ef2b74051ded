"""Row-wise bucketing of values against sorted thresholds, and reusable chunk buffers.

``bucketize(values, thresholds)`` answers, for every entry, how many thresholds of its row lie
strictly below it: what ``torch.searchsorted`` computes. On the CPU it does so without the
binary search, whose branches mispredict when distances and thresholds interleave (about 14 ns
per entry on 2 cores); on a GPU it is ``torch.searchsorted``, which takes no host sync.
"""

from __future__ import annotations

import math
import threading

import torch
from torch import Tensor

# Bucketing by repeated comparisons beats the grid up to about this many thresholds.
COMPARE_MAX_THRESHOLDS = 24
# Cells of the grid per threshold (at most 4 per value of a row).
_CELLS_PER_THRESHOLD = 16
# The grid is laid again when more than 1 / this share of the entries sit in crowded cells.
_CROWDED_SHARE = 16


# Workspace bytes kept between calls; larger sets of buffers are released after each call.
KEEP_BYTES = 64 << 20

_LOCAL = threading.local()


def shared_workspace() -> Workspace:
    """This thread's workspace, kept between calls: the chunk-sized buffers of the latest call
    (measured: 24 to 30 MB at B = 1800 (45 x 40), 14 to 22 MB at B = 8192 (2048 x 4), 33 to
    57 MB at B = 1024 with 4 identities), at most :data:`KEEP_BYTES` of them, so that training
    steps take no page faults for fresh ones. :func:`release_workspace` frees them."""
    ws = getattr(_LOCAL, "workspace", None)
    if ws is None:
        ws = _LOCAL.workspace = Workspace()
    return ws


def release_workspace() -> int:
    """Free this thread's mining buffers now; return the bytes released. The next loss call
    allocates them again."""
    ws = getattr(_LOCAL, "workspace", None)
    return 0 if ws is None else ws.trim(0)


class Workspace:
    """Buffers reused across chunks of rows, by (name, device, dtype).

    A fresh multi-megabyte temporary per chunk costs page faults on first touch (the allocator
    returns freed memory to the system): at B = 8192 that was half the mining time.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}
        # whether the latest grid bucketing found crowded cells (collapsed embeddings); the
        # next chunk then lays its grid over the values' range at once
        self.crowded = False

    def get(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        """An uninitialised tensor of ``shape``, sharing memory with earlier calls by ``name``
        (on the same device, of the same dtype)."""
        numel = math.prod(shape)
        key = (name, torch.device(device), dtype)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[key] = buf
        return buf[:numel].view(shape)

    def like(self, name: str, tensor: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """``get`` with the shape (and by default dtype and device) of ``tensor``."""
        return self.get(name, tuple(tensor.shape), dtype or tensor.dtype, tensor.device)

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def trim(self, keep_bytes: int = KEEP_BYTES) -> int:
        """Release the largest buffers until at most ``keep_bytes`` remain; return the bytes
        released."""
        released = 0
        for key, buf in sorted(self._buffers.items(), key=lambda kv: -kv[1].numel()):
            if self.nbytes <= keep_bytes:
                break
            released += buf.numel() * buf.element_size()
            del self._buffers[key]
        return released


def bucketize(values: Tensor, thresholds: Tensor, ws: Workspace) -> Tensor:
    """For each entry, how many thresholds of its row are strictly below it.

    Args:
        values: (R, N) values, finite or +inf.
        thresholds: (R, T) thresholds sorted along each row; may hold -inf and +inf.
        ws: buffers; the result lives in ``ws`` under "bucket".

    Returns:
        (R, N) int64 in [0, T].
    """
    if searches_on(values.device):
        bucket = ws.like("bucket", values, torch.long)
        return torch.searchsorted(thresholds.contiguous(), values.contiguous(), out=bucket)
    if thresholds.shape[1] <= COMPARE_MAX_THRESHOLDS:
        return _by_comparisons(values, thresholds, ws)
    return _by_grid(values, thresholds, ws)


def searches_on(device: torch.device) -> bool:
    """Whether :func:`bucketize` uses ``torch.searchsorted`` on ``device``: everywhere but the
    CPU. On a GPU a binary search per entry costs no mispredicted branches, and it needs no
    host sync, which the grid's stepping loop takes once or twice per chunk."""
    return device.type != "cpu"


def _by_comparisons(values: Tensor, thresholds: Tensor, ws: Workspace) -> Tensor:
    """One branch-free pass per threshold; counts in uint8 up to 255 thresholds, else int32."""
    width = thresholds.shape[1]
    acc = ws.like("acc", values, torch.uint8 if width <= 255 else torch.int32).zero_()
    above = ws.like("above", values, torch.bool)
    for j in range(width):
        acc.add_(torch.gt(values, thresholds[:, j : j + 1], out=above))
    return ws.like("bucket", values, torch.long).copy_(acc)


def _by_grid(values: Tensor, thresholds: Tensor, ws: Workspace) -> Tensor:
    """A uniform grid of cells over each row's finite thresholds, then exact steps in a cell.

    Any map from values to cells that never decreases gives exact answers: thresholds in lower
    cells are below the entry and those in higher cells above it, so an entry starts at the
    number of thresholds in lower cells and steps over the ones in its own cell that are below
    it. Every entry takes one step, which is exact in a cell with at most one threshold; the
    few entries whose next threshold is still below them (crowded cells) step on by themselves.

    When many entries are left in crowded cells (collapsed embeddings: the thresholds D[a,p]
    and the negatives' distances share a cell or two, far below the D[a,p] + m cluster), the
    grid is laid again over the part of the threshold range that the row's values cover,
    which spreads them out; after such a chunk the next one starts with that grid. Either grid
    gives exact answers: only the number of steps depends on it.
    """
    finite = torch.isfinite(thresholds) & (thresholds.abs() < torch.finfo(thresholds.dtype).max)
    lo = torch.where(finite, thresholds, float("inf")).amin(1, keepdim=True)
    hi = torch.where(finite, thresholds, -float("inf")).amax(1, keepdim=True)
    padded = torch.cat([thresholds, torch.full_like(thresholds[:, :1], float("inf"))], 1)
    crowded = ws.crowded  # the previous chunk's answer: the rows of one batch look alike
    if not crowded:
        bucket, behind = _grid_pass(values, thresholds, padded, lo, hi, ws)
        crowded = int(behind.sum()) * _CROWDED_SHARE > values.numel()
    if crowded:
        vlo = values.amin(1, keepdim=True)  # +inf entries are never the minimum of a row
        vhi = torch.where(values < float("inf"), values, -float("inf")).amax(1, keepdim=True)
        lo, hi = torch.maximum(lo, vlo), torch.minimum(hi, vhi)
        bucket, behind = _grid_pass(values, thresholds, padded, lo, hi, ws)
    ws.crowded = crowded
    moving = torch.nonzero(behind.view(-1)).squeeze(1)
    if crowded:
        moving = _settle_infinite(bucket, moving, values, thresholds)
    flat, flat_values = bucket.view(-1), values.reshape(-1)
    row = torch.div(moving, values.shape[1], rounding_mode="floor")
    while moving.numel():
        flat[moving] += 1
        more = padded[row, flat[moving]] < flat_values[moving]
        moving, row = moving[more], row[more]
    return bucket


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
    values: Tensor, thresholds: Tensor, padded: Tensor, lo: Tensor, hi: Tensor, ws: Workspace
) -> tuple[Tensor, Tensor]:
    """Buckets after one step on a grid of uniform cells over [lo, hi] per row, and which
    entries are not done yet (their next threshold is still below them).

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
    start = ws.get("start", (rows, cells + 4), torch.long, thresholds.device).zero_()
    start[:, 1:].scatter_add_(1, thr_cell, torch.ones_like(thr_cell))
    start.cumsum_(1)

    scratch = ws.like("scratch", values)
    bucket = ws.like("bucket", values, torch.long)
    torch.gather(start, 1, cell(values, scratch, ws.like("cell", values, torch.long)), out=bucket)
    step = ws.like("cell", values, torch.long)
    torch.gather(padded, 1, bucket, out=scratch)
    bucket.add_(torch.lt(scratch, values, out=step))
    torch.gather(padded, 1, bucket, out=scratch)
    return bucket, torch.lt(scratch, values, out=ws.like("above", values, torch.bool))
