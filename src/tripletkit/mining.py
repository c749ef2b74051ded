"""Triplet selection on a distance matrix.

Terms. Labels y and a (B, B) distance matrix D. A *valid triplet* (a, p, n) has a != p,
y[a] == y[p] and y[n] != y[a]. With margin m, a valid triplet is

- *hard* when D[a,n] <= D[a,p],
- *easy* when it is not hard and D[a,n] >= D[a,p] + m (its hinge loss is zero),
- *semi-hard* otherwise (D[a,p] < D[a,n] < D[a,p] + m),

and *active* when D[a,n] < D[a,p] + m (its hinge loss is positive): for m > 0 the active
triplets are exactly the hard and the semi-hard ones.

Strategies:

- ``"all"``: every valid triplet (batch-all).
- ``"hard"``: for each anchor with at least one positive and one negative, its farthest positive
  with its closest negative (batch-hard, Hermans et al. 2017).
- ``"semi-hard"``: FaceNet's selection. Every anchor-positive pair (a, p) whose anchor has a
  negative gives one triplet; its negative is the closest n with D[a,n] > D[a,p] + t for an
  offset t (t = 0: FaceNet's semi-hard; t > 0 easier; t < 0 harder; t = -inf: the closest
  negative). When no negative qualifies, ``fallback`` decides: "skip" drops the pair (counted in
  ``dropped``), "hardest" takes the closest negative, "easiest" the farthest one (the behaviour of
  TF-Addons and sentence-transformers).

Ties between equal distances go to the smallest column index. Distances must be finite: NaN or
+-inf anywhere in the matrix is a ValueError naming the first row that holds one (an infinite
distance has no order against another, and no gradient). ``offset`` and ``fallback`` belong to
"semi-hard": with "all" or "hard" a value other than the default (0, "skip") has no effect and
gives a UserWarning.

A worked example: six points on a line, D[i, j] = |x_i - x_j|, people 0, 0, 0, 1, 1, 2:

>>> import torch
>>> from tripletkit import mine
>>> x = torch.tensor([0.0, 0.25, 1.0, 0.5, 1.5, 2.0])
>>> labels = [0, 0, 0, 1, 1, 2]
>>> D = (x[:, None] - x[None, :]).abs()
>>> D
tensor([[0.0000, 0.2500, 1.0000, 0.5000, 1.5000, 2.0000],
        [0.2500, 0.0000, 0.7500, 0.2500, 1.2500, 1.7500],
        [1.0000, 0.7500, 0.0000, 0.5000, 0.5000, 1.0000],
        [0.5000, 0.2500, 0.5000, 0.0000, 1.0000, 1.5000],
        [1.5000, 1.2500, 0.5000, 1.0000, 0.0000, 0.5000],
        [2.0000, 1.7500, 1.0000, 1.5000, 0.5000, 0.0000]])

"all" lists every valid triplet: anchors 0, 1, 2 have 2 positives and 3 negatives each, 3 and
4 one positive and 4 negatives, and 5 (alone in its person) none: 3 x 6 + 2 x 4 = 26.

>>> len(mine(D, labels, "all"))
26

"hard" pairs each anchor's farthest positive with its closest negative. Anchor 0: farthest
positive 2 (1.0), closest negative 3 (0.5); anchor 1: positive 2 (0.75), negative 3 (0.25);
anchor 2: positive 0 (1.0), and negatives 3 and 4 tie at 0.5, so the smaller column, 3.

>>> mine(D, labels, "hard").as_list()
[(0, 2, 3), (1, 2, 3), (2, 0, 3), (3, 4, 1), (4, 3, 2)]

"semi-hard" takes, for every pair (a, p), the closest negative strictly farther than p. Pair
(0, 1) at 0.25 gets 3 (0.5); pair (1, 0) at 0.25 skips negative 3, which lies at exactly 0.25
(not farther: a hard negative), and gets 4 (1.25); pair (2, 0) at 1.0 has no negative farther
than 1.0 (5 lies at exactly 1.0), so with the default fallback "skip" it is dropped.

>>> semi = mine(D, labels, "semi-hard")
>>> semi.as_list()
[(0, 1, 3), (0, 2, 4), (1, 0, 4), (1, 2, 4), (2, 1, 5), (3, 4, 5), (4, 3, 1)]
>>> semi.dropped
1

An offset moves the boundary: t = -0.5 asks only D[a,n] > D[a,p] - 0.5, so pair (2, 0) now
gets 5 (1.0 > 0.5) and pair (1, 0) the hard negative 3 (0.25 > -0.25); a negative at exactly
D[a,p] - 0.5 still does not qualify (pair (0, 2) passes over 3 at 0.5 for 4).

>>> mine(D, labels, "semi-hard", offset=-0.5).as_list()
[(0, 1, 3), (0, 2, 4), (1, 0, 3), (1, 2, 4), (2, 0, 5), (2, 1, 3), (3, 4, 5), (4, 3, 1)]

How it stays O(B^2). Rows are processed in chunks. Each anchor's k - 1 positive distances give
a few threshold blocks (:class:`Thresholds`: d_ap, just below d_ap + m, d_ap + t). Each negative
distance is bucketed once against its row's sorted thresholds (:mod:`tripletkit._bucketing`:
bucket > j exactly when the distance is above threshold j); per-bucket counts, sums and minima
then answer every question above (how many negatives lie under each threshold, which is the
closest one above it) with cumulative sums over the buckets instead of a (B, B, B) comparison.
Buffers are passed down explicitly (:class:`ChunkBuffers`). A small batch (at most
:data:`SMALL_DISTANCES` distances and :data:`SMALL_ELEMENTS` comparisons, as at B = 128) is
compared directly instead, in a few whole-matrix operations (:func:`_scan_small`), with the
same result.
"""

