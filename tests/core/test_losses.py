import math

import numpy as np
import pytest
import torch

from conftest import LAYOUTS, random_labels
from reference import loop_loss
from tripletkit import TripletLoss, pairwise_distances, relevance_triplet_loss, triplet_loss

OPTIONS = [
    dict(mining=mining, soft=soft, reduction=reduction)
    for mining in ("all", "hard", "semi-hard")
    for soft in (False, True)
    for reduction in ("mean", "mean_active", "sum")
]


def assert_matches_oracle(x, labels, **options):
    ours = x.clone().requires_grad_()
    loss, stats = triplet_loss(ours, labels, **options)
    loss.backward()
    ref = x.clone().requires_grad_()
    ref_loss, ref_stats = loop_loss(ref, labels.tolist(), **options)
    ref_loss.backward()
    tol = 1e-5 if x.dtype == torch.float32 else 1e-10
    torch.testing.assert_close(loss.detach(), ref_loss.detach(), rtol=tol, atol=tol)
    # the gradient goes through another but equal formula (2 deg_i x_i - 2 (W x)_i)
    grad_tol = 1e-4 if x.dtype == torch.float32 else 1e-7
    torch.testing.assert_close(ours.grad, ref.grad, rtol=grad_tol, atol=grad_tol)
    got = stats.as_dict()
    for key, value in ref_stats.items():
        if math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-6), key


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_matches_loop_oracle(layout, dtype, bucketing, gradient_path):
    for seed in range(6):
        gen = torch.Generator().manual_seed(seed)
        labels = random_labels(layout, int(torch.randint(2, 24, (1,), generator=gen)), gen)
        x = torch.randn(len(labels), 5, generator=gen, dtype=dtype)
        distance = ("squared", "euclidean", "cosine")[seed % 3]
        offset = [0.0, 0.25, -0.3, -float("inf"), 2.0, float("inf")][seed]
        fallback = ("skip", "hardest", "easiest")[seed % 3]
        for options in OPTIONS:
            semi = options["mining"] == "semi-hard"
            assert_matches_oracle(
                x,
                labels,
                distance=distance,
                offset=offset if semi else 0.0,
                fallback=fallback if semi else "skip",
                margin=[0.2, 0.0, 1.0][seed % 3],
                **options,
            )


def test_larger_batches_match_oracle(gradient_path):
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(12).repeat_interleave(6)
    x = torch.nn.functional.normalize(torch.randn(72, 16, generator=gen, dtype=torch.float64))
    for mining in ("all", "hard", "semi-hard"):
        assert_matches_oracle(x, labels, mining=mining)


# Hand-written case on a line (euclidean, margin 0.25): positions 0, 0.5, 0.75, 1.5 with labels
# [0, 0, 1, 1]. d01 = .5, d02 = .75, d03 = 1.5, d12 = .25, d13 = 1, d23 = .75 (all exact).
LINE = torch.tensor([[0.0], [0.5], [0.75], [1.5]], dtype=torch.float64)
LINE_LABELS = torch.tensor([0, 0, 1, 1])


