"""The training loop, domain-free: a model, a batch source and a triplet loss.

Per step (:func:`train_step`): a P x K batch from the source, embeddings, the curriculum's
offset (and margin) handed to the loss with the batch (:class:`StepLoss`), the loss, an
optimiser step and a learning-rate schedule step. Then a JSONL log line with the loss and the
mining statistics (:func:`log_record`), a progress bar, and, with an :class:`Evaluation`, a
point of the evaluation curve. Per epoch: an atomic checkpoint of the
:class:`~tripletkit.checkpoint.TrainState`, so ``resume=True`` continues an interrupted run to
the same weights, log and curve as an uninterrupted one (on CPU), and refuses to continue it
under other settings (another number of epochs, learning rate, batch shape, ...), which would
mix two schedules. A warning when the embedding collapses (the mean negative distance falls
below a tenth of its first value, as FaceNet warns hard negatives can cause).

Under ``torchrun`` (see :mod:`tripletkit.distributed`) the model is wrapped in
DistributedDataParallel, the source gathers the global batch, and only rank 0 writes the log,
the curve and the checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import distributed
from ._io import write_text
from .checkpoint import Sampler, TrainState, run_settings
from .config import LossConfig, TrainConfig
from .curriculum import Curriculum, Schedule, default_curriculum
from .losses import TripletLoss, TripletStats

OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("cosine", "constant", "step")
CHECKPOINT = "checkpoint.pt"
LOG = "train_log.jsonl"


@dataclass(frozen=True)
class StepLoss:
    """The triplet loss with one step's curriculum values: what a batch source calls.

    Attributes:
        loss: the configured loss.
        margin, offset: this step's values (the loss's own when no curriculum moves them).
    """

    loss: TripletLoss
    margin: float
    offset: float

    def __call__(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, TripletStats]:
        return self.loss(embeddings, labels, margin=self.margin, offset=self.offset)

    def relevance(
        self, queries: Tensor, documents: Tensor, relevant: Tensor
    ) -> tuple[Tensor, TripletStats]:
        """The query x document loss with this step's values."""
        return self.loss.relevance(
            queries, documents, relevant, margin=self.margin, offset=self.offset
        )

    def cross(
        self, anchors: Tensor, labels: Tensor, candidates: Tensor, candidate_labels: Tensor
    ) -> tuple[Tensor, TripletStats]:
        """The loss between two embedding sets with this step's values."""
        return self.loss.cross(
            anchors, labels, candidates, candidate_labels, margin=self.margin, offset=self.offset
        )


class BatchSource(Protocol):
    """What the loop needs from a task: a sampler, and the loss of a batch (under DDP, of the
    global batch: the source gathers the ranks' embeddings with
    :func:`tripletkit.distributed.gather`).

    A source whose batches depend on state of its own (negatives mined again during training,
    say) also has ``state_dict() -> object`` and ``load_state_dict(state)``: the checkpoint
    holds the first (written on rank 0, so it must not communicate) and resuming restores it
    (on every rank). They are optional and not part of this protocol's checked surface.
    """

    @property
    def sampler(self) -> Sampler: ...

    def loss(
        self,
        model: nn.Module,
        loss_fn: StepLoss,
        indices: list[int],
        gen: torch.Generator,
        step: int,
    ) -> tuple[Tensor, TripletStats]:
        """The loss of the examples at ``indices``; ``gen`` drives augmentation. ``model``
        may be wrapped in DistributedDataParallel; inputs go to its device."""
        ...


