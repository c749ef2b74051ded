"""The training loop, domain-free: a model, a batch source and a triplet loss.

Per step: a P x K batch from the source, embeddings, the curriculum's offset (and margin), the
loss, an optimiser step and a learning-rate schedule step; a JSONL log line with the loss and
the mining statistics; a progress bar. Per epoch: an atomic checkpoint (model, optimiser,
scheduler, sampler and RNG state, the batch source's own state when it has one, and the
settings that shape training), so ``resume=True`` continues an interrupted run to the same
weights as an uninterrupted one (on CPU), and refuses to continue it under other settings
(another number of epochs, learning rate, batch shape, ...), which would mix two schedules.
A warning when the embedding collapses (the mean negative distance falls below a tenth of its
first value, as FaceNet warns hard negatives can cause).

Under ``torchrun`` (see :mod:`tripletkit.distributed`) the model is wrapped in
DistributedDataParallel, the source gathers the global batch, and only rank 0 writes the log and
the checkpoints; on resume rank 0 reads the checkpoint and sends it to every rank, each of which
restores its own RNG state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import distributed
from ._io import atomic_write, write_text
from .config import LossConfig, TrainConfig
from .curriculum import Curriculum, Schedule, default_curriculum
from .losses import TripletLoss, TripletStats

OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("cosine", "constant", "step")
# TrainConfig keys that say where and how a run executes, not what it computes: a run may resume
# with other values of these
RUN_ONLY_KEYS = ("threads", "device", "backend", "timeout")


class Sampler(Protocol):
    """Batches of dataset indices, reproducible from (seed, epoch)."""

    def __iter__(self) -> Iterator[list[int]]: ...
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...
    def state_dict(self) -> dict[str, int]: ...
    def load_state_dict(self, state: dict[str, int]) -> None: ...


class BatchSource(Protocol):
    """What the loop needs from a task: a sampler, and the loss of a batch (under DDP, of the
    global batch: the source gathers the ranks' embeddings with
    :func:`tripletkit.distributed.gather`).

    A source whose batches depend on state of its own (negatives mined again during training,
    say) also has ``state_dict() -> object`` and ``load_state_dict(state)``: the loop saves the
    first in every checkpoint (on rank 0, so it must not communicate) and restores it on resume
    (on every rank). They are optional and not part of this protocol's checked surface.
    """

    @property
    def sampler(self) -> Sampler: ...

    def loss(
        self,
        model: nn.Module,
        loss_fn: TripletLoss,
        indices: list[int],
        gen: torch.Generator,
        step: int,
    ) -> tuple[Tensor, TripletStats]:
        """The loss of the examples at ``indices``; ``gen`` drives augmentation. ``model``
        may be wrapped in DistributedDataParallel; inputs go to its device."""
        ...


@dataclass(frozen=True)
class TrainResult:
    """Steps run, where the log is, and whether the embedding collapsed at some point."""

    steps: int
    log: Path
    collapsed: bool


def fit(
    model: nn.Module,
    loss_fn: TripletLoss,
    source: BatchSource,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    curriculum: Callable[[int], Curriculum | None] | None = None,
    resume: bool = False,
    stop_after_epoch: int | None = None,
    progress: bool = True,
    desc: str = "train",
    on_step: Callable[[int, nn.Module], None] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` in place.

    Args:
        model: maps a batch of inputs to (B, d) embeddings.
        loss_fn: the triplet loss; its offset and margin follow the curriculum.
        source: sampler and batches.
        cfg: optimiser, schedule, epochs, seed.
        out_dir: where ``checkpoint.pt`` and ``train_log.jsonl`` go.
        curriculum: builds the curriculum from the total number of steps (None: fixed options).
        resume: continue from ``out_dir/checkpoint.pt`` when it exists, provided it was written
            with the same settings (see :func:`run_settings`).
        stop_after_epoch: stop after this epoch (0-based), as if interrupted; for tests.
        progress: show a progress bar.
        desc: the progress bar's label.
        on_step: called with (steps done, model) after every step (evaluation curves).
        settings: further settings that shape training, beyond ``cfg`` (say the loss and model
            config, as nested dicts of JSON values): recorded in the checkpoint and checked on
            resume like ``cfg``.

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError: on resume, when the checkpoint was written with other settings (naming
            each one that differs, old -> new), or by another number of processes.
    """
    out = Path(out_dir)
    main = distributed.is_main()
    if main:
        out.mkdir(parents=True, exist_ok=True)
    checkpoint, log_path = out / "checkpoint.pt", out / "train_log.jsonl"
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    distributed.check_same(dataclasses.asdict(cfg), "train config")
    device = training_device(cfg)
    model.to(device)
    steps_per_epoch = len(source.sampler)
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps > 0:
        total = min(total, cfg.max_steps)
    if total == 0:
        raise ValueError("no training batches: too few identities or examples for P x K")
    schedule = curriculum(total) if curriculum else None
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total))
    recorded = run_settings(cfg, steps_per_epoch, total, settings)

    start_epoch, step, first_d_an, collapsed = 0, 0, math.nan, False
    state = _load(checkpoint) if resume else None
    if state is not None:
        check_settings(checkpoint, state, recorded)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        source.sampler.load_state_dict(state["sampler"])
        _restore_source(checkpoint, source, state)
        torch.set_rng_state(state["rng"][distributed.rank()])
        start_epoch, step = state["epoch"] + 1, state["step"]
        first_d_an, collapsed = state["first_d_an"], state["collapsed"]
        if main:
            _truncate_log(log_path, step)
    elif main and log_path.exists():
        log_path.unlink()

    started = time.perf_counter()
    net = _wrap(model, device, source)
    net.train()
    bar = tqdm(total=total, initial=step, desc=desc, disable=not (progress and main), leave=False)
    with log_path.open("a") if main else contextlib.nullcontext() as log:
        for epoch in range(start_epoch, cfg.epochs):
            source.sampler.set_epoch(epoch)
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
            for batch in source.sampler:
                if step >= total:
                    break
                values = schedule.apply(loss_fn, step) if schedule else {}
                with distributed.communication_errors(f"training step {step}"):
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                        loss, stats = source.loss(net, loss_fn, batch, gen, step)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                optimizer.step()
                scheduler.step()
                value = loss.item()
                if math.isnan(first_d_an) and not math.isnan(stats.mean_d_an):
                    first_d_an = stats.mean_d_an
                if not collapsed and stats.mean_d_an < 0.1 * first_d_an:
                    collapsed = True
                    if main:
                        warnings.warn(
                            f"step {step}: the embedding is collapsing (mean negative distance "
                            f"{stats.mean_d_an:.4f}, was {first_d_an:.4f}); try easier mining "
                            "(semi-hard, a curriculum) or a lower learning rate",
                            stacklevel=2,
                        )
                record = {
                    "step": step,
                    "epoch": epoch,
                    "seconds": round(time.perf_counter() - started, 4),
                    "loss": value,
                    "lr": scheduler.get_last_lr()[0],
                    "offset": loss_fn.offset,
                    "margin": loss_fn.margin,
                    **stats.as_dict(),
                    "collapsed": collapsed,
                    **{f"curriculum_{k}": v for k, v in values.items()},
                }
                if log is not None:
                    log.write(json.dumps(record) + "\n")
                step += 1
                if on_step is not None:
                    on_step(step, model)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{value:.4f}",
                    active=f"{stats.active_fraction:.2f}",
                    t=f"{loss_fn.offset:.3f}",
                )
            rngs = distributed.all_objects(torch.get_rng_state(), "RNG states")
            if log is not None:
                log.flush()
                state = {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "sampler": source.sampler.state_dict(),
                    "rng": rngs,
                    "epoch": epoch,
                    "step": step,
                    "first_d_an": first_d_an,
                    "collapsed": collapsed,
                    "config": recorded,
                    "config_hash": settings_hash(recorded),
                }
                if _has_state(source):
                    state["source"] = source.state_dict()  # type: ignore[attr-defined]
                _save(checkpoint, state)
            if step >= total or (stop_after_epoch is not None and epoch >= stop_after_epoch):
                break
    bar.close()
    model.eval()
    return TrainResult(steps=step, log=log_path, collapsed=collapsed)


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