@pytest.mark.parametrize(
    ("mining", "reduction", "expected", "active"),
    [
        # (0,1,2) 0 [tie: d_an == d_ap + m], (1,0,2) .5, (2,3,1) .75, (3,2,1) 0 [tie]
        ("hard", "sum", 1.25, 2 / 4),
        ("hard", "mean", 1.25 / 4, 2 / 4),
        ("hard", "mean_active", 1.25 / 2, 2 / 4),
        # active: (1,0,2) .5, (2,3,0) .25, (2,3,1) .75 of 8 valid triplets
        ("all", "sum", 1.5, 3 / 8),
        ("all", "mean", 1.5 / 8, 3 / 8),
        ("all", "mean_active", 1.5 / 3, 3 / 8),
        # (0,1,2) 0, (1,0,3) 0, (3,2,1) 0; (2,3) has no negative beyond .75: dropped
        ("semi-hard", "mean", 0.0, 0.0),
        ("semi-hard", "mean_active", 0.0, 0.0),
    ],
)
def test_hand_written_losses(mining, reduction, expected, active):
    x = LINE.clone().requires_grad_()
    loss, stats = triplet_loss(
        x, LINE_LABELS, margin=0.25, mining=mining, distance="euclidean", reduction=reduction
    )
    assert loss.item() == pytest.approx(expected)
    assert stats.active_fraction == pytest.approx(active)
    # easy: (0,1,3) (1,0,3) (3,2,0), and (0,1,2) (3,2,1) at d_an = d_ap + m exactly (zero
    # loss: easy, not semi-hard; regression, they were counted semi-hard); hard: (1,0,2)
    # (2,3,0) (2,3,1)
    assert (stats.easy_fraction, stats.semihard_fraction, stats.hard_fraction) == (
        5 / 8,
        0.0,
        3 / 8,
    )
    assert stats.valid_triplets == 8
    assert stats.mean_d_ap == pytest.approx((0.5 * 2 + 0.75 * 2) / 4)
    assert stats.mean_d_an == pytest.approx((0.75 + 1.5 + 0.25 + 1.0) * 2 / 8)
    assert stats.dropped_pairs == (1 if mining == "semi-hard" else 0)
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_hand_written_gradient():
    # hard, sum: active (1,0,2) and (2,3,1); d/dx of |x1-x0| - |x1-x2| + |x2-x3| - |x2-x1|
    x = LINE.clone().requires_grad_()
    loss, _ = triplet_loss(
        x, LINE_LABELS, margin=0.25, mining="hard", distance="euclidean", reduction="sum"
    )
    loss.backward()
    assert x.grad.squeeze(1).tolist() == pytest.approx([-1.0, 3.0, -3.0, 1.0])


@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [4, 4, 4, 4], [3]])
@pytest.mark.parametrize("mining", ["all", "hard", "semi-hard"])
@pytest.mark.parametrize("reduction", ["mean", "mean_active", "sum"])
def test_batch_without_valid_triplet_gives_zero_not_nan(labels, mining, reduction):
    x = torch.randn(len(labels), 3, requires_grad=True)
    loss, stats = triplet_loss(x, torch.tensor(labels), mining=mining, reduction=reduction)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert stats.valid_triplets == 0 and stats.triplets == 0
    assert not math.isnan(stats.active_fraction)


