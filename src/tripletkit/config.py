"""Run configuration: frozen dataclasses, YAML files, ``--set section.key=value`` overrides.

Unknown keys are errors that list the valid ones, so a typo never silently falls back to a
default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how identities are split.

    Attributes:
        source: "orl" (the built-in AT&T faces) or a folder with one sub-folder per identity.
        folds: identity folds; each fold holds out 1/folds of the identities for testing.
        fold: which folds to run: "all", an index, or "none" (train on every identity).
        seed: seed of the identity split.
        height: input height in pixels (images are resized).
        width: input width in pixels.
        channels: 1 (grayscale) or 3 (RGB).
        strict: an unreadable image is an error instead of a warning.
        pairs: optional LFW-style pairs file for verification.
        detect: find and crop the largest face in each image first (dlib's HOG detector).
        detector: the face detector that cuts the dlib backbone's aligned chips: "hog" (dlib's
            frontal HOG detector) or "cnn" (its MMOD CNN: about 10 times slower, and it finds
            the faces of low-resolution images that HOG misses).
        val_people: how many of each fold's training people are held out as validation
            people (seeded by ``seed`` and the fold): every choice (thresholds, steps, recipe)
            is made on them; 0: none (thresholds then come from the training people).
        lowres: the resolutions the experiment runs at, as shrink factors: 1 is the images as
            they are, 4 each image shrunk 4x with bilinear filtering and enlarged back
            (:func:`tripletkit.data.chips.low_resolution`). The dlib backbone runs every
            factor (methods of factor f > 1 are suffixed "-lowres", or "-lowres<f>" when there
            are several); the scratch backbone only the first.
    """

    source: str = "orl"
    folds: int = 4
    fold: str = "all"
    seed: int = 0
    height: int = 56
    width: int = 46
    channels: int = 1
    strict: bool = False
    pairs: str | None = None
    detect: bool = False
    detector: str = "hog"
    val_people: int = 0
    lowres: tuple[int, ...] = (1,)


@dataclass(frozen=True)
class ModelConfig:
    """The network: ``backbone`` "scratch" or "dlib".

    "scratch": a compact residual CNN trained from scratch: ``stages`` widths, ``blocks`` per
    stage, ``dim``-d output, and an "avg" (global average pooling) or "flatten" (spatial) head.

    "dlib": dlib's pretrained face descriptor on aligned 150 x 150 chips, fine-tuned with the
    triplet loss: ``train_levels`` of its 5 levels from the top (and its final linear layer)
    train, 0 keeps it frozen; the levels below are frozen and their output computed once.
    ``mirror``: fine-tuning also sees each chip mirrored. ``mix_resolutions``: fine-tune one
    model per fold on the chips of every ``data.lowres`` factor together (the same person at
    several resolutions in one batch) instead of one model per factor. ``eval_every``: log
    VAL@1e-3 and EER on the validation people every that many steps (0: at the start and the
    end only). ``far``: the false-accept rate of the verification threshold.
    """

    backbone: str = "scratch"
    train_levels: int = 2
    mirror: bool = True
    mix_resolutions: bool = False
    eval_every: int = 0
    far: float = 1e-3
    stages: tuple[int, ...] = (16, 32, 64, 128)
    blocks: int = 1
    dim: int = 128
    head: str = "flatten"


