import pytest
import torch


def random_labels(layout: str, n: int, gen: torch.Generator) -> torch.Tensor:
    """Label layouts the oracle tests sweep."""
    if layout == "balanced":
        k = int(torch.randint(2, 6, (1,), generator=gen))
        return torch.arange(max(1, n // k)).repeat_interleave(k)
    if layout == "unbalanced":
        sizes = torch.randint(1, 9, (n,), generator=gen)
        labels = torch.arange(n).repeat_interleave(sizes)[:n]
        return labels[torch.randperm(len(labels), generator=gen)]
    if layout == "singletons":
        labels = torch.randint(0, max(2, n // 3), (n,), generator=gen)
        labels[: n // 3] = torch.arange(1000, 1000 + n // 3)
        return labels[torch.randperm(n, generator=gen)]
    if layout == "one_class":
        return torch.full((n,), 7)
    if layout == "distinct":
        return torch.randperm(n, generator=gen) * 3 - 5
    if layout == "large_k":  # many positives per anchor: the grid bucketing path
        return torch.randint(0, 3, (n,), generator=gen)
    raise ValueError(layout)


LAYOUTS = ["balanced", "unbalanced", "singletons", "one_class", "distinct", "large_k"]


@pytest.fixture(params=["small", "compare", "grid", "search"])
def bucketing(request, monkeypatch):
    """Run a test under every path of the miner: the small matrices' sorted rows (at every
    size), and the chunked pass with each bucketing: the CPU's two, and the GPU's
    torch.searchsorted (taken here on the CPU)."""
    import tripletkit._bucketing as bucketing
    import tripletkit.mining as mining

    big = 10**12 if request.param == "small" else 0
    monkeypatch.setattr(mining, "SMALL_DISTANCES", big)
    monkeypatch.setattr(mining, "SMALL_ELEMENTS", big)

    monkeypatch.setattr(
        bucketing, "COMPARE_MAX_THRESHOLDS", 10**6 if request.param == "compare" else 0
    )
    monkeypatch.setattr(bucketing, "searches_on", lambda device: request.param == "search")
    return request.param


@pytest.fixture(params=["sparse", "dense"])
def gradient_path(request, monkeypatch):
    """Run a test with the loss gradient through pair gathers, then through the dense product."""
    import tripletkit.distances as distances

    monkeypatch.setattr(
        distances, "SPARSE_PAIRS_DIVISOR", 0 if request.param == "sparse" else 10**9
    )
    return request.param
