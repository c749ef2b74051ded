"""The training state: everything a checkpoint holds, in one schema, saved and loaded as a unit.

A checkpoint (``checkpoint.pt``, written atomically at the end of every epoch) holds:

=============  =============================================================================
key            what
=============  =============================================================================
model          the model's state dict
optimizer      the optimiser's state dict
scheduler      the learning-rate schedule's state dict
sampler        the sampler's state (seed, epoch)
source         the batch source's own state, when it has one (re-mined negatives, say)
rng            every rank's torch RNG state, in rank order
epoch          the last epoch finished (training goes on with the next one)
step           optimiser steps done
first_d_an     the first batch's mean negative distance (the collapse warning's yardstick)
collapsed      whether the embedding collapsed at some step
config         the settings that shape training (:func:`run_settings`), as JSON values
config_hash    :func:`settings_hash` of ``config``
=============  =============================================================================

Resuming under other settings would mix two training schedules: :meth:`TrainState.load`
refuses it, naming each setting that differs. Under ``torchrun`` rank 0 reads the checkpoint
and sends it to every rank, each of which restores its own RNG state; only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from . import distributed
from ._io import atomic_write
from .config import TrainConfig

# TrainConfig keys that say where and how a run executes, not what it computes: a run may resume
# with other values of these
RUN_ONLY_KEYS = ("threads", "device", "backend", "timeout")
KEYS = (
    "model",
    "optimizer",
    "scheduler",
    "sampler",
    "source",
    "rng",
    "epoch",
    "step",
    "first_d_an",
    "collapsed",
    "config",
    "config_hash",
)


class Sampler(Protocol):
    """Batches of dataset indices, reproducible from (seed, epoch)."""

    def __iter__(self) -> Iterator[list[int]]: ...
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...
    def state_dict(self) -> dict[str, int]: ...
    def load_state_dict(self, state: dict[str, int]) -> None: ...


@dataclass
class TrainState:
    """What training has done so far, and everything it needs to go on (module docstring).

    Attributes:
        model, optimizer, scheduler: what trains.
        sampler: the batch source's sampler.
        source: the batch source; its ``state_dict`` / ``load_state_dict``, when it has them,
            are saved and restored too.
        settings: the settings that shape training (:func:`run_settings`).
        epoch: the next epoch to run.
        step: optimiser steps done.
        first_d_an: the first batch's mean negative distance (NaN before it).
        collapsed: whether the embedding collapsed at some step.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: Sampler
    source: Any
    settings: dict[str, Any]
    epoch: int = 0
    step: int = 0
    first_d_an: float = math.nan
    collapsed: bool = False

    def state_dict(self, rngs: list[torch.Tensor]) -> dict[str, Any]:
        """The checkpoint's contents, given every rank's RNG state (rank order)."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": rngs,
            "epoch": self.epoch - 1,
            "step": self.step,
            "first_d_an": self.first_d_an,
            "collapsed": self.collapsed,
            "config": self.settings,
            "config_hash": settings_hash(self.settings),
        }
        if _has_state(self.source):
            state["source"] = self.source.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any], path: Path) -> None:
        """Restore everything from a checkpoint's contents (read from ``path``), this rank's
        RNG state included.

        Raises:
            ValueError: naming ``path``: written under other settings (each one, old -> new) or
                by another number of processes.
        """
        if len(state["rng"]) != distributed.world_size():
            raise ValueError(
                f"{path} was written by {len(state['rng'])} process(es); resume it with as "
                f"many (this run has {distributed.world_size()})"
            )
        check_settings(path, state, self.settings)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        if _has_state(self.source):
            if "source" in state:
                self.source.load_state_dict(state["source"])
            else:
                warnings.warn(
                    f"{path} holds no state of the batch source (written by an older version): "
                    "it starts again from its first state",
                    stacklevel=3,
                )
        torch.set_rng_state(state["rng"][distributed.rank()])
        self.epoch, self.step = state["epoch"] + 1, state["step"]
        self.first_d_an, self.collapsed = state["first_d_an"], state["collapsed"]

    def save(self, path: Path) -> None:
        """Write the checkpoint atomically (a collective: every rank sends its RNG state, rank 0
        writes)."""
        rngs = distributed.all_objects(torch.get_rng_state(), "RNG states")
        if not distributed.is_main():
            return
        state = self.state_dict(rngs)
        atomic_write(path, lambda tmp: torch.save(state, tmp))

    def load(self, path: Path) -> bool:
        """Continue from the checkpoint at ``path`` when there is one (rank 0 reads it and
        sends it to every rank); return whether there was.

        Raises:
            ValueError: as :meth:`load_state_dict`.
        """
        state = None
        if distributed.is_main() and path.exists():
            state = torch.load(path, map_location="cpu", weights_only=False)
        state = distributed.broadcast(state, "checkpoint")
        if state is None:
            return False
        self.load_state_dict(state, path)
        return True


def run_settings(
    cfg: TrainConfig,
    steps_per_epoch: int,
    total: int,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What a checkpoint records of the run that wrote it, and what a resumed run must share:
    ``cfg`` but for :data:`RUN_ONLY_KEYS` (under "train"), the batches per epoch and the total
    steps (under "steps": they change with the data too), and ``settings``, as JSON values."""
    train = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUN_ONLY_KEYS}
    recorded = {
        "train": train,
        "steps": {"per_epoch": steps_per_epoch, "total": total},
        **(settings or {}),
    }
    return json.loads(json.dumps(recorded, default=str))


def settings_hash(recorded: Mapping[str, Any]) -> str:
    """SHA-256 (16 hex digits) of ``recorded`` as canonical JSON: equal for equal settings."""
    text = json.dumps(recorded, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_settings(path: Path, state: Mapping[str, Any], recorded: Mapping[str, Any]) -> None:
    """Refuse to resume the checkpoint ``state`` (read from ``path``) under other settings.

    Raises:
        ValueError: naming every setting that differs, as ``key old -> new``.
    """
    if "config" not in state:
        warnings.warn(
            f"{path} records no training settings (written by an older version): resuming "
            "without checking that this run uses the same ones",
            stacklevel=3,
        )
        return
    if state.get("config_hash") == settings_hash(recorded):
        return
    old, new = flatten(state["config"]), flatten(recorded)
    changes = [
        f"{key} {old.get(key, '(unset)')!r} -> {new.get(key, '(unset)')!r}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key, _UNSET) != new.get(key, _UNSET)
    ]
    if not changes:
        return
    raise ValueError(
        f"{path} was written by a run with other settings: {', '.join(changes)}. Resuming "
        "would mix two training schedules: resume with the settings it was written with, or "
        "train into a new folder (or without resume) to start again"
    )


_UNSET = object()


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one dict with dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _has_state(source: Any) -> bool:
    """Whether ``source`` has state of its own to checkpoint (``state_dict`` and
    ``load_state_dict``)."""
    return callable(getattr(source, "state_dict", None)) and callable(
        getattr(source, "load_state_dict", None)
    )
