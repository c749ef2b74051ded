"""Property-based tests of the core (hypothesis): bucketing, mining and the loss against the
loop oracles of tests/reference.py, on inputs of any scale (1e-30 to 1e19, duplicates, NaN,
inf), labels of any integer dtype and layout, and every option combination; invalid input
must be a clear ValueError.
"""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tripletkit._bucketing as bucketing
import tripletkit.distances as distances
from reference import loop_loss, loop_mine
from tripletkit import mine, pairwise_distances, triplet_loss
from tripletkit.mining import FALLBACKS, STRATEGIES

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LABEL_DTYPES = ["list", "int8", "int16", "int32", "int64", "uint8", "np_int8", "np_uint16"]
LABEL_DTYPES += ["np_int32", "np_int64", "np_uint64"]


def _labels(values: list[int], kind: str):
    """``values`` (0..200) in the container and dtype ``kind``; int8 ones shifted by -100 (the
    same layout)."""
    if kind.endswith("int8") and not kind.endswith("uint8"):
        values = [v - 100 for v in values]
    if kind == "list":
        return values
    if kind.startswith("np_"):
        return np.array(values, dtype=kind.removeprefix("np_"))
    return torch.tensor(values, dtype=getattr(torch, kind))


@st.composite
def label_lists(draw, n: int) -> list[int]:
    """Labels 0..200 of any layout: singletons, one class, all distinct, a few classes."""
    layout = draw(st.sampled_from(["few", "one", "distinct", "any"]))
    if layout == "one":
        return [draw(st.integers(0, 200))] * n
    if layout == "distinct":
        return draw(st.lists(st.integers(0, 200), min_size=n, max_size=n, unique=True))
    top = 2 if layout == "few" else 200
    return draw(st.lists(st.integers(0, top), min_size=n, max_size=n))


@st.composite
def embeddings(draw) -> torch.Tensor:
    """(B, d) embeddings at a scale from 1e-30 to 1e19, with duplicate rows, sometimes NaN
    or inf."""
    n = draw(st.integers(0, 9))
    dim = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**16))
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if n > 1 and draw(st.booleans()):  # duplicates
        x[draw(st.integers(0, n - 1))] = x[0]
    x = (x * 10.0 ** draw(st.integers(-30, 19))).to(dtype)
    if n and draw(st.integers(0, 9)) == 0:
        x[draw(st.integers(0, n - 1)), 0] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    return x


@st.composite
def loss_options(draw) -> dict:
    mining = draw(st.sampled_from(STRATEGIES))
    options = dict(
        mining=mining,
        margin=draw(st.sampled_from([0.0, 0.2, 1.0])),
        distance=draw(st.sampled_from(["squared", "euclidean", "cosine"])),
        soft=draw(st.booleans()),
        reduction=draw(st.sampled_from(["mean", "mean_active", "sum"])),
    )
    if mining == "semi-hard":
        options["offset"] = draw(st.sampled_from([0.0, 0.1, -0.3, 2.0, math.inf, -math.inf]))
        options["fallback"] = draw(st.sampled_from(FALLBACKS))
    return options


def _paths(path: str):
    """The bucketing path ("compare" or "grid") and gradient path ("sparse" or "dense")."""
    compare, gradient = path.split("-")
    return (
        mock.patch.object(
            bucketing, "COMPARE_MAX_THRESHOLDS", 10**6 if compare == "compare" else 0
        ),
        mock.patch.object(distances, "SPARSE_PAIRS_DIVISOR", 0 if gradient == "sparse" else 10**9),
    )


PATHS = st.sampled_from(["compare-sparse", "compare-dense", "grid-sparse", "grid-dense"])


