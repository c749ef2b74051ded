"""P identities x K examples per batch, as FaceNet and batch-hard mining want them.

Per epoch, seeded by (seed, epoch) and therefore identical on every rank:

1. Identities are shuffled and dealt to ranks (``rank::world_size``), so rank shards are disjoint.
2. Each identity's examples are shuffled and cut into chunks of K. A last partial chunk is
   completed with other examples of the same identity, so every example is used at least once.
   An identity with 2 <= n < K examples is sampled with replacement to K (``small="replace"``)
   or left out (``small="drop"``). An identity with one example has no positive: it is left out,
   or, with ``singletons=s``, s of them join every batch as pure negatives.
3. Batches take one chunk from each of P different identities, always from the identities with
   the most chunks left, which gives the largest possible number of batches.

Leftovers: chunks that cannot fill a batch of P *different* identities at the end of the epoch
(when one identity has far more examples than the rest), small identities with
``small="drop"``, singletons with ``singletons=0``, and under DDP the batches past the shortest
rank's count (every rank yields the same number of batches).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

SMALL = ("replace", "drop")


class PKSampler(Sampler[list[int]]):
    """Batch sampler yielding lists of P x K (+ singletons) dataset indices.

    Use it as ``DataLoader(dataset, batch_sampler=PKSampler(labels, p, k))`` and call
    :meth:`set_epoch` before each epoch.

    Args:
        labels: identity label of every example in the dataset.
        p: identities per batch (>= 2).
        k: examples per identity (>= 2).
        seed: base seed; batches depend only on (seed, epoch, rank, world_size).
        small: identities with fewer than k (but at least 2) examples: "replace" or "drop".
        singletons: single-example identities added to every batch as negatives (0: none).
        rank: this process's rank under DDP.
        world_size: number of processes under DDP.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        p: int,
        k: int,
        *,
        seed: int = 0,
        small: str = "replace",
        singletons: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise ValueError(f"labels must be a 1-D sequence of integers, got {labels.dtype}")
        for name, value, low in (
            ("p", p, 2),
            ("k", k, 2),
            ("singletons", singletons, 0),
            ("world_size", world_size, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if small not in SMALL:
            raise ValueError(f"small must be one of {SMALL}, got {small!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank!r}")
        self.p, self.k, self.seed, self.small = p, k, seed, small
        self.singletons, self.rank, self.world_size = singletons, rank, world_size
        self.epoch = 0

        values, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
        few = (counts >= 2) & (counts < k)
        keep = (counts >= k) | (few & (small == "replace"))
        self._identities = [members[i] for i in np.flatnonzero(keep)]
        self._singles = np.concatenate(
            [members[i] for i in np.flatnonzero(counts == 1)] or [np.zeros(0, dtype=np.int64)]
        )
        notes = []
        if few.any():
            how = "sampled with replacement" if small == "replace" else "left out"
            notes.append(f"{int(few.sum())} identities have fewer than k={k} examples ({how})")
        if len(self._singles) and singletons == 0:
            notes.append(
                f"{len(self._singles)} identities have a single example (left out; "
                "set singletons > 0 to use them as negatives)"
            )
        if notes:
            warnings.warn("PKSampler: " + "; ".join(notes), stacklevel=2)
        if singletons and len(self._singles) < singletons * world_size:
            raise ValueError(
                f"singletons={singletons} per batch needs at least {singletons * world_size} "
                f"single-example identities, found {len(self._singles)}"
            )
        if len(self._identities) < p * world_size:
            raise ValueError(
                f"p={p} identities per batch on {world_size} rank(s) needs at least "
                f"{p * world_size} identities with enough examples, found {len(self._identities)}"
            )
        self._chunks = np.array([max(1, -(-len(m) // k)) for m in self._identities])

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose batches the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        order = self._identity_order(self._rng())
        return min(
            _max_batches(self._chunks[order[r :: self.world_size]], self.p)
            for r in range(self.world_size)
        )

    def __iter__(self) -> Iterator[list[int]]:
        rng = self._rng()
        order = self._identity_order(rng)
        count = min(
            _max_batches(self._chunks[order[r :: self.world_size]], self.p)
            for r in range(self.world_size)
        )
        mine = order[self.rank :: self.world_size]
        # Independent streams per rank for everything after the shared identity shuffle.
        local = np.random.default_rng([self.seed, self.epoch, self.rank, 1])
        queues = [self._chunk(self._identities[i], local) for i in mine]
        singles = local.permutation(self._singles[self.rank :: self.world_size])
        batches = []
        left = np.array([len(q) for q in queues])
        for b in range(count):
            jitter = local.random(len(left))
            chosen = np.argsort(-(left + jitter), kind="stable")[: self.p]
            batch = [queues[i][len(queues[i]) - left[i]] for i in chosen]
            left[chosen] -= 1
            if self.singletons:
                at = (b * self.singletons) % len(singles)
                batch.append(np.resize(np.roll(singles, -at), self.singletons))
            batches.append(np.concatenate(batch).tolist())
        for i in local.permutation(len(batches)):
            yield batches[i]

    def state_dict(self) -> dict[str, int]:
        """What a checkpoint needs to reproduce the coming batches."""
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def _identity_order(self, rng: np.random.Generator) -> np.ndarray:
        return rng.permutation(len(self._identities))

    def _chunk(self, members: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        k = self.k
        shuffled = rng.permutation(members)
        if len(shuffled) < k:
            return [np.concatenate([shuffled, rng.choice(shuffled, k - len(shuffled))])]
        chunks = [shuffled[i : i + k] for i in range(0, len(shuffled) - k + 1, k)]
        rest = len(shuffled) % k
        if rest:
            fill = rng.choice(shuffled[:-rest], k - rest, replace=False)
            chunks.append(np.concatenate([shuffled[-rest:], fill]))
        return chunks


def _max_batches(chunks: np.ndarray, p: int) -> int:
    """Most batches of p different identities from these per-identity chunk counts: the largest
    b with sum(min(chunks, b)) >= p * b (reached by always taking the p fullest identities)."""
    low, high = 0, int(chunks.sum()) // p
    while low < high:
        mid = (low + high + 1) // 2
        if np.minimum(chunks, mid).sum() >= p * mid:
            low = mid
        else:
            high = mid - 1
    return low


class ShuffledBatches(Sampler[list[int]]):
    """Batches of ``batch_size`` indices out of ``n``, reshuffled per epoch from (seed, epoch),
    the last incomplete batch dropped; under DDP each rank takes every world_size-th batch (all
    ranks yield the same number). For training on queries, where each query is its own anchor.
    """

    def __init__(
        self, n: int, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if batch_size < 1 or n < batch_size * world_size:
            raise ValueError(
                f"need at least batch_size x world_size = {batch_size * world_size} items, got {n}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank!r}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.batch_size // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        for b in range(len(self)):
            start = (b * self.world_size + self.rank) * self.batch_size
            yield order[start : start + self.batch_size].tolist()

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