@pytest.mark.parametrize("distance", ["squared", "euclidean", "cosine"])
@pytest.mark.parametrize("mining", ["all", "hard", "semi-hard"])
@pytest.mark.parametrize("soft", [False, True])
def test_finite_gradients_with_duplicate_embeddings(distance, mining, soft, gradient_path):
    base = torch.randn(3, 4)
    x = base.repeat_interleave(3, 0).requires_grad_()  # every point three times
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 0])
    fallback = "hardest" if mining == "semi-hard" else "skip"
    loss, _ = triplet_loss(
        x, labels, mining=mining, distance=distance, soft=soft, fallback=fallback
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_module_matches_function_and_is_tunable():
    x = torch.randn(12, 4)
    labels = torch.arange(4).repeat_interleave(3)
    module = TripletLoss(margin=0.3, mining="hard")
    assert module(x, labels)[0] == triplet_loss(x, labels, margin=0.3, mining="hard")[0]
    assert "mining='hard'" in repr(module)
    module.mining, module.offset = "semi-hard", 0.1
    want = triplet_loss(x, labels, margin=0.3, mining="semi-hard", offset=0.1)[0]
    assert module(x, labels)[0] == want


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_embeddings_are_mined_in_float32(dtype):
    x = torch.randn(12, 4).to(dtype).requires_grad_()
    loss, _ = triplet_loss(x, torch.arange(4).repeat_interleave(3))
    loss.backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == dtype


def test_float16_sum_does_not_overflow():
    """Regression: the float32 sum was cast back to float16, whose largest value is 65504."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(400, 8, generator=gen) * 10).half()
    labels = torch.arange(100).repeat_interleave(4)
    loss, _ = triplet_loss(x, labels, mining="all", reduction="sum")
    want, _ = triplet_loss(x.float(), labels, mining="all", reduction="sum")
    assert loss.item() > 65504 and torch.isfinite(loss)
    torch.testing.assert_close(loss, want)


@pytest.mark.parametrize("mining", ["all", "hard", "semi-hard"])
def test_autocast_does_not_coarsen_the_mining(mining):
    """Under bfloat16 autocast the loss still mines on float32 distances: same loss, same
    stats, same gradient as without autocast."""
    gen = torch.Generator().manual_seed(3)
    x = torch.nn.functional.normalize(torch.randn(40, 16, generator=gen), dim=1)
    labels = torch.arange(8).repeat_interleave(5)
    results = []
    for enabled in (False, True):
        e = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            loss, stats = triplet_loss(e, labels, mining=mining)
        loss.backward()
        results.append((loss.detach(), stats, e.grad))
    (loss0, stats0, grad0), (loss1, stats1, grad1) = results
    assert loss1.dtype == torch.float32 and stats1 == stats0
    torch.testing.assert_close(loss1, loss0)
    torch.testing.assert_close(grad1, grad0)


def test_threads_do_not_share_buffers():
    """The miner keeps its chunk buffers between calls, one set per thread."""
    from concurrent.futures import ThreadPoolExecutor

    gen = torch.Generator().manual_seed(5)
    batches = [(torch.randn(120, 8, generator=gen), torch.randint(0, 6, (120,))) for _ in range(6)]
    alone = [triplet_loss(x, y)[0] for x, y in batches]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda b: triplet_loss(*b)[0], batches * 4))
    for i, loss in enumerate(together):
        assert torch.equal(loss, alone[i % len(batches)]), i


def test_labels_may_be_a_list_or_numpy_array():
    x = torch.randn(6, 2)
    want = triplet_loss(x, torch.tensor([0, 0, 1, 1, 2, 2]))[0]
    assert triplet_loss(x, [0, 0, 1, 1, 2, 2])[0] == want
    assert triplet_loss(x, np.array([0, 0, 1, 1, 2, 2]))[0] == want


@pytest.mark.parametrize(
    ("embeddings", "labels", "options", "message"),
    [
        (torch.zeros(4), [0, 0, 1, 1], {}, "embeddings must be 2-D"),
        (torch.zeros(2, 2, 2), [0, 1], {}, "embeddings must be 2-D"),
        (torch.zeros(4, 2, dtype=torch.long), [0, 0, 1, 1], {}, "floating point"),
        (torch.tensor([[0.0, float("nan")], [1, 1]]), [0, 1], {}, r"NaN or infinite .*rows \[0\]"),
        (torch.tensor([[0.0, 1.0], [float("inf"), 1]]), [0, 1], {}, r"rows \[1\]"),
        ([[0.0, 1.0]], [0], {}, "must be a torch.Tensor"),
        (torch.zeros(4, 2), [0, 0, 1], {}, r"labels must have shape \(4,\)"),
        (torch.zeros(4, 2), torch.zeros(4, 1, dtype=torch.long), {}, "labels must have shape"),
        (torch.zeros(4, 2), [0.0, 0.0, 1.0, 1.0], {}, "labels must be integers"),
        (torch.zeros(4, 2), torch.tensor([0.0, 0, 1, 1]), {}, "labels must be an integer"),
        (torch.zeros(4, 2), torch.tensor([True, True, False, False]), {}, "integer"),
        (torch.zeros(4, 2), [0, 0, 1, 1], {"mining": "batch_all"}, "mining must be one of"),
        (torch.zeros(4, 2), [0, 0, 1, 1], {"fallback": "random"}, "fallback must be one of"),
        (torch.zeros(4, 2), [0, 0, 1, 1], {"distance": "l1"}, "distance must be one of"),
        (torch.zeros(4, 2), [0, 0, 1, 1], {"reduction": "max"}, "reduction must be one of"),
        (torch.zeros(4, 2), [0, 0, 1, 1], {"margin": -0.1}, "margin must be"),
        (torch.zeros(4, 2), [0, 0, 1, 1], {"margin": float("nan")}, "margin must be"),
        (torch.zeros(4, 2), [0, 0, 1, 1], {"offset": float("nan")}, "offset must be"),
        (torch.zeros(4, 2), [0, 0, 1, 1], {"soft": 1}, "soft must be"),
    ],
)
def test_bad_input_is_a_clear_error(embeddings, labels, options, message):
    with pytest.raises(ValueError, match=message):
        triplet_loss(embeddings, labels, **options)


def test_module_checks_options_at_construction():
    with pytest.raises(ValueError, match="mining"):
        TripletLoss(mining="semihard")


def random_relevance(gen, n_queries, n_docs):
    """Each query gets 1-3 relevant documents; documents are shared between queries, as when a
    document answers several queries."""
    relevant = torch.zeros(n_queries, n_docs, dtype=torch.bool)
    for q in range(n_queries):
        k = int(torch.randint(1, 4, (1,), generator=gen))
        relevant[q, torch.randperm(n_docs, generator=gen)[:k]] = True
    if n_queries > 2:
        relevant[2] = False  # a query with no document in the batch
    return relevant


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relevance_loss_matches_loop_oracle(dtype, bucketing, gradient_path):
    for seed in range(8):
        gen = torch.Generator().manual_seed(seed)
        n_q, n_d = (
            int(torch.randint(1, 12, (1,), generator=gen)),
            int(torch.randint(2, 20, (1,), generator=gen)),
        )
        queries = torch.randn(n_q, 5, generator=gen, dtype=dtype)
        docs = torch.randn(n_d, 5, generator=gen, dtype=dtype)
        relevant = random_relevance(gen, n_q, n_d)
        distance = ("squared", "euclidean", "cosine")[seed % 3]
        offset = [0.0, 0.25, -0.3, 1.0][seed % 4]
        for options in OPTIONS:
            semi = options["mining"] == "semi-hard"
            chosen = dict(offset=offset if semi else 0.0, fallback="hardest" if semi else "skip")
            q1, d1 = queries.clone().requires_grad_(), docs.clone().requires_grad_()
            loss, stats = relevance_triplet_loss(
                q1, d1, relevant, distance=distance, **chosen, **options
            )
            loss.backward()
            q2, d2 = queries.clone().requires_grad_(), docs.clone().requires_grad_()
            ref, ref_stats = loop_loss(
                q2, relevant.numpy(), documents=d2, distance=distance, **chosen, **options
            )
            ref.backward()
            tol = 1e-5 if dtype == torch.float32 else 1e-10
            grad_tol = 1e-4 if dtype == torch.float32 else 1e-7
            torch.testing.assert_close(loss.detach(), ref.detach(), rtol=tol, atol=tol)
            torch.testing.assert_close(q1.grad, q2.grad, rtol=grad_tol, atol=grad_tol)
            torch.testing.assert_close(d1.grad, d2.grad, rtol=grad_tol, atol=grad_tol)
            for key, value in ref_stats.items():
                got = stats.as_dict()[key]
                assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(
                    value, abs=1e-6
                ), key


def test_a_document_relevant_to_two_queries_is_never_a_negative_of_either():
    # doc 0 answers both queries and sits closest to both: with labels it would be the
    # hardest negative of query 1; with relevance it is a positive of both.
    queries = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    docs = torch.tensor([[0.5, 0.0], [0.0, 1.0], [1.0, 1.2], [3.0, 0.0]])
    relevant = torch.tensor([[True, True, False, False], [True, False, True, False]])
    from tripletkit import mine, pairwise_distances

    triplets = mine(pairwise_distances(queries, docs), relevant=relevant, strategy="all")
    assert all(not relevant[a, n] for a, _, n in triplets.as_list())
    assert sorted(triplets.as_list()) == [
        (0, 0, 2),
        (0, 0, 3),
        (0, 1, 2),
        (0, 1, 3),
        (1, 0, 1),
        (1, 0, 3),
        (1, 2, 1),
        (1, 2, 3),
    ]
    # a second copy of a relevant document (column 4 = doc 0 again) is relevant too
    loss, stats = relevance_triplet_loss(
        queries,
        torch.cat([docs, docs[:1]]),
        torch.cat([relevant, relevant[:, :1]], 1),
        mining="hard",
    )
    assert stats.valid_triplets == 3 * 2 + 3 * 2


def test_relevance_loss_bad_input():
    q, d = torch.zeros(2, 3), torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"relevant must be a bool tensor of shape \(2, 4\)"):
        relevance_triplet_loss(q, d, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="same dimension"):
        relevance_triplet_loss(q, torch.zeros(4, 2), torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="documents must be 2-D"):
        relevance_triplet_loss(q, torch.zeros(4), torch.zeros(2, 4, dtype=torch.bool))


def test_module_relevance_method():
    q, d = torch.randn(3, 4), torch.randn(5, 4)
    relevant = torch.eye(3, 5, dtype=torch.bool)
    module = TripletLoss(margin=0.3, mining="all")
    assert (
        module.relevance(q, d, relevant)[0]
        == relevance_triplet_loss(q, d, relevant, margin=0.3, mining="all")[0]
    )


@pytest.mark.parametrize("mining", ["all", "hard", "semi-hard"])
@pytest.mark.parametrize("soft", [False, True])
def test_embeddings_whose_distances_overflow_are_a_clear_error(mining, soft, gradient_path):
    """Regression: finite float32 embeddings near 1e19 overflow to infinite distances; "hard"
    crashed on index -1 (or in backward), semi-hard and batch-all returned a silent 0."""
    x = torch.tensor([[1e19, 0.0], [2e19, 0.0], [-2e19, 0.0], [0.0, 3e19]], requires_grad=True)
    with pytest.raises(ValueError, match=r"distances are not finite.*largest \|x\| = 3e\+19"):
        triplet_loss(x, [0, 0, 1, 1], mining=mining, soft=soft)


def test_empty_label_list_is_a_batch_of_zero():
    """Regression: labels=[] reported "labels must be integers, got float64"."""
    loss, stats = triplet_loss(torch.zeros(0, 3), [])
    assert loss.item() == 0.0 and stats.valid_triplets == 0
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        triplet_loss(torch.zeros(2, 3), [])


def test_relevance_loss_with_mixed_dtypes_is_a_clear_error():
    """Regression: queries and documents of different dtypes raised a raw addmm error."""
    relevant = torch.eye(3, dtype=torch.bool)
    with pytest.raises(ValueError, match="same dtype and device.*float32.*float64"):
        relevance_triplet_loss(torch.randn(3, 4), torch.randn(3, 4, dtype=torch.float64), relevant)


def test_offset_and_margin_take_numpy_numbers_not_bools():
    """Regression: offset=True was accepted and np.float32 offsets rejected."""
    x = torch.randn(12, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(4).repeat_interleave(3)
    want = triplet_loss(x, labels, offset=0.5, margin=0.25)[0]
    assert triplet_loss(x, labels, offset=np.float32(0.5), margin=np.float64(0.25))[0] == want
    for bad in (True, np.bool_(True)):
        with pytest.raises(ValueError, match="offset must be a number"):
            triplet_loss(x, labels, offset=bad)
        with pytest.raises(ValueError, match="margin must be"):
            TripletLoss(margin=bad)


@pytest.mark.parametrize("mining", ["all", "hard", "semi-hard"])
def test_no_gradient_surrogate_without_gradient(mining, monkeypatch):
    """Regression: with requires_grad=False (or under no_grad) the surrogate was still built."""
    import tripletkit.losses as losses

    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(10).repeat_interleave(4)
    want = triplet_loss(x.clone().requires_grad_(), labels, mining=mining)[0].detach()

    def refuse(*args, **kwargs):
        raise AssertionError("surrogate built without gradient")

    monkeypatch.setattr(losses, "distance_gradient_surrogate", refuse)
    loss, _ = triplet_loss(x, labels, mining=mining)
    assert not loss.requires_grad and loss == want
    with torch.no_grad():
        assert triplet_loss(x.clone().requires_grad_(), labels, mining=mining)[0] == want


@pytest.mark.parametrize("mining", ["all", "hard", "semi-hard"])
@pytest.mark.parametrize("soft", [False, True])
def test_every_strategy_runs_under_deterministic_algorithms(mining, soft, bucketing):
    """The CUDA path must work under torch.use_deterministic_algorithms(True): counts stay in
    integers and float running sums take the log-step scan (a float cumsum raises on CUDA). On
    CPU this checks that nothing refuses the mode and the result is unchanged up to rounding."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(60, 6, generator=gen)
    labels = torch.randint(0, 4, (60,), generator=gen)
    options = dict(mining=mining, soft=soft)
    if mining == "semi-hard":
        options.update(offset=0.1, fallback="hardest")
    want = triplet_loss(x, labels, **options)[0]
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        e = x.clone().requires_grad_()
        loss, _ = triplet_loss(e, labels, **options)
        loss.backward()
    finally:
        torch.use_deterministic_algorithms(before)
    torch.testing.assert_close(loss, want)
    assert torch.isfinite(e.grad).all()


def test_prefix_sums_scan_matches_cumsum():
    """The log-step scan taken under deterministic algorithms against cumsum, at widths around
    powers of two, with +inf entries (masked columns) that must only reach later columns."""
    from tripletkit.mining import prefix_sums

    gen = torch.Generator().manual_seed(0)
    for width in [0, 1, 2, 3, 4, 5, 7, 8, 9, 31, 64, 65, 130]:
        x = torch.rand(5, width, generator=gen, dtype=torch.float64)
        if width > 2:
            x[1, width // 2] = float("inf")
        want = x.cumsum(1)
        before = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            got = prefix_sums(x)
            counts = prefix_sums(torch.arange(width).repeat(2, 1))
        finally:
            torch.use_deterministic_algorithms(before)
        torch.testing.assert_close(got, want)
        assert torch.equal(counts, torch.arange(width).cumsum(0).repeat(2, 1))


DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    ),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["balanced", "large_k"])
def test_loss_on_device_matches_loop_oracle(device, layout, gradient_path):
    """The oracle comparison on every available device (CUDA when there is one), in float64."""
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        labels = random_labels(layout, 30, gen)
        x = torch.randn(len(labels), 5, generator=gen, dtype=torch.float64)
        for options in OPTIONS:
            semi = options["mining"] == "semi-hard"
            extra = dict(offset=0.1, fallback="easiest") if semi else {}
            ours = x.to(device, copy=True).requires_grad_()
            loss, stats = triplet_loss(ours, labels.to(device), **extra, **options)
            loss.backward()
            ref = x.clone().requires_grad_()
            ref_loss, _ = loop_loss(ref, labels.tolist(), **extra, **options)
            ref_loss.backward()
            torch.testing.assert_close(loss.detach().cpu(), ref_loss.detach())
            torch.testing.assert_close(ours.grad.cpu(), ref.grad)