from __future__ import annotations

import numbers
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ._bucketing import BucketScratch, Reusable, bucketize

STRATEGIES = ("all", "hard", "semi-hard")
FALLBACKS = ("skip", "hardest", "easiest")

# Elements per chunk of rows.
_CHUNK_ELEMENTS = 1 << 20
# Buffer bytes kept between calls; larger sets of buffers are released after each call.
KEEP_BYTES = 64 << 20
# Scans of at most SMALL_DISTANCES distances and SMALL_ELEMENTS comparisons (rows x positive
# slots x columns) take the small path (:func:`_scan_small`): a few whole-matrix operations,
# where the chunked pass's fixed cost per call outweighs its work. Measured on 2 cores (forward +
# backward, every strategy): the small path is 0.61-0.88x the chunked pass's time at B = 128
# (32 x 4, 16 x 8, 8 x 16 people x photos), 0.99-1.13x at B = 256 (64 x 4), 1.2-1.9x at B = 512.
SMALL_DISTANCES = 1 << 14
SMALL_ELEMENTS = 1 << 18


@dataclass(frozen=True)
class Triplets:
    """Selected triplets as index tensors, sorted by (anchor, positive).

    Attributes:
        anchor: (T,) row indices.
        positive: (T,) indices with the anchor's label.
        negative: (T,) indices with another label.
        dropped: anchor-positive pairs left without a triplet because no negative qualified
            (semi-hard with fallback "skip"; 0 otherwise).
    """

    anchor: Tensor
    positive: Tensor
    negative: Tensor
    dropped: int = 0

    def __len__(self) -> int:
        return int(self.anchor.numel())

    def as_list(self) -> list[tuple[int, int, int]]:
        """The triplets as (a, p, n) tuples, for inspection and tests."""
        return list(
            zip(self.anchor.tolist(), self.positive.tolist(), self.negative.tolist(), strict=True)
        )