@dataclass(frozen=True)
class LossConfig:
    """Triplet loss options (see :func:`tripletkit.triplet_loss`) and the offset curriculum.

    ``curriculum`` is "default" (offset from margin / 2 to 0 over the first half of training),
    "none" (constant ``offset``), or a schedule kind ("linear", "cosine", "step") moving the
    offset from ``offset_start`` to ``offset`` over ``curriculum_fraction`` of the steps.
    With ``margin_end`` the margin also moves, linearly from ``margin`` to ``margin_end`` over
    all of training (once every training triplet is easy the hinge has no gradient left; a
    growing margin keeps one).
    """

    margin: float = 0.2
    mining: str = "semi-hard"
    offset: float = 0.0
    fallback: str = "skip"
    distance: str = "squared"
    soft: bool = False
    reduction: str = "mean"
    curriculum: str = "default"
    offset_start: float = 0.1
    curriculum_fraction: float = 0.5
    margin_end: float | None = None


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation: batches, optimiser, learning-rate schedule, augmentation.

    Faces use P x K batches (``p`` identities x ``k`` images) and ``augment``; search uses
    ``batch_size`` queries. ``max_steps`` > 0 stops training early (after a checkpoint).

    Under ``torchrun`` the batch is global: each of the N ranks takes ``p / N`` identities (or
    ``batch_size / N`` queries) and mines over the whole batch, so a config trains the same on
    any number of processes. ``timeout`` bounds every wait for another rank (seconds);
    ``backend`` is "gloo", "nccl" or "auto" (NCCL when ``device`` is "cuda"). ``device`` is
    "cpu" or "cuda" (each rank its own GPU); ``amp`` runs the forward pass in bfloat16
    autocast (the loss itself is computed in float32).
    """

    epochs: int = 300
    max_steps: int = 0
    p: int = 30
    k: int = 5
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 5e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_steps: int = 50
    seed: int = 0
    augment: bool = True
    threads: int = 0
    device: str = "cpu"
    amp: bool = False
    backend: str = "auto"
    timeout: float = 600.0


@dataclass(frozen=True)
class Config:
    """A whole run."""

    name: str = "demo"
    task: str = "faces"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ablation: tuple[str, ...] = ()


@dataclass(frozen=True)
class TextDataConfig:
    """A BEIR folder, or "wiki" (built from the Wikipedia summaries into ``cache``)."""

    source: str = "wiki"
    seed: int = 0
    cache: str = "runs/data"
    train_split: str = "train"
    eval_split: str = "test"
    dev_split: str = "dev"


@dataclass(frozen=True)
class EncoderConfig:
    """The sentence-transformers encoder: a folder (None: all-MiniLM-L6-v2), tokens per text
    and encoding batch size."""

    path: str | None = None
    max_seq_length: int = 128
    batch_size: int = 64


@dataclass(frozen=True)
class NegativesConfig:
    """Corpus-level negatives per training query (see :mod:`tripletkit.negatives`)."""

    n: int = 1
    r_min: int = 0
    r_max: int = 50
    max_score: float | None = None
    relative_margin: float | None = 0.05
    absolute_margin: float | None = None
    remine_every: int = 0


@dataclass(frozen=True)
class SearchConfig:
    """A semantic-search run: data, encoder, negatives, loss, training, and the arms.

    Arms (:mod:`tripletkit.tasks.search_arms`): "bm25", "bm25_standard", "base" (zero-shot),
    "in_batch" (no mined negatives), "mined_naive", "mined_unfiltered", "mined_qrels_only",
    "mined_margin_only", "mined_filtered". Each trained arm runs once per seed of ``seeds``
    (empty: ``train.seed`` alone), an arm listed in ``one_seed`` with the first seed only.
    """

    name: str = "search-demo"
    task: str = "search"
    data: TextDataConfig = field(default_factory=TextDataConfig)
    model: EncoderConfig = field(default_factory=EncoderConfig)
    negatives: NegativesConfig = field(default_factory=NegativesConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    index: str = "flat"
    arms: tuple[str, ...] = ("bm25", "base", "mined_filtered")
    eval_every: int = 0
    seeds: tuple[int, ...] = ()
    one_seed: tuple[str, ...] = ()


TASKS = {"faces": Config, "search": SearchConfig}


def load_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), task: str | None = None
) -> Any:
    """Defaults, then the YAML file, then ``section.key=value`` overrides (values parsed as
    YAML, so ``train.lr=3e-4`` is a float and ``data.detect=true`` a bool). The task ("faces"
    or "search") comes from ``task``, else the file's ``task`` key, else "faces".

    Raises:
        ValueError: an unknown key (with the valid ones), a bad value, or a malformed override.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: the top level must be a mapping of sections")
        raw = loaded
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects section.key=value, got {item!r}")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    chosen = task or raw.get("task") or "faces"
    if chosen not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {chosen!r}")
    raw["task"] = chosen
    return from_dict(TASKS[chosen], raw, where=str(path) if path else "--set")


def from_dict(cls: type[T], raw: Mapping[str, Any], where: str = "config", path: str = "") -> T:
    """Build dataclass ``cls`` from a nested mapping, checking keys and value types.

    Errors read ``<where>: <path.key>: <problem>``.
    """
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: {path or 'top level'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        section = f"section {path.rstrip('.')!r}" if path else "the top level"
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(repr(f'{path}{k}') for k in unknown)} in "
            f"{section}; valid keys: {', '.join(known)}"
        )
    values: dict[str, Any] = {}
    for name, value in raw.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            values[name] = from_dict(typing.cast(type, kind), value or {}, where, f"{path}{name}.")
        else:
            values[name] = _coerce(value, kind, f"{where}: {path}{name}")
    return cls(**values)


def to_dict(config: Any) -> dict[str, Any]:
    """A plain nested dict (tuples as lists), e.g. for YAML or JSON."""
    out = dataclasses.asdict(config)
    return _lists(out)


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


def _coerce(value: Any, kind: Any, where: str) -> Any:
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if kind is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    return value