def _has_state(source: BatchSource) -> bool:
    """Whether ``source`` has state of its own to checkpoint (``state_dict`` and
    ``load_state_dict``)."""
    return callable(getattr(source, "state_dict", None)) and callable(
        getattr(source, "load_state_dict", None)
    )


def _restore_source(path: Path, source: BatchSource, state: Mapping[str, Any]) -> None:
    """Give ``source`` its checkpointed state, warning when the checkpoint holds none."""
    if not _has_state(source):
        return
    if "source" not in state:
        warnings.warn(
            f"{path} holds no state of the batch source (written by an older version): it "
            "starts again from its first state",
            stacklevel=3,
        )
        return
    source.load_state_dict(state["source"])  # type: ignore[attr-defined]


def training_device(cfg: TrainConfig) -> torch.device:
    """The configured device; under torchrun each rank takes the GPU of its local rank."""
    if cfg.device == "cpu":
        return torch.device("cpu")
    if cfg.device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("train.device=cuda but no CUDA device is available")
        return torch.device("cuda", distributed.local_rank())
    raise ValueError(f"train.device must be 'cpu' or 'cuda', got {cfg.device!r}")


def _wrap(model: nn.Module, device: torch.device, source: BatchSource) -> nn.Module:
    """DistributedDataParallel under torchrun, the model itself otherwise. On GPUs BatchNorm
    becomes SyncBatchNorm (statistics of the global batch); PyTorch has no CPU SyncBatchNorm,
    so on CPU each rank normalises with its own share's statistics, as plain DDP does."""
    if not distributed.active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)

    return distributed.collective(
        "DistributedDataParallel setup (parameter broadcast)",
        lambda: DistributedDataParallel(
            model,
            device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=getattr(source, "unused_parameters", False),
            forward_sync_buffers=False,  # BatchNorm statistics stay per rank (see above)
        ),
    )