@pytest.mark.parametrize("mining", ["all", "hard", "semi-hard"])
@pytest.mark.parametrize("soft", [False, True])
def test_empty_batch_gives_zero_for_every_option(mining, soft):
    """Found by the property tests: soft batch-all on an empty batch failed in torch.cat."""
    x = torch.zeros(0, 3, requires_grad=True)
    loss, stats = triplet_loss(x, torch.zeros(0, dtype=torch.long), mining=mining, soft=soft)
    loss.backward()
    assert loss.item() == 0.0 and stats.triplets == 0 and x.grad.shape == (0, 3)


# Six points on a line 3.5e18 apart in float32: every squared distance is finite (the largest,
# 3.1e38, just under float32's 3.4e38), but a sum of a few of them is not.
_HUGE = torch.tensor([[i * 3.5e18, 0.0] for i in range(6)])
_HUGE_LABELS = [0, 1, 0, 1, 0, 1]


@pytest.mark.parametrize("mining", ["all", "hard", "semi-hard"])
@pytest.mark.parametrize("soft", [False, True])
def test_a_loss_that_overflows_between_finite_distances_is_a_clear_error(
    mining, soft, gradient_path
):
    """Regression: with finite distances near 1e38 the loss overflowed and came back inf (or
    -inf for batch-all, a difference of two overflowed sums) with no error. Semi-hard's own
    triplets cost at most margin (log 2 when soft) each, so its fallback triplets overflow."""
    x = _HUGE.clone().requires_grad_()
    assert torch.isfinite(pairwise_distances(x.detach())).all()
    options = {"fallback": "hardest"} if mining == "semi-hard" else {}
    kind = "soft-margin" if soft else "hinge"
    with pytest.raises(
        ValueError,
        match=rf"the '{mining}' {kind} loss overflows torch.float32 although the distances are "
        r"finite: .*\(embeddings too large for torch.float32\? largest \|x\| = 1.75e\+19\)",
    ):
        triplet_loss(x, _HUGE_LABELS, mining=mining, soft=soft, **options)


