"""The scan on a GPU must not wait for the device once per chunk (issue 10, item 6).

No GPU is needed to check it: a TorchFunctionMode counts the calls that make a CUDA host wait
for the device (reading a value, nonzero, a boolean-mask index, copies to the host) while the
miner runs on the CPU with the GPU's bucketing (torch.searchsorted). The count must not grow
with the number of chunks.
"""

import pytest
import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

import tripletkit._bucketing as bucketing
import tripletkit.mining as mining
from tripletkit import pairwise_distances, triplet_loss
from tripletkit.mining import Relevance, label_groups, scan

SYNCING = {
    Tensor.item,
    Tensor.tolist,
    Tensor.__bool__,
    Tensor.__int__,
    Tensor.__float__,
    Tensor.__index__,
    Tensor.nonzero,
    torch.nonzero,
    torch.masked_select,
    Tensor.masked_select,
    Tensor.cpu,
    Tensor.numpy,
    torch.unique,
}


def _masks(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, Tensor) and p.dtype == torch.bool for p in parts)


class CountSyncs(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        indexing = func in (Tensor.__getitem__, Tensor.__setitem__)
        if func in SYNCING or (indexing and _masks(args[1])):
            self.calls.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def syncs_of_scan(dist, structure, strategy, chunk_elements, monkeypatch):
    monkeypatch.setattr(mining, "_CHUNK_ELEMENTS", chunk_elements)
    monkeypatch.setattr(mining, "SMALL_DISTANCES", 0)  # the chunked pass
    options = dict(offset=0.1, fallback="hardest") if strategy == "semi-hard" else {}
    with CountSyncs() as counter:
        found = scan(dist, structure, margin=0.2, strategy=strategy, nonnegative=True, **options)
    chunks = len(mining.chunk_rows(len(dist), dist.shape[1]))
    return counter.calls, chunks, found


def _batch(relevance: bool):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, 8, generator=gen)
    if relevance:
        docs = torch.randn(120, 8, generator=gen)
        relevant = torch.rand(96, 120, generator=gen) < 0.05
        return pairwise_distances(x, docs), Relevance.from_mask(relevant)
    labels = torch.arange(24).repeat_interleave(4)
    return pairwise_distances(x), label_groups(labels)


@pytest.mark.parametrize("strategy", ["all", "hard", "semi-hard"])
@pytest.mark.parametrize("relevance", [False, True])
def test_gpu_path_syncs_do_not_grow_with_chunks(strategy, relevance, monkeypatch):
    monkeypatch.setattr(bucketing, "searches_on", lambda device: True)
    monkeypatch.setattr(bucketing, "COMPARE_MAX_THRESHOLDS", 0)  # else the grid on the CPU
    dist, structure = _batch(relevance)
    one, one_chunks, found_one = syncs_of_scan(dist, structure, strategy, 1 << 30, monkeypatch)
    many, many_chunks, found_many = syncs_of_scan(dist, structure, strategy, 256, monkeypatch)
    assert one_chunks == 1 and many_chunks >= 12
    assert many == one, f"{len(many)} syncs over {many_chunks} chunks: {many}"
    assert len(one) <= 1  # the one allowed: the sign check, only for distances of any sign
    torch.testing.assert_close(found_many.d_ap, found_one.d_ap)


def test_the_counter_sees_the_cpu_grid_sync_per_chunk(monkeypatch):
    """The counter is not blind: the CPU's grid path waits on every chunk (free on a CPU)."""
    monkeypatch.setattr(bucketing, "COMPARE_MAX_THRESHOLDS", 0)
    dist, structure = _batch(False)
    many, chunks, _ = syncs_of_scan(dist, structure, "all", 256, monkeypatch)
    assert len(many) >= chunks >= 12


def test_loss_syncs_a_fixed_number_of_times(monkeypatch):
    """The whole loss on the GPU path: a few syncs per call (checks, stats), none per chunk."""
    monkeypatch.setattr(bucketing, "searches_on", lambda device: True)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(96, 8, generator=gen, requires_grad=True)
    labels = torch.arange(24).repeat_interleave(4)
    counts = []
    for small, chunk_elements in ((0, 1 << 30), (0, 256), (1 << 30, 256)):
        monkeypatch.setattr(mining, "SMALL_DISTANCES", small)
        monkeypatch.setattr(mining, "_CHUNK_ELEMENTS", chunk_elements)
        with CountSyncs() as counter:
            loss, _ = triplet_loss(x, labels, mining="semi-hard", fallback="hardest")
        counts.append(len(counter.calls))
    assert counts[0] == counts[1] >= counts[2]  # the small path: no more than the chunked