@dataclass(frozen=True)
class Groups:
    """Who shares a label with whom, in O(B) tensors.

    ``order`` lists the indices sorted by label (stable), so the examples of one label are
    ``order[start[i] : start[i] + size[i]]`` for any member i, and i sits at ``rank[i]`` there.
    """

    labels: Tensor
    order: Tensor
    start: Tensor
    size: Tensor
    rank: Tensor
    kmax: int

    @property
    def positives(self) -> Tensor:
        """(B,) number of positives of each example."""
        return self.size - 1

    @property
    def negatives(self) -> Tensor:
        """(B,) number of negatives of each example."""
        return len(self.size) - self.size

    def same(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Columns sharing each row's label, itself included: (R, kmax) indices and a validity
        mask; invalid slots hold the row itself."""
        slots = torch.arange(self.kmax, device=rows.device)
        valid = slots < self.size[rows, None]
        where = (self.start[rows, None] + slots).clamp(max=len(self.order) - 1)
        return torch.where(valid, self.order[where], rows[:, None]), valid

    @property
    def slots(self) -> int:
        """Positive slots per row."""
        return max(self.kmax - 1, 0)

    def positive_slots(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Positives of each row, itself excluded: (R, kmax - 1) indices and a validity mask;
        invalid slots hold the row itself. Positives come in increasing index order."""
        slots = torch.arange(self.slots, device=rows.device)
        valid = slots < self.positives[rows, None]
        same_slot = slots + (slots >= self.rank[rows, None]).long()
        where = (self.start[rows, None] + same_slot).clamp(max=len(self.order) - 1)
        return torch.where(valid, self.order[where], rows[:, None]), valid

    def exclude(self, chunk: Tensor, rows: Tensor) -> Tensor:
        """Set every same-label column of ``chunk`` (rows ``rows`` of D) to +inf, in place;
        return the float64 sum of the values it replaced."""
        same, valid = self.same(rows)
        replaced = (chunk.gather(1, same) * valid).sum(dtype=torch.float64)
        chunk.scatter_(1, same, float("inf"))
        return replaced

    def negative_mask(self, rows: Tensor) -> Tensor:
        """(R, B) bool: which columns are negatives of each row."""
        return self.labels[rows, None] != self.labels[None, :]


@dataclass(frozen=True)
class Relevance:
    """Which documents (columns) are relevant to which queries (rows), for query x document
    distance matrices. Relevant columns are the positives of a row; every other column is a
    negative. Built with :meth:`from_mask`.
    """

    mask: Tensor
    order: Tensor
    positives: Tensor
    negatives: Tensor
    slots: int

    @classmethod
    def from_mask(cls, mask: Tensor) -> Relevance:
        """From a (Q, D) bool matrix: mask[q, d] is True when document d is relevant to q."""
        if mask.dim() != 2 or mask.dtype != torch.bool:
            raise ValueError(
                f"relevant must be a 2-D bool tensor, got {mask.dtype} of shape {tuple(mask.shape)}"
            )
        positives = mask.sum(1)
        slots = int(positives.max()) if mask.numel() else 0
        order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)[:, :slots]
        return cls(mask, order, positives, mask.shape[1] - positives, slots)

    @classmethod
    def from_labels(cls, labels: Tensor, candidate_labels: Tensor) -> Relevance:
        """From the (A,) labels of the rows and the (C,) labels of the columns of an anchors x
        candidates matrix: a candidate is a positive of every anchor that shares its label."""
        return cls.from_mask(labels[:, None] == candidate_labels[None, :])

    def positive_slots(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Relevant columns of each row in increasing order: (R, slots) indices and validity."""
        valid = torch.arange(self.slots, device=rows.device) < self.positives[rows, None]
        return torch.where(valid, self.order[rows], 0), valid

    def exclude(self, chunk: Tensor, rows: Tensor) -> Tensor:
        """Set the relevant columns of ``chunk`` to +inf, in place; return the float64 sum of
        the values it replaced."""
        relevant = self.mask[rows]
        replaced = torch.where(relevant, chunk, 0.0).sum(dtype=torch.float64)
        chunk.masked_fill_(relevant, float("inf"))
        return replaced

    def negative_mask(self, rows: Tensor) -> Tensor:
        """(R, D) bool: which columns are negatives of each row."""
        return ~self.mask[rows]


def label_groups(labels: Tensor) -> Groups:
    """Group structure of (B,) integer labels: positives share the label (the row itself
    excluded), negatives do not."""
    order = torch.argsort(labels, stable=True)
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    start = starts[inverse]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(labels), device=labels.device)
    rank = rank - start
    kmax = int(counts.max()) if len(labels) else 0
    return Groups(labels, order=order, start=start, size=counts[inverse], rank=rank, kmax=kmax)


@dataclass
class ChunkBuffers:
    """The memory a scan reuses from chunk to chunk (and, through :func:`shared_buffers`, from
    call to call on one thread), one :class:`~tripletkit._bucketing.Reusable` per purpose.

    Attributes:
        rows: the chunk's copy of D, +inf off the negatives (:func:`masked_rows`).
        buckets: int64: each entry's bucket against its row's thresholds.
        keys: int64: the semi-hard choice's packed (distance, column) keys, or with "all" each
            negative's count of hinge pairs (a call computes one or the other).
        values, flags: the semi-hard choice in dtypes other than float32 (each bucket's
            minimum gathered back, and where an entry is that minimum).
        bucketing: lent to :func:`~tripletkit._bucketing.bucketize`.
    """

    rows: Reusable = field(default_factory=Reusable)
    buckets: Reusable = field(default_factory=Reusable)
    keys: Reusable = field(default_factory=Reusable)
    values: Reusable = field(default_factory=Reusable)
    flags: Reusable = field(default_factory=Reusable)
    bucketing: BucketScratch = field(default_factory=BucketScratch)

    def parts(self) -> list[Reusable]:
        own = [self.rows, self.buckets, self.keys, self.values, self.flags]
        return own + self.bucketing.parts()

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return sum(p.nbytes for p in self.parts())

    def trim(self, keep_bytes: int = KEEP_BYTES) -> int:
        """Release the largest parts until at most ``keep_bytes`` remain; return the bytes
        released."""
        released = 0
        for part in sorted(self.parts(), key=lambda p: -p.nbytes):
            if self.nbytes <= keep_bytes:
                break
            released += part.release()
        return released


_LOCAL = threading.local()


def shared_buffers() -> ChunkBuffers:
    """This thread's buffers, kept between calls: those of the latest call (measured: 24 to
    30 MB at B = 1800 (45 x 40), 14 to 22 MB at B = 8192 (2048 x 4), 33 to 57 MB at B = 1024
    with 4 identities), at most :data:`KEEP_BYTES` of them, so that training steps take no
    page faults for fresh ones. :func:`release_workspace` frees them."""
    buffers = getattr(_LOCAL, "buffers", None)
    if buffers is None:
        buffers = _LOCAL.buffers = ChunkBuffers()
    return buffers


def release_workspace() -> int:
    """Free this thread's mining buffers now; return the bytes released. The next loss call
    allocates them again."""
    buffers = getattr(_LOCAL, "buffers", None)
    return 0 if buffers is None else buffers.trim(0)


@dataclass(frozen=True)
class Thresholds:
    """The thresholds of one chunk of rows, built from each row's S positive distances d_ap.

    Columns come in blocks of S, one threshold per positive slot (+inf for an empty slot). By
    the bucketing convention (:mod:`tripletkit._bucketing`), the entry D[a,n] lies in a bucket
    above the threshold at sorted position j exactly when D[a,n] > that threshold:

    ========  ===========================  ============================  ======================
    block     threshold of the pair (a,p)  bucket > j means              used for
    ========  ===========================  ============================  ======================
    hard      d_ap                         D[a,n] > d_ap: not hard       hard counts; the
                                                                         semi-hard choice at t=0
    active    below(d_ap + m), the         D[a,n] >= d_ap + m: zero      easy / active counts,
              largest float < d_ap + m     hinge loss                    batch-all hinge sums
    semi      d_ap + t (only when t != 0)  D[a,n] > d_ap + t: a          the semi-hard choice
                                           semi-hard candidate
    ========  ===========================  ============================  ======================

    Attributes:
        sorted: (R, T) each row's thresholds, ascending (T = blocks x S).
        order: (R, T) the column each sorted threshold came from.
        position: (R, T) where each column's threshold sits in ``sorted``.
        blocks: the block names, in column order.
        slots: S.
    """

    sorted: Tensor
    order: Tensor
    position: Tensor
    blocks: tuple[str, ...]
    slots: int

    @classmethod
    def of_pairs(
        cls, d_ap: Tensor, valid: Tensor, margin: float, offset: float | None
    ) -> Thresholds:
        """The blocks of the table for pairs with distances ``d_ap`` (R, S), of which ``valid``
        are real; "semi" when ``offset`` is given and not 0."""
        inf = torch.full_like(d_ap, float("inf"))
        named = {"hard": d_ap, "active": torch.nextafter(d_ap + margin, -inf)}
        if offset is not None and offset != 0.0:
            named["semi"] = d_ap + offset
        columns = torch.cat([torch.where(valid, t, inf) for t in named.values()], 1)
        ordered, order = columns.sort(dim=1, stable=True)
        position = torch.empty_like(order)
        position.scatter_(
            1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
        )
        return cls(ordered, order, position, tuple(named), d_ap.shape[1])

    def columns(self, block: str) -> slice:
        """The columns of ``block`` ("semi" without its own block is "hard")."""
        if block == "semi" and "semi" not in self.blocks:
            block = "hard"
        k = self.blocks.index(block)
        return slice(k * self.slots, (k + 1) * self.slots)

    def positions(self, block: str) -> Tensor:
        """(R, S) sorted positions j of ``block``'s thresholds."""
        return self.position[:, self.columns(block)]