def test_batch_all_of_random_embeddings_near_1e19_is_a_clear_error_not_minus_inf():
    """Regression: the issue's case, x * 9e18 for unit vectors: batch-all returned -inf (its
    positive part was finite in float64, its float32 hinge sums overflowed), hard inf."""
    x = torch.nn.functional.normalize(
        torch.randn(32, 16, generator=torch.Generator().manual_seed(0))
    )
    labels = torch.arange(32) % 4
    assert torch.isfinite(pairwise_distances(x * 9e18)).all()
    for mining, value in (("all", "sum to -inf"), ("hard", "4.08e[+]39, the loss comes to inf")):
        with pytest.raises(ValueError, match=f"'{mining}' hinge loss overflows .*{value}"):
            triplet_loss(x * 9e18, labels, mining=mining)


@pytest.mark.parametrize("soft", [False, True])
def test_semi_hard_triplets_between_huge_distances_keep_their_exact_loss(soft):
    """Not an error: semi-hard's own triplets (d_an > d_ap) cost at most margin or log 2 each,
    so at distances near 1e38 the loss is still what float64 gives (here 0: every d_an is
    d_ap + about 1e37, far beyond the margin)."""
    loss, stats = triplet_loss(_HUGE, _HUGE_LABELS, mining="semi-hard", soft=soft)
    want, _ = triplet_loss(_HUGE.double(), _HUGE_LABELS, mining="semi-hard", soft=soft)
    assert stats.triplets > 0 and torch.isfinite(loss)
    assert float(loss) == float(want) == 0.0