@dataclass(frozen=True)
class Evaluation:
    """A curve of scores of the model in training.

    ``score(model)`` (the model itself, not its DDP wrapper; called on every rank, so it may
    communicate) gives {name: value} at step 0, every ``every`` steps (0: none between) and
    after the last step; rank 0 writes one JSON line per point, ``{"step": s, **scores}``, to
    ``file`` in the run folder. On resume the curve keeps its points up to the checkpoint and
    goes on, so it reads as if training had never stopped.
    """

    score: Callable[[nn.Module], dict[str, float]]
    every: int = 0
    file: str = "eval_log.jsonl"

    def due(self, step: int, total: int) -> bool:
        """Whether a point is taken once ``step`` steps are done."""
        return step == 0 or step == total or bool(self.every and step % self.every == 0)


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
    evaluation: Evaluation | None = None,
    resume: bool = False,
    stop_after_epoch: int | None = None,
    progress: bool = True,
    desc: str = "train",
    settings: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` in place.

    Args:
        model: maps a batch of inputs to (B, d) embeddings.
        loss_fn: the triplet loss; the curriculum moves its offset and margin per step.
        source: sampler and batches.
        cfg: optimiser, schedule, epochs, seed.
        out_dir: where ``checkpoint.pt``, ``train_log.jsonl`` and the evaluation curve go.
        curriculum: builds the curriculum from the total number of steps (None: fixed options).
        evaluation: a curve of scores during training (None: none).
        resume: continue from ``out_dir/checkpoint.pt`` when it exists, provided it was written
            with the same settings (see :func:`~tripletkit.checkpoint.run_settings`).
        stop_after_epoch: stop after this epoch (0-based), as if interrupted; for tests.
        progress: show a progress bar.
        desc: the progress bar's label.
        settings: further settings that shape training, beyond ``cfg`` (say the loss and model
            config, as nested dicts of JSON values): recorded in the checkpoint and checked on
            resume like ``cfg``.

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError: no training batch; on resume, a checkpoint written with other settings
            (naming each one that differs, old -> new) or by another number of processes.
    """
    out = Path(out_dir)
    main = distributed.is_main()
    if main:
        out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    distributed.check_same(dataclasses.asdict(cfg), "train config")
    device = training_device(cfg)
    model.to(device)
    per_epoch = len(source.sampler)
    total = (
        cfg.epochs * per_epoch if cfg.max_steps <= 0 else min(cfg.epochs * per_epoch, cfg.max_steps)
    )
    if total == 0:
        raise ValueError("no training batches: too few identities or examples for P x K")
    schedule = curriculum(total) if curriculum else None
    optimizer = make_optimizer(model, cfg)
    state = TrainState(
        model,
        optimizer,
        torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total)),
        source.sampler,
        source,
        run_settings(cfg, per_epoch, total, settings),
    )
    resumed = resume and state.load(out / CHECKPOINT)
    curve = out / evaluation.file if evaluation else None
    net = _wrap(model, device, source)
    started = time.perf_counter()
    with (
        _jsonl(out / LOG, main, keep=state.step if resumed else 0) as log,
        _jsonl(curve, main, keep=state.step if resumed else -1, by_step=True) as points,
        _bar(total, state.step, desc, progress and main) as bar,
    ):
        if evaluation and not resumed:
            _evaluate(evaluation, model, 0, points)
        net.train()
        for epoch in range(state.epoch, cfg.epochs):
            source.sampler.set_epoch(epoch)
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
            for batch in source.sampler:
                if state.step >= total:
                    break
                step_loss = _step_loss(loss_fn, schedule, state.step)
                loss, stats = train_step(net, step_loss, source, batch, gen, state, cfg.amp)
                _watch_collapse(state, stats, main)
                record = log_record(state, epoch, loss.item(), stats, step_loss, schedule, started)
                _write(log, record)
                state.step += 1
                bar.update(1)
                bar.set_postfix(
                    loss=f"{record['loss']:.4f}",
                    active=f"{stats.active_fraction:.2f}",
                    t=f"{step_loss.offset:.3f}",
                )
                if evaluation and evaluation.due(state.step, total):
                    _evaluate(evaluation, model, state.step, points)
                    net.train()
            state.epoch = epoch + 1
            if log is not None:
                log.flush()
            state.save(out / CHECKPOINT)
            if state.step >= total or (stop_after_epoch is not None and epoch >= stop_after_epoch):
                break
    model.eval()
    return TrainResult(steps=state.step, log=out / LOG, collapsed=state.collapsed)


def train_step(
    net: nn.Module,
    loss_fn: StepLoss,
    source: BatchSource,
    batch: list[int],
    gen: torch.Generator,
    state: TrainState,
    amp: bool,
) -> tuple[Tensor, TripletStats]:
    """One optimiser step on ``batch``: the source's loss (bfloat16 autocast with ``amp``), the
    backward, the optimiser and the learning-rate schedule."""
    device = next(net.parameters()).device
    with distributed.communication_errors(f"training step {state.step}"):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, stats = source.loss(net, loss_fn, batch, gen, state.step)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
    state.optimizer.step()
    state.scheduler.step()
    return loss, stats


def log_record(
    state: TrainState,
    epoch: int,
    loss: float,
    stats: TripletStats,
    loss_fn: StepLoss,
    schedule: Curriculum | None,
    started: float,
) -> dict[str, Any]:
    """The log line of the step just taken (``state.step`` not yet counted)."""
    moved = schedule.at(state.step) if schedule else {}
    return {
        "step": state.step,
        "epoch": epoch,
        "seconds": round(time.perf_counter() - started, 4),
        "loss": loss,
        "lr": state.scheduler.get_last_lr()[0],
        "offset": loss_fn.offset,
        "margin": loss_fn.margin,
        **stats.as_dict(),
        "collapsed": state.collapsed,
        **{f"curriculum_{k}": v for k, v in moved.items()},
    }


def _step_loss(loss_fn: TripletLoss, schedule: Curriculum | None, step: int) -> StepLoss:
    """The loss with the curriculum's values at ``step`` (its own where none moves them)."""
    values = schedule.at(step) if schedule else {}
    return StepLoss(
        loss_fn, values.get("margin", loss_fn.margin), values.get("offset", loss_fn.offset)
    )


def _watch_collapse(state: TrainState, stats: TripletStats, main: bool) -> None:
    """Keep the first mean negative distance; warn once when it falls below a tenth of it."""
    if math.isnan(state.first_d_an) and not math.isnan(stats.mean_d_an):
        state.first_d_an = stats.mean_d_an
    if not state.collapsed and stats.mean_d_an < 0.1 * state.first_d_an:
        state.collapsed = True
        if main:
            warnings.warn(
                f"step {state.step}: the embedding is collapsing (mean negative distance "
                f"{stats.mean_d_an:.4f}, was {state.first_d_an:.4f}); try easier mining "
                "(semi-hard, a curriculum) or a lower learning rate",
                stacklevel=3,
            )


def ended_collapsed(log: Path) -> str | None:
    """Why the run logged in ``log`` (a ``train_log.jsonl``) ended with a collapsed embedding
    (its last step's mean negative distance below a tenth of its first's), or None: a model that
    is not worth using even though it was saved. A missing or empty log is None."""
    first = last = math.nan
    if not log.is_file():
        return None
    with open(log, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            d_an = json.loads(line).get("mean_d_an", math.nan)
            if d_an is None or math.isnan(d_an):
                continue
            first = d_an if math.isnan(first) else first
            last = d_an
    if math.isnan(first) or not last < 0.1 * first:
        return None
    return (
        f"the embedding collapsed (mean negative distance {last:.4f} at the last step, "
        f"{first:.4f} at the first; logged in {log})"
    )


def _evaluate(evaluation: Evaluation, model: nn.Module, step: int, points: IO[str] | None) -> None:
    """One point of the curve (computed on every rank, written by rank 0)."""
    was_training = model.training
    model.eval()
    scores = evaluation.score(model)
    _write(points, {"step": step, **scores})
    if points is not None:
        points.flush()
    model.train(was_training)


def _write(handle: IO[str] | None, record: dict[str, Any]) -> None:
    if handle is not None:
        handle.write(json.dumps(record) + "\n")


@contextmanager
def _jsonl(
    path: Path | None, main: bool, *, keep: int, by_step: bool = False
) -> Iterator[IO[str] | None]:
    """A JSONL file to append to (None off rank 0 or without ``path``). A fresh run starts
    it empty; a resumed one keeps what the checkpoint covers: the first ``keep`` lines, or
    with ``by_step`` the records with ``step <= keep`` (``keep`` < 0: none)."""
    if path is None or not main:
        yield None
        return
    if keep <= 0 and not (by_step and keep == 0):
        path.unlink(missing_ok=True)
    elif path.exists():
        lines = path.read_text().splitlines(keepends=True)
        if by_step:
            lines = [x for x in lines if x.strip() and json.loads(x)["step"] <= keep]
        else:
            lines = lines[:keep]
        write_text(path, "".join(lines))
    with path.open("a") as handle:
        yield handle


@contextmanager
def _bar(total: int, initial: int, desc: str, show: bool) -> Iterator[Any]:
    bar = tqdm(total=total, initial=initial, desc=desc, disable=not show, leave=False)
    try:
        yield bar
    finally:
        bar.close()


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
    """Linear warm-up over ``warmup_steps``, then cosine to 0, constant, or x0.1 at 50% and 75%.

    The warm-up keeps its length in a run shorter than it (``train.max_steps=2``): such a run
    ends while the learning rate still rises, instead of taking its first step at the full
    rate, which collapses a pretrained network.
    """
    if cfg.schedule not in LR_SCHEDULES:
        raise ValueError(f"train.schedule must be one of {LR_SCHEDULES}, got {cfg.schedule!r}")
    warm = max(0, cfg.warmup_steps)

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
