"""A one-minute demonstration on synthetic identities: mining statistics and a curriculum at
work, and nearest-neighbour accuracy on identities never seen in training."""

from __future__ import annotations

import torch
from torch import nn

from ..curriculum import default_curriculum
from ..distances import pairwise_distances
from ..losses import TripletLoss
from ..sampling import PKSampler


def make_identities(
    n_ids: int, per_id: int, dim: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Identities in an 8-d subspace, hidden by strong nuisance in the other directions and a
    random rotation: raw nearest neighbours are poor, a learned embedding can ignore nuisance."""
    gen = torch.Generator().manual_seed(seed)
    n = n_ids * per_id
    identity = torch.randn(n_ids, 8, generator=gen).repeat_interleave(per_id, 0)
    identity = identity + 0.35 * torch.randn(n, 8, generator=gen)
    nuisance = 1.5 * torch.randn(n, dim - 8, generator=gen)
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen))
    return torch.cat([identity, nuisance], 1) @ rotation, torch.arange(n_ids).repeat_interleave(
        per_id
    )


def nearest_neighbour_accuracy(embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    """Leave-one-out rank-1 accuracy."""
    dist = pairwise_distances(embeddings)
    dist.fill_diagonal_(float("inf"))
    return float((labels[dist.argmin(1)] == labels).float().mean())


def run_demo(steps: int = 300, seed: int = 0) -> dict[str, float]:
    """Train a small MLP with semi-hard mining and the default curriculum; print progress."""
    torch.manual_seed(seed)
    x, y = make_identities(n_ids=60, per_id=12, dim=32, seed=seed)
    train = y < 40
    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 16))
    embed = lambda v: nn.functional.normalize(model(v), dim=1)  # noqa: E731
    loss_fn, curriculum = TripletLoss(margin=0.2), default_curriculum(steps)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    sampler = PKSampler(y[train], p=10, k=6, seed=seed)
    xt, yt = x[train], y[train]
    with torch.no_grad():
        before = nearest_neighbour_accuracy(embed(x[~train]), y[~train])
    print(
        f"{'step':>5} {'loss':>7} {'offset':>6} {'active':>6} {'easy':>5} {'semi':>5} {'hard':>5}"
    )
    step = 0
    while step < steps:
        sampler.set_epoch(step)
        for batch in sampler:
            values = curriculum.apply(loss_fn, step)
            loss, stats = loss_fn(embed(xt[batch]), yt[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if step % 50 == 0 or step == steps - 1:
                print(
                    f"{step:5d} {loss.item():7.4f} {values['offset']:6.3f} "
                    f"{stats.active_fraction:6.2f} {stats.easy_fraction:5.2f} "
                    f"{stats.semihard_fraction:5.2f} {stats.hard_fraction:5.2f}"
                )
            step += 1
            if step == steps:
                break
    with torch.no_grad():
        after = nearest_neighbour_accuracy(embed(x[~train]), y[~train])
    print(f"rank-1 on 20 held-out identities: {before:.3f} untrained -> {after:.3f} trained")
    return {"rank1_untrained": before, "rank1_trained": after}