@dataclass
class Scan:
    """What one pass over the distance matrix found, per anchor-positive slot (B, kmax - 1).

    Attributes:
        pos: (B, S) positive indices; ``pos_valid`` marks real ones.
        pos_valid: (B, S) bool.
        d_ap: (B, S) D[a, p].
        has_neg: (B,) whether the anchor has a negative.
        valid_triplets: number of valid triplets.
        hard_triplets: valid triplets with D[a,n] <= D[a,p].
        not_easy_triplets: valid triplets that are hard or have D[a,n] < D[a,p] + margin.
        sum_d_ap, sum_d_an: sums of D over all positive and all negative pairs.
        n_ap, n_an: counts of those pairs.
        hinge_count: (B, S) #{n: D[a,n] < D[a,p] + margin} ("all" only).
        hinge_sum: (B, S) sum of those D[a,n] ("all" only).
        neg_weight: (B, B) -#{p: D[a,n] < D[a,p] + margin}, 0 off the negatives ("all" only;
            negated, as the loss's gradient weighs the negatives).
        chosen: (B, S) chosen negative of each pair, -1 if none ("semi-hard" only).
        closest: (B,) closest negative of each anchor, -1 if none.
        farthest: (B,) farthest negative of each anchor, -1 if none (fallback "easiest" only).
    """

    pos: Tensor
    pos_valid: Tensor
    d_ap: Tensor
    has_neg: Tensor
    valid_triplets: Tensor
    hard_triplets: Tensor
    not_easy_triplets: Tensor
    sum_d_ap: Tensor
    sum_d_an: Tensor
    n_ap: Tensor
    n_an: Tensor
    hinge_count: Tensor | None = None
    hinge_sum: Tensor | None = None
    neg_weight: Tensor | None = None
    chosen: Tensor | None = None
    closest: Tensor | None = None
    farthest: Tensor | None = None


@dataclass(frozen=True)
class _Pass:
    """The options of one scan, as its chunks need them."""

    margin: float
    offset: float | None  # the semi-hard offset; None: no semi-hard choice
    hinge: bool  # batch-all's hinge counts, sums and negative weights
    signed: bool  # some distance is negative (their float bits order backwards)


def scan(
    distances: Tensor,
    structure: Groups | Relevance,
    *,
    margin: float,
    strategy: str,
    offset: float = 0.0,
    fallback: str = "skip",
    hinge: bool = True,
    weights_out: Tensor | None = None,
    nonnegative: bool = False,
    buffers: ChunkBuffers | None = None,
) -> Scan:
    """One chunked pass over ``distances`` that gathers what ``strategy`` and the statistics need.

    Args:
        distances: (R, C) distances, no gradient; not modified (unless it is ``weights_out``).
        structure: positives and negatives of each row: :func:`label_groups` of (B,) labels
            for a square matrix, or a :class:`Relevance` for queries x documents.
        margin: the margin m of the statistics and of the "all" hinge sums.
        strategy: "all", "hard" or "semi-hard".
        offset: semi-hard offset t.
        fallback: semi-hard fallback.
        hinge: with "all", also compute hinge counts, sums and negative weights.
        weights_out: (R, C) tensor to hold the negative weights, or None for a new one. It may
            be ``distances`` itself: a chunk's rows are read before they are overwritten.
        nonnegative: the caller knows that no distance is negative (else one check per call).
        buffers: the memory to work in (None: this thread's :func:`shared_buffers`).

    Returns:
        A :class:`Scan`.
    """
    n, n_cols = distances.shape
    device = distances.device
    groups = structure
    slots = groups.slots
    semi = strategy == "semi-hard"
    if 0 < n * n_cols <= SMALL_DISTANCES and n * max(slots, 1) * n_cols <= SMALL_ELEMENTS:
        return _scan_small(
            distances, groups, margin, strategy, offset, fallback, hinge, weights_out
        )
    has_neg = groups.negatives > 0
    zero = torch.zeros((), dtype=torch.float64, device=device)
    out = Scan(
        pos=torch.zeros(n, slots, dtype=torch.long, device=device),
        pos_valid=torch.zeros(n, slots, dtype=torch.bool, device=device),
        d_ap=torch.zeros(n, slots, dtype=distances.dtype, device=device),
        has_neg=has_neg,
        valid_triplets=(groups.positives * groups.negatives).sum().to(torch.float64),
        hard_triplets=zero.clone(),
        not_easy_triplets=zero.clone(),
        sum_d_ap=zero.clone(),
        sum_d_an=zero.clone(),
        n_ap=groups.positives.sum().to(torch.float64),
        n_an=groups.negatives.sum().to(torch.float64),
    )
    if strategy == "hard" or (strategy == "semi-hard" and fallback == "hardest"):
        out.closest = torch.full((n,), -1, dtype=torch.long, device=device)
    all_hinge = strategy == "all" and hinge
    if all_hinge:
        out.hinge_count = torch.zeros(n, slots, dtype=distances.dtype, device=device)
        out.hinge_sum = torch.zeros(n, slots, dtype=distances.dtype, device=device)
        # every row is written by its chunk, unless no example has a positive at all
        if weights_out is None or not slots:  # without positives no chunk writes its rows
            alloc = torch.empty if slots else torch.zeros
            weights_out = alloc(n, n_cols, dtype=distances.dtype, device=device)
        out.neg_weight = weights_out
    if semi:
        out.chosen = torch.full((n, slots), -1, dtype=torch.long, device=device)
    if semi and fallback == "easiest":
        out.farthest = torch.full((n,), -1, dtype=torch.long, device=device)
    if n == 0:
        return out
    buffers = shared_buffers() if buffers is None else buffers
    # one host sync per call, not per chunk: negative floats need another integer order
    signed = semi and not nonnegative and bool(distances.amin() < 0)
    options = _Pass(margin, offset if semi else None, all_hinge, signed)
    blocks = 2 + int(semi and offset != 0.0)
    crowded = False  # each call finds out again whether its grid cells are crowded
    for rows in chunk_rows(n, max(n_cols, blocks * slots + 2)):
        crowded = _scan_chunk(distances, groups, rows, out, options, buffers, crowded)
    buffers.trim()
    return out