def _load(path: Path) -> dict | None:
    """Rank 0 reads the checkpoint (None if there is none) and sends it to every rank."""
    state = None
    if distributed.is_main() and path.exists():
        state = torch.load(path, map_location="cpu", weights_only=False)
    state = distributed.broadcast(state, "checkpoint")
    if state is not None and len(state["rng"]) != distributed.world_size():
        raise ValueError(
            f"{path} was written by {len(state['rng'])} process(es); resume it with as many "
            f"(this run has {distributed.world_size()})"
        )
    return state


def _save(path: Path, state: dict) -> None:
    def write(tmp: Path) -> None:
        torch.save(state, tmp)

    atomic_write(path, write)


def loss_from_config(loss: LossConfig) -> TripletLoss:
    """The triplet loss with the configured options."""
    return TripletLoss(
        margin=loss.margin,
        mining=loss.mining,
        offset=loss.offset,
        fallback=loss.fallback,
        distance=loss.distance,
        soft=loss.soft,
        reduction=loss.reduction,
    )


def curriculum_from_config(loss: LossConfig) -> Callable[[int], Curriculum | None]:
    """Builds the configured offset (and margin) curriculum once the number of steps is known.

    Raises:
        ValueError: an unknown ``loss.curriculum``.
    """

    def make(total: int) -> Curriculum | None:
        margin = None
        if loss.margin_end is not None:
            margin = Schedule("linear", loss.margin, loss.margin_end, max(1, total))
        if loss.mining != "semi-hard":  # the offset is semi-hard's: nothing else to move
            return None if margin is None else Curriculum(Schedule("constant", 0.0), margin)
        if loss.curriculum == "none":
            offset = Schedule("constant", loss.offset)
        elif loss.curriculum == "default":
            offset = default_curriculum(total, loss.margin).offset
        else:
            steps = max(1, int(total * loss.curriculum_fraction))
            offset = Schedule(loss.curriculum, loss.offset_start, loss.offset, steps)
        if margin is None and loss.curriculum == "none":
            return None
        return Curriculum(offset, margin)

    if loss.curriculum not in ("none", "default", "linear", "cosine", "step"):
        raise ValueError(
            "loss.curriculum must be none, default, linear, cosine or step, got "
            f"{loss.curriculum!r}"
        )
    return make


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD with momentum, from the config."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=True,
        )
    raise ValueError(f"train.optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}")


def lr_lambda(cfg: TrainConfig, total: int) -> Callable[[int], float]:
    """Linear warm-up over ``warmup_steps``, then cosine to 0, constant, or x0.1 at 50% and 75%."""
    if cfg.schedule not in LR_SCHEDULES:
        raise ValueError(f"train.schedule must be one of {LR_SCHEDULES}, got {cfg.schedule!r}")
    warm = max(0, min(cfg.warmup_steps, total - 1))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        if cfg.schedule == "step":
            return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
        return 1.0

    return factor


def _truncate_log(path: Path, steps: int) -> None:
    """Keep the first ``steps`` log lines (those the checkpoint covers)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)[:steps]
    write_text(path, "".join(lines))