@pytest.mark.parametrize("soft", [False, True])
def test_a_relevance_loss_that_overflows_is_a_clear_error(soft):
    """The query x document loss checks its result the same way: each query's relevant
    document is the farthest, so every negative is hard."""
    q, d = _HUGE[:3], _HUGE[3:]
    relevant = torch.eye(3, dtype=torch.bool).flip(1)
    with pytest.raises(ValueError, match="'all' .* loss overflows torch.float32 although"):
        relevance_triplet_loss(q, d, relevant, mining="all", soft=soft)


def test_batch_all_at_a_margin_below_the_distances_rounding_is_not_refused():
    """The check against a negative hinge leaves room for its sums' rounding: a margin of 1e-7
    against distances near 4 (below float32's resolution there) gives a loss >= 0 and no error."""
    x = torch.nn.functional.normalize(
        torch.randn(300, 8, generator=torch.Generator().manual_seed(1))
    )
    labels = torch.arange(300) % 3
    for margin in (0.0, 1e-7, 1e-5):
        loss, stats = triplet_loss(x, labels, mining="all", margin=margin)
        want, _ = triplet_loss(x.double(), labels, mining="all", margin=margin)
        assert stats.valid_triplets > 0
        assert float(loss) >= 0.0
        torch.testing.assert_close(loss.double(), want, rtol=1e-3, atol=1e-6)
