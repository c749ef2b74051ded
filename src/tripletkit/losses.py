"""The triplet loss: distances + in-batch mining + hinge or soft margin + reduction, with stats.

For a selected triplet (a, p, n) with distances d_ap = D[a,p] and d_an = D[a,n]:

- hinge (FaceNet): l = [d_ap - d_an + margin]_+ , *active* when d_an < d_ap + margin;
- soft margin (Hermans et al. 2017): l = log(1 + exp(d_ap - d_an)), computed stably; the margin
  is not used and every selected triplet counts as active.

Reductions: "mean" over the selected triplets, "mean_active" over the active ones (Hermans'
BA!=0), "sum" (the paper's formula). A batch without a valid triplet gives a zero loss whose
gradient is zero. The loss has the embeddings' dtype, except for float16 and bfloat16
embeddings: those are mined and reduced in float32 and the loss stays float32 (a sum over many
triplets overflows float16), while their gradient comes back in their own dtype.

Embeddings must be finite, and so must their distances: embeddings so large (about 1e19 in
float32) that a squared distance overflows are a ValueError, not a silent zero. So is a result
that finite distances cannot give, checked on the loss itself: one that overflows (inf, or NaN
from the gradient's surrogate: distances near 1e38 in float32 are finite, their sum is not), and
a hinge loss below zero (beyond the rounding of its sums), which a hinge never is.

The loss never builds a (B, B, B) tensor or a list of all triplets: selection runs without
gradient on the distance matrix (see :mod:`tripletkit.mining`), and since the loss is a weighted
sum of distances, its gradient flows back through
:func:`tripletkit.distances.distance_gradient_surrogate`: row gathers for few pairs, else one
(B, B) x (B, d) product in the backward (two for queries x documents). Memory is O(B^2) for
every strategy, and the distance matrix's own buffer is reused for the gradient's weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .distances import check_distance, distance_gradient_surrogate, pairwise_distances
from .mining import (
    Groups,
    Relevance,
    Scan,
    Triplets,
    as_labels,
    check_finite,
    check_mining_options,
    chunk_rows,
    is_number,
    label_groups,
    masked_rows,
    scan,
    select,
    shared_buffers,
)

REDUCTIONS = ("mean", "mean_active", "sum")


@dataclass(frozen=True)
class TripletStats:
    """What one batch's mining found; plain floats, detached.

    Attributes:
        triplets: selected triplets (for "all", every valid triplet).
        active_fraction: share of the selected triplets with a positive loss.
        valid_triplets: every valid triplet in the batch; 0 means the loss is an empty zero.
        easy_fraction: share of valid triplets with zero hinge loss that are not hard:
            d_an >= d_ap + margin (and d_an > d_ap).
        semihard_fraction: share with d_ap < d_an < d_ap + margin (a positive loss).
        hard_fraction: share with d_an <= d_ap.
        The three shares add up to 1; a triplet at exactly d_an = d_ap + margin is easy.
        mean_d_ap: mean distance over all anchor-positive pairs (NaN when there are none).
        mean_d_an: mean distance over all anchor-negative pairs (NaN when there are none).
        dropped_pairs: semi-hard pairs dropped because no negative qualified.
    """

    triplets: int
    active_fraction: float
    valid_triplets: int
    easy_fraction: float
    semihard_fraction: float
    hard_fraction: float
    mean_d_ap: float
    mean_d_an: float
    dropped_pairs: int

    def as_dict(self) -> dict[str, float]:
        """The statistics as a flat dict, for logs."""
        return {k: float(v) for k, v in asdict(self).items()}


@dataclass
class _Terms:
    """A loss that is a weighted sum of distances: its value and d(value)/d(distance)."""

    value: Tensor
    selected: int
    active: int
    pairs: tuple[Tensor, Tensor, Tensor, Tensor]
    dense: tuple[Tensor, Tensor] | None = None
    dropped: int = 0
    # batch-all hinge: the positive part the value is a difference from (None: no term of
    # the value is negative)
    scale: Tensor | None = None


def triplet_loss(
    embeddings: Tensor,
    labels: Tensor | Sequence[int] | np.ndarray,
    *,
    margin: float = 0.2,
    mining: str = "semi-hard",
    offset: float = 0.0,
    fallback: str = "skip",
    distance: str = "squared",
    soft: bool = False,
    reduction: str = "mean",
) -> tuple[Tensor, TripletStats]:
    """Triplet loss with in-batch mining.

    Args:
        embeddings: (B, d) embeddings (FaceNet L2-normalises them; this function does not).
        labels: (B,) integer identity labels.
        margin: alpha in [d_ap - d_an + alpha]_+ ; also the easy / semi-hard boundary of the stats.
        mining: "all", "hard" or "semi-hard" (see :mod:`tripletkit.mining`).
        offset: semi-hard offset t; negatives must satisfy d_an > d_ap + t.
        fallback: semi-hard, when no negative qualifies: "skip", "hardest" or "easiest".
        distance: "squared" (FaceNet), "euclidean" or "cosine".
        soft: use the soft margin log(1 + exp(d_ap - d_an)) instead of the hinge.
        reduction: "mean", "mean_active" or "sum".

    Returns:
        The 0-d loss (float32 for half-precision embeddings) and a :class:`TripletStats`.

    Raises:
        ValueError: naming the argument at fault; also when embeddings are so large that their
            distances overflow, or the loss does (see the module docstring).
    """
    check_loss_options(margin, mining, offset, fallback, distance, soft, reduction)
    labels = check_batch(embeddings, labels)
    x = _as_float(embeddings)
    options = _Options(float(margin), mining, float(offset), fallback, distance, soft, reduction)
    with _full_precision(x):
        with torch.no_grad():
            dist = pairwise_distances(x.detach(), distance=distance)
            check_finite(dist, lambda: _too_large(x))
            structure = label_groups(labels)
        loss, stats = _loss(x, None, dist, structure, options)
    return loss, stats


def _too_large(*xs: Tensor) -> str:
    """The hint of a non-finite distance between finite embeddings."""
    largest = max(float(x.detach().abs().max()) if x.numel() else 0.0 for x in xs)
    return f"embeddings too large for {xs[0].dtype}? largest |x| = {largest:.3g}"


def relevance_triplet_loss(
    queries: Tensor,
    documents: Tensor,
    relevant: Tensor,
    *,
    margin: float = 0.2,
    mining: str = "semi-hard",
    offset: float = 0.0,
    fallback: str = "skip",
    distance: str = "squared",
    soft: bool = False,
    reduction: str = "mean",
) -> tuple[Tensor, TripletStats]:
    """Triplet loss between queries (anchors) and documents (positives and negatives), where a
    document may be relevant to several queries: semantic search.

    A triplet (q, p, n) has relevant[q, p] and not relevant[q, n], so a document relevant to q
    (its own positive, another query's positive that also answers q, a second copy of either)
    is never a negative of q. Options and statistics as in :func:`triplet_loss`.

    Args:
        queries: (Q, d) query embeddings.
        documents: (D, d) document embeddings (every positive and mined negative in the batch).
        relevant: (Q, D) bool: relevant[q, j] when document j answers query q.

    Returns:
        The 0-d loss and a :class:`TripletStats`.
    """
    check_loss_options(margin, mining, offset, fallback, distance, soft, reduction)
    _check_pair(queries, documents, "queries", "documents")
    if (
        not isinstance(relevant, Tensor)
        or relevant.dtype != torch.bool
        or tuple(relevant.shape) != (len(queries), len(documents))
    ):
        shape = tuple(relevant.shape) if isinstance(relevant, Tensor) else type(relevant).__name__
        raise ValueError(
            f"relevant must be a bool tensor of shape ({len(queries)}, "
            f"{len(documents)}), got {shape}"
        )
    options = _Options(float(margin), mining, float(offset), fallback, distance, soft, reduction)
    mask = relevant.to(queries.device)
    return _rectangular(queries, documents, lambda: Relevance.from_mask(mask), options)


def cross_triplet_loss(
    anchors: Tensor,
    labels: Tensor | Sequence[int] | np.ndarray,
    candidates: Tensor,
    candidate_labels: Tensor | Sequence[int] | np.ndarray,
    *,
    margin: float = 0.2,
    mining: str = "semi-hard",
    offset: float = 0.0,
    fallback: str = "skip",
    distance: str = "squared",
    soft: bool = False,
    reduction: str = "mean",
) -> tuple[Tensor, TripletStats]:
    """Triplet loss between two embedding sets: anchors on one side, positives and negatives
    on the other (query-side against gallery-side embeddings, a student's against a teacher's).

    A triplet (a, p, n) has labels[a] == candidate_labels[p] and labels[a] !=
    candidate_labels[n]; the (A, C) distance matrix between the sets is mined like a square
    one (see :mod:`tripletkit.mining`), with no diagonal to leave out: a candidate that is the
    anchor's own example seen otherwise (the same face through another camera) is a positive.
    Options and statistics as in :func:`triplet_loss`; either set may carry gradient (a
    frozen teacher's embeddings need not).

    Args:
        anchors: (A, d) embeddings.
        labels: (A,) integer labels of the anchors.
        candidates: (C, d) embeddings of the other side.
        candidate_labels: (C,) integer labels of the candidates.

    Returns:
        The 0-d loss and a :class:`TripletStats`.
    """
    check_loss_options(margin, mining, offset, fallback, distance, soft, reduction)
    _check_pair(anchors, candidates, "anchors", "candidates")
    rows = check_batch(anchors, labels)
    cols = as_labels(candidate_labels, len(candidates), "candidate_labels").to(rows.device)
    options = _Options(float(margin), mining, float(offset), fallback, distance, soft, reduction)
    return _rectangular(anchors, candidates, lambda: Relevance.from_labels(rows, cols), options)


def _check_pair(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    """Two embedding sets of one dimension, dtype and device."""
    check_embeddings(a, name_a)
    check_embeddings(b, name_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same dimension, got {a.shape[1]} and {b.shape[1]}"
        )
    if a.dtype != b.dtype or a.device != b.device:
        raise ValueError(
            f"{name_a} and {name_b} must have the same dtype and device, got "
            f"{a.dtype} on {a.device} and {b.dtype} on {b.device}"
        )


def _rectangular(
    rows: Tensor, cols: Tensor, structure: Callable[[], Relevance], options: _Options
) -> tuple[Tensor, TripletStats]:
    """The loss over the (R, C) distances between ``rows`` and ``cols``."""
    q, d = _as_float(rows), _as_float(cols)
    with _full_precision(q):
        with torch.no_grad():
            dist = pairwise_distances(q.detach(), d.detach(), distance=options.distance)
            check_finite(dist, lambda: _too_large(q, d))
            relevance = structure()
        loss, stats = _loss(q, d, dist, relevance, options)
    return loss, stats


@dataclass(frozen=True)
class _Options:
    margin: float
    mining: str
    offset: float
    fallback: str
    distance: str
    soft: bool
    reduction: str


def _as_float(x: Tensor) -> Tensor:
    """Half-precision embeddings are mined and reduced in float32."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _full_precision(x: Tensor) -> torch.autocast:
    """Autocast off: under mixed precision the distances would be bfloat16 (about 0.016 apart
    near 2), too coarse to tell a semi-hard negative from a hard one at margin 0.2."""
    return torch.autocast(x.device.type, enabled=False)


def _loss(
    x: Tensor, y: Tensor | None, dist: Tensor, structure: Groups | Relevance, o: _Options
) -> tuple[Tensor, TripletStats]:
    """The loss over the distance matrix ``dist`` between ``x`` and ``y`` (x itself if None)."""
    # Batch-all's negative weights take the distance matrix's memory where the gradient does
    # not need the distances again (the euclidean chain rule does).
    in_place = o.mining == "all" and not o.soft and o.distance != "euclidean"
    with torch.no_grad():
        found = scan(
            dist,
            structure,
            margin=o.margin,
            strategy=o.mining,
            offset=o.offset,
            fallback=o.fallback,
            hinge=not o.soft,
            weights_out=dist if in_place else None,
            nonnegative=True,  # every distance of pairwise_distances is >= 0
        )
        if o.mining == "all":
            terms = (
                _soft_all_terms(dist, structure) if o.soft else _all_terms(dist, found, o.margin)
            )
        else:
            terms = _listed_terms(dist, select(found, o.mining, o.fallback), o.margin, o.soft)
    divisor = {"mean": terms.selected, "mean_active": terms.active, "sum": 1}[o.reduction]
    tracked = torch.is_grad_enabled() and (x.requires_grad or (y is not None and y.requires_grad))
    if terms.selected == 0 or divisor == 0:
        loss = x.sum() * 0.0 + (0.0 if y is None else y.sum() * 0.0)
    elif not tracked:  # no gradient wanted: no surrogate to build
        loss = terms.value.to(x.dtype) / divisor
    else:
        # the distance matrix is spent: its memory takes the gradient's weights
        surrogate = distance_gradient_surrogate(
            x, o.distance, terms.pairs, terms.dense, y, scratch=None if in_place else dist
        )
        loss = (terms.value.to(x.dtype) + surrogate - surrogate.detach()) / divisor
    values = _host_values(found, terms, loss)
    _check_result(values, o, dist, lambda: _too_large(x) if y is None else _too_large(x, y))
    return loss, _stats(values, terms)


class TripletLoss(nn.Module):
    """:func:`triplet_loss` with its options held; ``forward`` returns (loss, stats), and
    :meth:`relevance` the query x document variant.

    A :class:`tripletkit.Curriculum` moves ``margin`` and ``offset`` by passing its values to
    each call (``loss_fn(x, y, **curriculum.at(step))``); the held options never change.
    """

    def __init__(
        self,
        margin: float = 0.2,
        mining: str = "semi-hard",
        offset: float = 0.0,
        fallback: str = "skip",
        distance: str = "squared",
        soft: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        check_loss_options(margin, mining, offset, fallback, distance, soft, reduction)
        self.margin = margin
        self.mining = mining
        self.offset = offset
        self.fallback = fallback
        self.distance = distance
        self.soft = soft
        self.reduction = reduction

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        *,
        margin: float | None = None,
        offset: float | None = None,
    ) -> tuple[Tensor, TripletStats]:
        """:func:`triplet_loss` with these options; ``margin`` and ``offset``, when given,
        replace the held ones for this call (a :class:`tripletkit.Curriculum`'s values)."""
        return triplet_loss(embeddings, labels, **self._options(margin, offset))

    def relevance(
        self,
        queries: Tensor,
        documents: Tensor,
        relevant: Tensor,
        *,
        margin: float | None = None,
        offset: float | None = None,
    ) -> tuple[Tensor, TripletStats]:
        """:func:`relevance_triplet_loss` with these options (``margin`` and ``offset`` as in
        :meth:`forward`)."""
        return relevance_triplet_loss(queries, documents, relevant, **self._options(margin, offset))

    def cross(
        self,
        anchors: Tensor,
        labels: Tensor,
        candidates: Tensor,
        candidate_labels: Tensor,
        *,
        margin: float | None = None,
        offset: float | None = None,
    ) -> tuple[Tensor, TripletStats]:
        """:func:`cross_triplet_loss` with these options (``margin`` and ``offset`` as in
        :meth:`forward`)."""
        options = self._options(margin, offset)
        return cross_triplet_loss(anchors, labels, candidates, candidate_labels, **options)

    def _options(self, margin: float | None, offset: float | None) -> dict[str, Any]:
        """The held options, with this call's ``margin`` and ``offset`` where given."""
        return {
            "margin": self.margin if margin is None else margin,
            "mining": self.mining,
            "offset": self.offset if offset is None else offset,
            "fallback": self.fallback,
            "distance": self.distance,
            "soft": self.soft,
            "reduction": self.reduction,
        }

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, mining={self.mining!r}, offset={self.offset}, "
            f"fallback={self.fallback!r}, distance={self.distance!r}, soft={self.soft}, "
            f"reduction={self.reduction!r}"
        )


def _listed_terms(dist: Tensor, triplets: Triplets, margin: float, soft: bool) -> _Terms:
    """Terms of a loss over an explicit list of triplets."""
    a, p, n = triplets.anchor, triplets.positive, triplets.negative
    d_ap, d_an = dist[a, p], dist[a, n]
    if soft:
        z = d_ap - d_an
        per, weight = nn.functional.softplus(z), torch.sigmoid(z)
        active = len(triplets)
    else:
        hit = d_an < d_ap + margin
        per = torch.where(hit, (d_ap + margin) - d_an, 0.0)
        weight, active = hit.to(dist.dtype), int(hit.sum())
    pairs = (
        torch.cat([a, a]),
        torch.cat([p, n]),
        torch.cat([weight, -weight]),
        torch.cat([d_ap, d_an]),
    )
    return _Terms(
        per.sum(dtype=torch.float64), len(triplets), active, pairs, dropped=triplets.dropped
    )


def _all_terms(dist: Tensor, found: Scan, margin: float) -> _Terms:
    """Terms of the batch-all hinge loss from the scan's per-pair counts and sums:
    sum_{a,p} sum_{n active} (d_ap + m - d_an) = sum_{a,p} count_ap (d_ap + m) - sum_ap."""
    assert found.hinge_count is not None and found.hinge_sum is not None
    assert found.neg_weight is not None
    valid = found.pos_valid & found.has_neg[:, None]
    anchor, slot = torch.nonzero(valid, as_tuple=True)
    count = found.hinge_count[anchor, slot]
    d_ap = found.d_ap[anchor, slot]
    scale = (count.double() * (d_ap + margin).double()).sum()
    value = scale - found.hinge_sum[valid].double().sum()
    pairs = (anchor, found.pos[anchor, slot], count, d_ap)
    return _Terms(
        value,
        int(found.valid_triplets),
        int(count.sum()),
        pairs,
        dense=(found.neg_weight, dist),  # dist is read for "euclidean" only
        scale=scale,
    )


def _soft_all_terms(dist: Tensor, groups: Groups | Relevance) -> _Terms:
    """Terms of the batch-all soft-margin loss: O(B^2 k) time, O(B^2) memory."""
    n = len(dist)
    value = torch.zeros((), dtype=torch.float64, device=dist.device)
    neg_weight = torch.zeros_like(dist)
    anchors, positives, weights, d_aps = [], [], [], []
    memory = shared_buffers().rows
    for rows in chunk_rows(n, dist.shape[1]):
        chunk, pos, pos_valid, d_ap, _ = masked_rows(dist, groups, rows, memory)
        pos_weight = torch.zeros_like(d_ap)
        for j in range(pos.shape[1]):
            z = torch.where(pos_valid[:, j : j + 1], d_ap[:, j : j + 1], -float("inf")) - chunk
            value += nn.functional.softplus(z).sum(dtype=torch.float64)
            sig = torch.sigmoid(z)
            pos_weight[:, j] = sig.sum(1)
            neg_weight[rows] -= sig
        keep = pos_valid & (groups.negatives[rows, None] > 0)
        r, s = torch.nonzero(keep, as_tuple=True)
        anchors.append(r + rows.start)
        positives.append(pos[r, s])
        weights.append(pos_weight[r, s])
        d_aps.append(d_ap[r, s])
    selected = int((groups.positives * groups.negatives).sum())
    if not anchors:  # an empty batch has no chunk
        anchors = positives = [dist.new_zeros(0, dtype=torch.long)]
        weights = d_aps = [dist.new_zeros(0)]
    pairs = (torch.cat(anchors), torch.cat(positives), torch.cat(weights), torch.cat(d_aps))
    return _Terms(value, selected, selected, pairs, dense=(neg_weight, dist))


@dataclass(frozen=True)
class _HostValues:
    """What the statistics and the result's check read, copied to the host at once."""

    valid: float
    hard: float
    not_easy: float
    n_ap: float
    n_an: float
    sum_d_ap: float
    sum_d_an: float
    loss: float  # the returned loss's value
    value: float  # the unreduced sum of terms
    scale: float  # the positive part it is a difference from (the value itself, if none)


def _host_values(found: Scan, terms: _Terms, loss: Tensor) -> _HostValues:
    """The scan's totals and the result's values, in one copy to the host."""
    value = terms.value.detach().double()
    totals = (
        found.valid_triplets,
        found.hard_triplets,
        found.not_easy_triplets,
        found.n_ap,
        found.n_an,
        found.sum_d_ap,
        found.sum_d_an,
        loss.detach().double(),
        value,
        value if terms.scale is None else terms.scale.double(),
    )
    return _HostValues(*torch.stack(totals).tolist())


def _check_result(values: _HostValues, o: _Options, dist: Tensor, hint: Callable[[], str]) -> None:
    """Raise ValueError when the loss is one that finite distances cannot give: not finite
    (its sums overflow), or a hinge below zero beyond the rounding of its sums."""
    if not (math.isfinite(values.loss) and math.isfinite(values.value)):
        kind = "soft-margin" if o.soft else "hinge"
        raise ValueError(
            f"the {o.mining!r} {kind} loss overflows {dist.dtype} although the distances are "
            f"finite: its terms sum to {values.value:.3g}, the loss comes to {values.loss} "
            f"({hint()})"
        )
    # batch-all's value is a difference of sums, each rounded by at most about n eps of it
    rounding = dist.shape[1] * torch.finfo(dist.dtype).eps * abs(values.scale)
    if values.value < -rounding:
        raise ValueError(
            f"the {o.mining!r} hinge loss is {values.value:.3g}, below zero, which a hinge "
            f"never is: its sums lost their precision in {dist.dtype} ({hint()})"
        )


def _stats(host: _HostValues, terms: _Terms) -> TripletStats:
    valid, hard, not_easy = host.valid, host.hard, host.not_easy
    n_ap, n_an, sum_d_ap, sum_d_an = host.n_ap, host.n_an, host.sum_d_ap, host.sum_d_an
    share = (lambda k: k / valid) if valid else (lambda k: 0.0)
    return TripletStats(
        triplets=terms.selected,
        active_fraction=terms.active / terms.selected if terms.selected else 0.0,
        valid_triplets=int(valid),
        easy_fraction=share(valid - not_easy),
        semihard_fraction=share(not_easy - hard),
        hard_fraction=share(hard),
        mean_d_ap=sum_d_ap / n_ap if n_ap else math.nan,
        mean_d_an=sum_d_an / n_an if n_an else math.nan,
        dropped_pairs=terms.dropped,
    )


def check_loss_options(
    margin: float,
    mining: str,
    offset: float,
    fallback: str,
    distance: str,
    soft: bool,
    reduction: str,
) -> None:
    """Raise ValueError naming the option at fault."""
    if not is_number(margin) or not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    check_mining_options(mining, offset, fallback)
    check_distance(distance)
    if not isinstance(soft, bool):
        raise ValueError(f"soft must be True or False, got {soft!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_embeddings(x: Tensor, name: str) -> None:
    """Raise ValueError naming ``name`` unless ``x`` is a finite 2-D float tensor."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (batch, dim), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {x.dtype}")
    # a NaN or an infinity anywhere makes the sum NaN or infinite; so may an overflow of finite
    # values, which the row check then clears
    if bool(torch.isfinite(x.detach().sum())):
        return
    finite = torch.isfinite(x.detach()).all(1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).squeeze(1)[:5].tolist()
        raise ValueError(f"{name} contain NaN or infinite values (rows {bad} ...)")


def check_batch(embeddings: Tensor, labels: Tensor | Sequence[int] | np.ndarray) -> Tensor:
    """Check a batch and return the labels as an int64 tensor on the embeddings' device.

    Raises:
        ValueError: embeddings not a finite 2-D float tensor; labels not integers of length B.
    """
    check_embeddings(embeddings, "embeddings")
    return as_labels(labels, len(embeddings)).to(embeddings.device)