def _scan_chunk(
    distances: Tensor,
    groups: Groups | Relevance,
    rows: slice,
    out: Scan,
    options: _Pass,
    buffers: ChunkBuffers,
    crowded: bool,
) -> bool:
    """Fill ``out`` for one chunk of rows; return whether its grid was crowded."""
    chunk, pos, pos_valid, d_ap, neg_sum = masked_rows(distances, groups, rows, buffers.rows)
    out.pos[rows], out.pos_valid[rows], out.d_ap[rows] = pos, pos_valid, d_ap
    out.sum_d_ap += torch.where(pos_valid, d_ap, 0.0).sum(dtype=torch.float64)  # (no mask: no sync)
    out.sum_d_an += neg_sum
    if out.closest is not None:
        closest_val, closest = chunk.min(1)
        out.closest[rows] = torch.where(torch.isfinite(closest_val), closest, -1)
    if out.farthest is not None:
        far_val, far = torch.where(torch.isinf(chunk), -float("inf"), chunk).max(1)
        out.farthest[rows] = torch.where(torch.isfinite(far_val), far, -1)
    if pos.shape[1] == 0:
        return crowded

    thresholds = Thresholds.of_pairs(d_ap, pos_valid, options.margin, options.offset)
    # Masked (infinite) entries land past every finite threshold, where no finite threshold's
    # count, sum or minimum reads them.
    buckets, crowded = bucketize(
        chunk,
        thresholds.sorted,
        out=buffers.buckets.like(chunk, torch.long),
        scratch=buffers.bucketing,
        crowded=crowded,
    )
    width = thresholds.sorted.shape[1] + 1
    # at_most[:, c] = #{n: D[a,n] <= threshold of column c} = #{n: bucket <= its position}, in
    # integers: exact at any B, and a float cumsum is refused on CUDA under
    # torch.use_deterministic_algorithms(True)
    ones = torch.ones((), dtype=torch.long, device=chunk.device).expand_as(buckets)
    count = torch.zeros(len(chunk), width, dtype=torch.long, device=chunk.device)
    at_most = count.scatter_add_(1, buckets, ones).cumsum(1).gather(1, thresholds.position)

    valid = pos_valid & out.has_neg[rows, None]
    hard = at_most[:, thresholds.columns("hard")]
    active = at_most[:, thresholds.columns("active")]
    out.hard_triplets += (hard * valid).sum(dtype=torch.float64)
    # a hard triplet is never easy, even at margin 0 (where the active ones are inside it)
    out.not_easy_triplets += (torch.maximum(active, hard) * valid).sum(dtype=torch.float64)

    if options.hinge:
        _hinge_sums(chunk, buckets, rows, out, at_most, thresholds, valid, buffers)
    if options.offset is not None:
        assert out.chosen is not None
        found, pick = semi_hard_choice(chunk, buckets, thresholds, options.signed, buffers)
        out.chosen[rows] = torch.where(found & valid, pick, -1)
    return crowded


def _scan_small(
    distances: Tensor,
    groups: Groups | Relevance,
    margin: float,
    strategy: str,
    offset: float,
    fallback: str,
    hinge: bool,
    weights_out: Tensor | None,
) -> Scan:
    """:func:`scan` of a small matrix by direct comparison: for every anchor-positive slot
    (a, p) of every row at once, D[a, n] against d = D[a, p] for every n, in (R, S, C) tensors
    of at most :data:`SMALL_ELEMENTS` entries:

    - hard negatives #{n: D[a,n] <= d}, active ones #{n: D[a,n] < d + m};
    - the semi-hard choice, the closest n with D[a,n] > d + t (``min`` returns the first of
      equals: the smallest column);
    - batch-all's hinge sum over the active negatives, and each negative's weight
      -#{p: D[a,n] < d_ap + m}.

    The same counts, choices and weights as the chunked pass (the sums may round otherwise).
    """
    rows = torch.arange(len(distances), device=distances.device)
    pos, pos_valid = groups.positive_slots(rows)
    negative = groups.negative_mask(rows)
    negatives = groups.negatives
    has_neg = negatives > 0
    d_ap = distances.gather(1, pos)
    inf = torch.full((), float("inf"), dtype=distances.dtype, device=distances.device)
    chunk = torch.where(negative, distances, inf)
    # (R, S, C): each negative against each of its row's positive distances
    entries, below = chunk[:, None, :], d_ap[:, :, None]
    hard = (entries <= below).sum(2)
    under = entries < below + margin  # active: a positive hinge
    active = under.sum(2)
    valid = pos_valid & has_neg[:, None]
    f64 = torch.float64
    out = Scan(
        pos=pos,
        pos_valid=pos_valid,
        d_ap=d_ap,
        has_neg=has_neg,
        # integer sums (exact), then float64 as the chunked pass accumulates them
        valid_triplets=(groups.positives * negatives).sum().to(f64),
        hard_triplets=(hard * valid).sum().to(f64),
        # a hard triplet is never easy, even at margin 0 (where the active ones are inside it)
        not_easy_triplets=(torch.maximum(active, hard) * valid).sum().to(f64),
        sum_d_ap=(d_ap * pos_valid).sum(dtype=f64),
        sum_d_an=(distances * negative).sum(dtype=f64),
        n_ap=groups.positives.sum().to(f64),
        n_an=negatives.sum().to(f64),
    )
    semi = strategy == "semi-hard"
    if strategy == "hard" or (semi and fallback == "hardest"):
        closest = chunk.argmin(1)  # the first of equals
        out.closest = torch.where(has_neg, closest, -1)
    if semi and fallback == "easiest":
        farthest = torch.where(negative, distances, -inf).argmax(1)  # the first of equals
        out.farthest = torch.where(has_neg, farthest, -1)
    if strategy == "all" and hinge:
        out.hinge_count = torch.where(valid, active, 0).to(distances.dtype)
        out.hinge_sum = torch.where(valid, torch.where(under, entries, 0.0).sum(2), 0.0)
        weights = (under & valid[:, :, None]).sum(1).neg_().to(distances.dtype)
        out.neg_weight = weights if weights_out is None else weights_out.copy_(weights)
    if semi:
        limit = below + offset if offset != 0.0 else below
        value, pick = torch.where(entries > limit, entries, inf).min(2)
        out.chosen = torch.where(valid & torch.isfinite(value), pick, -1)
    return out


