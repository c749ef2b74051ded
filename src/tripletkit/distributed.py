"""Several processes, one global batch: PyTorch's own distributed engine (``torchrun``).

Each rank embeds its share of the batch; :func:`gather` concatenates the shares of every rank in
rank order, so every rank mines over the global batch (B x world size) with any strategy. Every
rank computes the loss of the whole global batch (the same number on every rank), and the
backward of :func:`gather` keeps the gradient of the rank's own rows, times the world size:
DistributedDataParallel then averages the parameter gradients over the ranks, and the result is
the gradient of one process on the concatenated batch. (The mining costs O((B x world)^2) on each
rank, small next to the network.)

Collectives fail after ``timeout`` seconds, or at once when a peer's connection drops, with a
:class:`DistributedError` that names the rank and says what to look for; nothing waits forever.

Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything here is a no-op for one
process.
"""

from __future__ import annotations

import datetime
import gc
import hashlib
import json
import os
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")
S = TypeVar("S", bound=Sequence[Any] | Tensor)


class DistributedError(RuntimeError):
    """A collective failed: another rank stopped, disagreed, or was too slow."""


def active() -> bool:
    """Whether this process is one of several ranks."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes logs, checkpoints and reports."""
    return rank() == 0


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK`` from torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


@contextmanager
def session(timeout: float = 600.0, backend: str = "auto", device: str = "cpu") -> Iterator[None]:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), and leave it at the end. A no-op
    without ``WORLD_SIZE`` > 1 or when a group already exists.

    Args:
        timeout: seconds a collective may wait for the other ranks before failing.
        backend: "gloo" (CPU), "nccl" (GPUs), or "auto": NCCL when ``device`` is "cuda".
        device: where the tensors that travel live, "cpu" or "cuda".
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        yield
        return
    if backend == "auto":
        backend = "nccl" if device == "cuda" else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'auto', 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    except Exception as err:
        raise DistributedError(
            f"rank {os.environ.get('RANK', '?')} of {world}: could not join the process group "
            f"at {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} within "
            f"{timeout:g} s ({err})"
        ) from err
    try:
        yield
    except BaseException:
        dist.destroy_process_group()
        raise
    # Leave together, and only after this rank's DDP objects (which hold the group) are
    # gone: a gloo group torn down at interpreter exit while a peer still talks to it
    # aborts the process ("terminate called without an active exception").
    gc.collect()
    try:
        barrier("the closing barrier")
    finally:
        dist.destroy_process_group()


def collective(what: str, run: Callable[[], T]) -> T:
    """Run one collective; turn a failure into a :class:`DistributedError` naming this rank."""
    try:
        return run()
    except DistributedError:
        raise
    except Exception as err:
        raise _failure(what, err) from err


def _failure(what: str, err: BaseException) -> DistributedError:
    first = str(err).splitlines()[0] if str(err) else ""
    return DistributedError(
        f"rank {rank()} of {world_size()}: {what} failed: another rank stopped, crashed or "
        f"fell behind past the timeout; see that rank's output ({type(err).__name__}: {first}). "
        "The last checkpoint is intact."
    )


@contextmanager
def communication_errors(what: str) -> Iterator[None]:
    """Inside, a failed communication (DDP's own gradient all-reduce, bucket rebuilds) becomes
    a :class:`DistributedError` too; other errors pass unchanged."""
    try:
        yield
    except DistributedError:
        raise
    except RuntimeError as err:
        text = str(err)
        comm = isinstance(err, dist.DistError) or any(
            word in text for word in ("gloo", "NCCL", "Connection reset", "Connection closed")
        )
        if not (active() and comm):
            raise
        raise _failure(what, err) from err


class _Gather(torch.autograd.Function):
    """Concatenate every rank's rows; the backward keeps this rank's rows, times the world."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: list[int]) -> Tensor:
        me = rank()
        ctx.start, ctx.stop = sum(sizes[:me]), sum(sizes[: me + 1])
        ctx.world = len(sizes)
        longest = max(sizes)
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[: len(x)] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        collective("all_gather", lambda: dist.all_gather(parts, padded.contiguous()))
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad[ctx.start : ctx.stop] * ctx.world, None


def gather(x: Tensor) -> Tensor:
    """(n_r, ...) rows on each rank -> (sum n_r, ...) rows of all ranks in rank order; the
    gradient flows back to this rank's rows (see the module docstring). Ranks may hold
    different numbers of rows. The identity for one process."""
    if not active():
        return x
    sizes = all_objects(len(x), "row counts")
    return _Gather.apply(x, sizes)


def all_objects(obj: T, what: str = "objects") -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    collective(f"all_gather of {what}", lambda: dist.all_gather_object(out, obj))
    return out


def broadcast(obj: T, what: str = "object") -> T:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    collective(f"broadcast of {what}", lambda: dist.broadcast_object_list(box, src=0))
    return box[0]


def barrier(what: str = "barrier") -> None:
    if active():
        collective(what, lambda: dist.barrier())


def split(total: int, key: str) -> int:
    """``total`` (a global batch size) split evenly over the ranks.

    Raises:
        ValueError: naming ``key`` when the world size does not divide it.
    """
    world = world_size()
    if total % world:
        raise ValueError(
            f"{key}={total} (the global batch) does not divide over {world} ranks; "
            f"use a multiple of {world}"
        )
    return total // world


def check_same(config: Mapping[str, Any], what: str = "config") -> None:
    """Every rank must run the same ``config`` (a nested mapping).

    Raises:
        DistributedError: on every rank, naming the keys where a rank differs from rank 0.
    """
    if not active():
        return
    text = json.dumps(config, sort_keys=True, default=str)
    digests = all_objects(hashlib.sha256(text.encode()).hexdigest(), f"{what} digests")
    if len(set(digests)) == 1:
        return
    configs = all_objects(config, what)
    lines = []
    for r, other in enumerate(configs[1:], start=1):
        for key, (a, b) in _differences(configs[0], other).items():
            lines.append(f"{key}: rank 0 has {a!r}, rank {r} has {b!r}")
    raise DistributedError(f"ranks disagree on the {what}: " + "; ".join(lines))


def _differences(a: Any, b: Any, path: str = "") -> dict[str, tuple[Any, Any]]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: dict[str, tuple[Any, Any]] = {}
        for key in sorted(set(a) | set(b), key=str):
            out.update(_differences(a.get(key), b.get(key), f"{path}{key}."))
        return out
    return {} if a == b else {path.rstrip("."): (a, b)}


def shard(n: int) -> slice:
    """This rank's contiguous share of n items (the first n % world ranks take one more)."""
    world, me = world_size(), rank()
    base, extra = divmod(n, world)
    start = me * base + min(me, extra)
    return slice(start, start + base + (me < extra))


def sharded(fn: Callable[[S], np.ndarray], items: S) -> np.ndarray:
    """``fn(items)`` computed in shards: each rank maps its contiguous share, and the results
    are concatenated in order on every rank (e.g. encoding a corpus on every rank at once)."""
    if not active():
        return fn(items)
    part = typing.cast(S, items[shard(len(items))])
    mine = torch.from_numpy(np.ascontiguousarray(fn(part)))
    device = torch.device("cuda", local_rank()) if dist.get_backend() == "nccl" else None
    return gather(mine.to(device) if device else mine).cpu().numpy()
