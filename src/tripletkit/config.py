"""Run configuration: frozen dataclasses, YAML files, ``--set section.key=value`` overrides.

The core holds what every task shares: the loss and training sections, and the machinery that
reads a YAML file with overrides into a task's own config class
(:class:`tripletkit.faces.config.FacesConfig`, :class:`tripletkit.search.config.SearchConfig`).

Unknown keys are errors that list the valid ones, so a typo never silently falls back to a
default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ._io import write_text

T = TypeVar("T")


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


def read_settings(path: str | Path | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The YAML file (none: empty), then ``section.key=value`` overrides (values parsed as
    YAML, so ``train.lr=3e-4`` is a float and ``data.detect=true`` a bool), as nested dicts.

    Raises:
        ValueError: a missing or malformed file, or a malformed override.
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
    return raw


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """A config of class ``cls``: its defaults, then the YAML file, then the overrides (see
    :func:`read_settings`).

    Raises:
        ValueError: an unknown key (with the valid ones), a bad value, a malformed override,
            or a file whose ``task`` is not ``cls``'s.
    """
    raw = read_settings(path, overrides)
    where = str(path) if path is not None else "--set"
    default_task = next((f.default for f in fields(cls) if f.name == "task"), None)  # type: ignore[arg-type]
    if default_task is not None and raw.get("task", default_task) != default_task:
        raise ValueError(
            f"{where}: task {raw['task']!r} is not a {default_task} config ({cls.__name__})"
        )
    return from_dict(cls, raw, where=where)


def read_config(cls: type[T], path: str | Path) -> T:
    """The config of class ``cls`` stored in the YAML file ``path`` (a run's ``config.yaml``).

    Raises:
        ValueError: naming the file: missing, not YAML, an unknown key or a bad value.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"{path.parent} is not a training run (no {path.name}); run tripletkit train"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a YAML config ({err})") from None
    return from_dict(cls, raw or {}, where=str(path))


def write_config(path: str | Path, config: Any) -> Path:
    """``config`` (a dataclass) as YAML at ``path``, atomically."""
    return write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


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