def masked_rows(
    distances: Tensor, groups: Groups | Relevance, rows: slice, memory: Reusable | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """A copy of some rows of D where only negatives stay finite, with their positives.

    Returns:
        (R, C) rows with +inf at every column that is not a negative (in ``memory``, fresh
        when None); (R, S) positive indices, validity mask and distances D[a, p]; and the
        float64 sum of D over the rows' negatives.
    """
    source = distances[rows]
    target = torch.empty_like(source) if memory is None else memory.like(source)
    chunk = torch.add(source, 0.0, out=target)  # -0.0 becomes +0.0
    index = torch.arange(rows.start, rows.stop, device=distances.device)
    pos, pos_valid = groups.positive_slots(index)
    d_ap = chunk.gather(1, pos)
    total = chunk.sum(1).sum(dtype=torch.float64)
    return chunk, pos, pos_valid, d_ap, total - groups.exclude(chunk, index)


def chunk_rows(n: int, width: int) -> list[slice]:
    """Consecutive row ranges of about ``_CHUNK_ELEMENTS / width`` rows each, of equal size
    (a small last chunk would pay every per-chunk cost for little work)."""
    count = max(1, -(-n * max(width, 1) // _CHUNK_ELEMENTS))
    step = max(1, -(-n // count))
    return [slice(b, min(n, b + step)) for b in range(0, n, step)]


def _hinge_sums(
    chunk: Tensor,
    buckets: Tensor,
    rows: slice,
    out: Scan,
    at_most: Tensor,
    thresholds: Thresholds,
    valid: Tensor,
    buffers: ChunkBuffers,
) -> None:
    """Per pair: count and sum of the negatives under the hinge (D[a,n] < d_ap + m: the
    "active" block); per negative: its pair count."""
    assert out.hinge_count is not None and out.hinge_sum is not None
    assert out.neg_weight is not None
    cols = thresholds.columns("active")
    position = thresholds.position
    # Masked entries add +inf to their own bucket, past every finite threshold: never read.
    sums = torch.zeros(len(chunk), at_most.shape[1] + 1, dtype=chunk.dtype, device=chunk.device)
    below_sum = prefix_sums(sums.scatter_add_(1, buckets, chunk)).gather(1, position)
    out.hinge_count[rows] = torch.where(valid, at_most[:, cols], 0).to(chunk.dtype)
    out.hinge_sum[rows] = torch.where(valid, below_sum[:, cols], 0.0)
    # weight of negative n = -#{valid hinge thresholds >= its bucket} = #{those before} - total.
    is_hinge = torch.zeros_like(at_most)
    is_hinge[:, cols] = valid.long()
    in_order = is_hinge.gather(1, thresholds.order).cumsum(1)
    before = torch.cat([torch.zeros_like(is_hinge[:, :1]), in_order], 1)
    total = is_hinge.sum(1, keepdim=True)
    seen = torch.gather(before, 1, buckets, out=buffers.keys.like(chunk, torch.long))
    torch.sub(seen, total, out=out.neg_weight[rows])


def prefix_sums(x: Tensor) -> Tensor:
    """Running sums along dim 1. Under ``torch.use_deterministic_algorithms(True)`` a float
    ``cumsum`` raises on CUDA, so there (on every device, so that the CPU tests run the same
    code) it is a log-step scan: after the step of shift s, column c holds the sum of columns
    c - 2s + 1 to c, in an order fixed by the shape alone."""
    if not (x.is_floating_point() and torch.are_deterministic_algorithms_enabled()):
        return x.cumsum(1)
    out, shift = x.clone(), 1
    while shift < out.shape[1]:
        out[:, shift:] = out[:, shift:] + out[:, :-shift]  # the right side is a new tensor
        shift *= 2
    return out


def semi_hard_choice(
    chunk: Tensor, buckets: Tensor, thresholds: Thresholds, signed: bool, buffers: ChunkBuffers
) -> tuple[Tensor, Tensor]:
    """FaceNet's semi-hard choice for every pair of a chunk: the closest negative n with
    D[a,n] > d_ap + t, ties to the smallest column.

    With j the sorted position of the pair's "semi" threshold, those negatives are exactly the
    entries in buckets j + 1, j + 2, ... (:class:`Thresholds`): so the closest one is the
    minimum over those buckets, read from each bucket's minimum by a suffix minimum over the
    buckets. float32 takes one reduction over packed (distance, column) keys.

    Args:
        chunk: (R, C) distances, +inf off the negatives.
        buckets: (R, C) each entry's bucket against ``thresholds``.
        signed: some distance is negative.

    Returns:
        (R, S) whether each pair has such a negative, and (R, S) its column.
    """
    first = thresholds.positions("semi") + 1  # the first bucket above the threshold
    width = thresholds.sorted.shape[1] + 1
    if chunk.dtype == torch.float32:
        return _closest_from_packed(chunk, buckets, first, width, signed, buffers)
    return _closest_from(chunk, buckets, first, width, buffers)


def _closest_from(
    chunk: Tensor, buckets: Tensor, first: Tensor, width: int, buffers: ChunkBuffers
) -> tuple[Tensor, Tensor]:
    """Per pair, the closest entry in buckets ``first`` and higher (smallest column among
    ties): whether one exists, and its column."""
    n_rows, n_cols = chunk.shape
    low = torch.full((n_rows, width), float("inf"), dtype=chunk.dtype, device=chunk.device)
    low.scatter_reduce_(1, buckets, chunk, "amin")
    # Per bucket, the smallest column holding its minimum.
    is_low = torch.eq(
        chunk,
        torch.gather(low, 1, buckets, out=buffers.values.like(chunk)),
        out=buffers.flags.like(chunk, torch.bool),
    )
    cols = torch.arange(n_cols, device=chunk.device).expand_as(chunk)
    none = torch.full((), n_cols, device=chunk.device).expand_as(chunk)
    candidates = torch.where(is_low, cols, none, out=buffers.keys.like(chunk, torch.long))
    low_col = torch.full((n_rows, width), n_cols, dtype=torch.long, device=chunk.device)
    low_col.scatter_reduce_(1, buckets, candidates, "amin")
    # Suffix minima over buckets: the closest entry in buckets j, j + 1, ...
    suffix, arg = torch.cummin(low.flip(1), 1)
    suffix, arg = suffix.flip(1), (width - 1 - arg).flip(1)
    return torch.isfinite(suffix.gather(1, first)), low_col.gather(1, arg.gather(1, first))


def _closest_from_packed(
    chunk: Tensor, buckets: Tensor, first: Tensor, width: int, signed: bool, buffers: ChunkBuffers
) -> tuple[Tensor, Tensor]:
    """:func:`_closest_from` for float32 in one reduction: the value's bits (made to order as
    integers) in the high half of an int64 and the column in the low half, so the minimum key
    per bucket is the closest entry with the smallest column among ties."""
    n_rows, n_cols = chunk.shape
    key = buffers.keys.like(chunk, torch.int64).copy_(chunk.view(torch.int32))  # sign-extended
    if signed:  # negative floats order backwards as integers
        key.bitwise_xor_(torch.bitwise_right_shift(key, 31).bitwise_and_(0x7FFFFFFF))
    key.bitwise_left_shift_(32).bitwise_or_(torch.arange(n_cols, device=chunk.device))
    low = torch.full((n_rows, width), torch.iinfo(torch.int64).max, device=chunk.device)
    low.scatter_reduce_(1, buckets, key, "amin")
    # Suffix minima over buckets: the closest entry in buckets j, j + 1, ...
    suffix = torch.cummin(low.flip(1), 1).values.flip(1).gather(1, first)
    return suffix < (0x7F800000 << 32), suffix & 0xFFFFFFFF  # a finite value: not +inf, not empty


def check_mining_options(strategy: str, offset: float, fallback: str) -> None:
    """Raise ValueError naming the argument at fault; warn when ``offset`` or ``fallback`` is
    set for a strategy that ignores it."""
    if strategy not in STRATEGIES:
        raise ValueError(f"mining must be one of {STRATEGIES}, got {strategy!r}")
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    if not is_number(offset) or offset != offset:
        raise ValueError(f"offset must be a number (inf allowed, not NaN), got {offset!r}")
    if strategy != "semi-hard" and (offset != 0 or fallback != "skip"):
        warnings.warn(
            f"offset and fallback apply to mining='semi-hard' only; mining={strategy!r} "
            "ignores them",
            UserWarning,
            stacklevel=3,
        )


def is_number(value: object) -> bool:
    """Whether ``value`` is a real number (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def as_labels(labels: Tensor | Sequence[int] | np.ndarray, n: int, name: str = "labels") -> Tensor:
    """(n,) int64 labels from a tensor, a NumPy array or a sequence of integers.

    Raises:
        ValueError: naming ``name``: not integers, or not of shape (n,).
    """
    if not isinstance(labels, Tensor):
        array = np.asarray(labels)
        if array.size == 0 and array.dtype.kind == "f":  # np.asarray([]) is float64
            array = array.astype(np.int64)
        if array.dtype.kind not in "iu":
            raise ValueError(f"{name} must be integers, got {array.dtype} values")
        labels = torch.as_tensor(array)
    if labels.dtype in (torch.bool, torch.complex64, torch.complex128) or (
        labels.is_floating_point()
    ):
        raise ValueError(f"{name} must be an integer tensor, got dtype {labels.dtype}")
    if labels.dim() != 1 or len(labels) != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(labels.shape)}")
    return labels.to(torch.long)


def check_finite(distances: Tensor, hint: Callable[[], str] | None = None) -> None:
    """Raise ValueError naming the first row of ``distances`` with a NaN or infinite value,
    with ``hint()`` (computed only then) after it.

    One reduction over the matrix (min and max together) and one host sync per call.
    """
    if not distances.numel():
        return
    low, high = torch.aminmax(distances)
    if bool(torch.isfinite(low) & torch.isfinite(high)):
        return
    bad = ~torch.isfinite(distances)
    row = int(torch.nonzero(bad.any(1))[0])
    col = int(torch.nonzero(bad[row])[0])
    raise ValueError(
        f"distances are not finite: row {row}, column {col} is {float(distances[row, col])}"
        + (f" ({hint()})" if hint is not None else "")
    )


def select(result: Scan, strategy: str, fallback: str = "skip") -> Triplets:
    """The triplets of ``strategy`` ("hard" or "semi-hard") from a :class:`Scan`."""
    if strategy == "hard":
        assert result.closest is not None
        if result.pos.shape[1] == 0:
            empty = result.pos.new_zeros(0)
            return Triplets(empty, empty, empty)
        usable = result.pos_valid.any(1) & result.has_neg
        masked = torch.where(result.pos_valid, result.d_ap, -float("inf"))
        hardest_pos = result.pos.gather(1, masked.argmax(1, keepdim=True)).squeeze(1)
        anchors = torch.nonzero(usable).squeeze(1)
        return Triplets(anchors, hardest_pos[anchors], result.closest[anchors])
    if strategy != "semi-hard":
        raise ValueError(f"select() takes 'hard' or 'semi-hard', got {strategy!r}")
    assert result.chosen is not None
    pairs = result.pos_valid & result.has_neg[:, None]
    chosen = result.chosen
    missing = pairs & (chosen < 0)
    if fallback == "hardest":
        assert result.closest is not None
        chosen = torch.where(missing, result.closest[:, None], chosen)
    elif fallback == "easiest":
        assert result.farthest is not None
        chosen = torch.where(missing, result.farthest[:, None], chosen)
    keep = pairs & (chosen >= 0)
    anchor, slot = torch.nonzero(keep, as_tuple=True)
    dropped = int(missing.sum()) if fallback == "skip" else 0
    return Triplets(anchor, result.pos[anchor, slot], chosen[anchor, slot], dropped)


def all_triplets(structure: Groups | Relevance) -> Triplets:
    """Every valid triplet, enumerated. Memory O(number of triplets): for inspection and small
    batches only; the loss never lists them."""
    n = len(structure.positives)
    rows = torch.arange(n, device=structure.positives.device)
    pos, pos_valid = structure.positive_slots(rows)
    anchor, slot = torch.nonzero(pos_valid, as_tuple=True)
    negatives = structure.negative_mask(anchor)
    t, neg = torch.nonzero(negatives, as_tuple=True)
    return Triplets(anchor[t], pos[anchor, slot][t], neg)


def mine(
    distances: Tensor,
    labels: Tensor | None = None,
    strategy: str = "semi-hard",
    *,
    relevant: Tensor | None = None,
    candidate_labels: Tensor | Sequence[int] | np.ndarray | None = None,
    offset: float = 0.0,
    fallback: str = "skip",
) -> Triplets:
    """Select triplets from a distance matrix.

    Args:
        distances: (B, B) distances between examples with ``labels``, (A, C) distances between
            anchors with ``labels`` and candidates with ``candidate_labels``, or (Q, D)
            distances between queries and documents with ``relevant`` (any dissimilarity; only
            its order matters).
        labels: (B,) integer labels (a tensor, NumPy array or list).
        strategy: "all", "hard" or "semi-hard" (see the module docstring).
        relevant: (Q, D) bool, instead of labels: relevant[q, d] makes d a positive of q, and
            never a negative.
        candidate_labels: (C,) labels of the columns of an (A, C) anchors x candidates matrix
            (two embedding sets), with ``labels`` those of the rows: a column is a positive of
            the rows that share its label (none is left out as the row itself).
        offset: semi-hard offset t: negatives must satisfy D[a,n] > D[a,p] + t.
        fallback: semi-hard, when no negative qualifies: "skip", "hardest" or "easiest".

    Returns:
        :class:`Triplets`, sorted by (anchor, positive). "all" lists every valid triplet, which
        takes memory in their number; :func:`tripletkit.triplet_loss` never does.

    Raises:
        ValueError: naming the argument at fault: bad shapes, labels that are not integers, a
            NaN or infinite distance (its row and column).
    """
    check_mining_options(strategy, offset, fallback)
    if not isinstance(distances, Tensor) or distances.dim() != 2:
        shape = tuple(distances.shape) if isinstance(distances, Tensor) else type(distances)
        raise ValueError(f"distances must be a 2-D tensor, got {shape}")
    if not distances.is_floating_point():
        raise ValueError(f"distances must be floating point, got dtype {distances.dtype}")
    structure: Groups | Relevance
    if relevant is not None and labels is None:
        if not isinstance(relevant, Tensor) or relevant.shape != distances.shape:
            shape = tuple(relevant.shape) if isinstance(relevant, Tensor) else type(relevant)
            raise ValueError(
                f"relevant must have the shape of distances {tuple(distances.shape)}, got {shape}"
            )
        structure = Relevance.from_mask(relevant.bool().to(distances.device))
    elif labels is not None and relevant is None and candidate_labels is not None:
        rows = as_labels(labels, distances.shape[0]).to(distances.device)
        cols = as_labels(candidate_labels, distances.shape[1], "candidate_labels")
        structure = Relevance.from_labels(rows, cols.to(distances.device))
    elif labels is not None and relevant is None:
        if distances.shape[0] != distances.shape[1]:
            raise ValueError(
                f"distances with labels must be square (B, B), got {tuple(distances.shape)}; "
                "use relevant= for queries x documents"
            )
        structure = label_groups(as_labels(labels, len(distances)).to(distances.device))
    else:
        raise ValueError("give labels (with candidate_labels for two sets) or relevant, not both")
    check_finite(distances)
    with torch.no_grad():
        if strategy == "all":
            return all_triplets(structure)
        result = scan(
            distances, structure, margin=0.0, strategy=strategy, offset=offset, fallback=fallback
        )
        return select(result, strategy, fallback)