@SETTINGS
@given(x=embeddings(), data=st.data(), options=loss_options(), path=PATHS)
def test_loss_matches_oracle_or_refuses(x, data, options, path):
    values = data.draw(label_lists(len(x)))
    labels = _labels(values, data.draw(st.sampled_from(LABEL_DTYPES)))
    compare, gradient = _paths(path)
    ours = x.clone().requires_grad_()
    if not torch.isfinite(x).all():
        with pytest.raises(ValueError, match="embeddings contain NaN or infinite"):
            triplet_loss(ours, labels, **options)
        return
    with torch.no_grad():
        finite = bool(torch.isfinite(pairwise_distances(x, distance=options["distance"])).all())
    with compare, gradient:
        if not finite:
            with pytest.raises(ValueError, match="distances are not finite.*embeddings too"):
                triplet_loss(ours, labels, **options)
            return
        try:
            loss, stats = triplet_loss(ours, labels, **options)
        except ValueError as err:
            # finite distances whose loss overflows: refused only where the oracle overflows
            if "although the distances are finite" not in str(err):
                raise
            assert not torch.isfinite(loop_loss(x.clone(), values, **options)[0]), err
            return
        loss.backward()
    ref = x.clone().requires_grad_()
    ref_loss, ref_stats = loop_loss(ref, values, **options)
    # Known, left: below norm 1e-12 torch's normalize stops dividing by the norm, and the sparse
    # cosine gradient (which assumes unit vectors) parts from autograd's; values still agree.
    tiny = options["distance"] == "cosine" and bool((x.norm(dim=1) < 1e-11).any())
    ref_loss.backward()
    rtol = 1e-4 if x.dtype == torch.float32 else 1e-9
    torch.testing.assert_close(loss.detach(), ref_loss.detach(), rtol=rtol, atol=0.0)
    got = stats.as_dict()
    for key in ("triplets", "valid_triplets", "dropped_pairs"):
        assert got[key] == ref_stats[key], key
    for key in ("active_fraction", "easy_fraction", "semihard_fraction", "hard_fraction"):
        assert got[key] == pytest.approx(ref_stats[key], abs=1e-9), key
    assert torch.isfinite(ours.grad).all()
    # two formulas of one gradient: compare relative to the size a gradient has here, the
    # distances' size over the embeddings' (a true gradient of 0 comes back as rounding)
    with torch.no_grad():
        dmax = (
            float(
                pairwise_distances(x, distance=options["distance"]).max(),
            )
            if len(x)
            else 0
        )
    xmax = float(x.abs().max()) if x.numel() else 0.0
    scale = max(float(ref.grad.abs().max()) if ref.grad.numel() else 0.0, dmax / max(xmax, 1e-300))
    grad_tol = (1e-3 if x.dtype == torch.float32 else 1e-7) * max(scale, 1e-300)
    if not tiny:
        torch.testing.assert_close(ours.grad, ref.grad, rtol=0.0, atol=grad_tol)


@st.composite
def distance_matrices(draw) -> torch.Tensor:
    """(B, B) dissimilarities of any sign and scale, with ties, sometimes NaN or inf."""
    n = draw(st.integers(1, 12))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    d = torch.rand(n, n, generator=gen, dtype=torch.float64)
    if draw(st.booleans()):  # ties
        d = (d * 3).round()
    if draw(st.booleans()):  # any dissimilarity: negative values too
        d = d - 0.5
    d = (d * 10.0 ** draw(st.integers(-30, 30))).to(dtype)
    if draw(st.integers(0, 7)) == 0:
        d[draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))] = draw(
            st.sampled_from([math.nan, math.inf, -math.inf])
        )
    return d


@SETTINGS
@given(d=distance_matrices(), data=st.data(), path=PATHS)
def test_mine_matches_oracle_or_refuses(d, data, path):
    values = data.draw(label_lists(len(d)))
    labels = _labels(values, data.draw(st.sampled_from(LABEL_DTYPES[4:])))
    strategy = data.draw(st.sampled_from(STRATEGIES))
    semi = strategy == "semi-hard"
    offset = data.draw(st.sampled_from([0.0, 1e-3, -0.5, math.inf])) if semi else 0.0
    fallback = data.draw(st.sampled_from(FALLBACKS)) if semi else "skip"
    compare, _ = _paths(path)
    with compare:
        if not torch.isfinite(d).all():
            with pytest.raises(ValueError, match="distances are not finite: row"):
                mine(d, labels, strategy, offset=offset, fallback=fallback)
            return
        got = mine(d, labels, strategy, offset=offset, fallback=fallback)
    want, dropped = loop_mine(d.numpy(), values, strategy, offset, fallback)
    assert (sorted(got.as_list()) if strategy == "all" else got.as_list()) == want
    assert got.dropped == dropped


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    rows=st.integers(1, 4),
    cols=st.integers(0, 40),
    width=st.integers(1, 80),
    exponent=st.integers(-40, 38),
    clusters=st.integers(1, 3),
    path=st.sampled_from(["compare", "grid"]),
)
def test_bucketize_matches_searchsorted(seed, rows, cols, width, exponent, clusters, path):
    """Thresholds in tight clusters far apart (collapse), values among them, at any scale."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(rows, clusters, generator=gen) * 10.0**exponent
    pick = torch.randint(0, clusters, (rows, width), generator=gen)
    thresholds = centres.gather(1, pick) * (1 + 1e-6 * torch.rand(rows, width, generator=gen))
    thresholds = thresholds.sort(dim=1).values
    pick = torch.randint(0, clusters, (rows, cols), generator=gen)
    values = centres.gather(1, pick) * (1 + 1e-6 * torch.rand(rows, cols, generator=gen))
    if cols:
        values[:, 0] = math.inf
    if cols > 1:
        values[:, 1] = thresholds[:, 0]  # a tie
    compare, _ = _paths(f"{path}-sparse")
    with compare:
        got = bucketing.bucketize(values, thresholds).buckets
    assert torch.equal(got, torch.searchsorted(thresholds, values.contiguous()))
