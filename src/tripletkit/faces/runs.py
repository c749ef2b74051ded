"""Who is in which part of a faces run, and the record that keeps a run honest.

Each identity fold holds out a test part of the people; from the rest, ``data.val_people``
validation people are carved (seeded by ``data.seed`` and the fold's number, so ``data.fold=N``
alone draws the people of fold N of a full run), and the others train.
Every choice (thresholds, training steps, the recipe) is made on validation people; test
people are read only for the final table.

A run records in ``run.json``: the hash of the config settings that shape its results, those
settings, a digest of the data files, and the names of the train / validation / test people of
each fold. ``evaluate`` and a resumed ``train`` check the run against today's config and data
and refuse it, naming what differs, when they no longer match.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import write_json
from ..checkpoint import RUN_ONLY_KEYS, flatten, settings_hash
from ..config import to_dict
from .config import DataConfig, FacesConfig
from .images import ImageSet, identity_folds

RECORD = "run.json"
# FacesConfig keys that do not change what a run computes: which folds run, evaluation pairs,
# strictness about bad files, ablation arms (each has its own models), where and how it runs
# (the inference runtime too).
FREE_KEYS = (
    "name",
    "ablation",
    "data.fold",
    "data.pairs",
    "data.strict",
    "model.runtime",
    *(f"train.{k}" for k in RUN_ONLY_KEYS),
)


@dataclass(frozen=True)
class Fold:
    """Example indices of one identity fold: training, test and validation people's images."""

    name: str
    train: np.ndarray
    test: np.ndarray
    val: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def folds(cfg: DataConfig, data: ImageSet) -> list[Fold]:
    """The configured identity folds (``fold`` "all", an index, or "none": train on all), each
    with ``cfg.val_people`` validation people carved from its training people.

    Raises:
        ValueError: a bad ``data.fold``, or too few training people for ``data.val_people``
            (at least two must train).
    """
    labels = data.labels.numpy()
    everyone = np.arange(len(labels))
    people = np.unique(labels)
    if cfg.fold == "none":
        numbers, parts = [0], [people[:0]]
    else:
        parts = identity_folds(len(data.names), cfg.folds, cfg.seed)
        if cfg.fold == "all":
            numbers = list(range(cfg.folds))
        elif cfg.fold.isdigit() and int(cfg.fold) < cfg.folds:
            numbers = [int(cfg.fold)]
        else:
            raise ValueError(
                f"data.fold must be 'all', 'none' or 0..{cfg.folds - 1}, got {cfg.fold!r}"
            )
    out = []
    for k in numbers:
        # Seeded by the fold's number, so data.fold=k alone draws the people of fold k of a
        # full run.
        name = "all" if cfg.fold == "none" else f"fold{k}"
        test_people = parts[k]
        trainable = np.setdiff1d(people, test_people)
        val_people = validation_people(trainable, cfg.val_people, [cfg.seed, k])
        test, val = np.isin(labels, test_people), np.isin(labels, val_people)
        out.append(Fold(name, everyone[~test & ~val], everyone[test], everyone[val]))
    return out


def validation_people(people: np.ndarray, n: int, seed: list[int]) -> np.ndarray:
    """``n`` of ``people`` drawn with ``numpy.random.default_rng(seed)``, sorted.

    Raises:
        ValueError: naming ``data.val_people`` when fewer than two people would be left to
            train.
    """
    if n < 0 or n > len(people) - 2:
        raise ValueError(
            f"data.val_people must be in 0..{max(0, len(people) - 2)} (a fold has "
            f"{len(people)} training people and at least 2 must train), got {n}"
        )
    return np.sort(np.random.default_rng(seed).choice(people, size=n, replace=False))


def check_batches(cfg: FacesConfig, data: ImageSet, plan: list[Fold]) -> None:
    """Refuse, before anything is written, a batch of ``train.p`` (or, with camera adaptation,
    ``adapt.p``) identities that a fold's training people cannot fill (each needs two images or
    more to be an anchor).

    Raises:
        ValueError: naming the setting, the fold, how many people it trains on and why, and the
            largest value that fits.
    """
    labels = data.labels.numpy()
    wanted = [("train.p", cfg.train.p)]
    if cfg.adapt.levels:
        wanted.append(("adapt.p", cfg.adapt.p))
    for fold in plan:
        counts = np.bincount(labels[fold.train], minlength=len(data.names))
        usable = int((counts >= 2).sum())
        for key, p in wanted:
            if usable >= p:
                continue
            held = (
                f"{len(np.unique(labels[fold.test]))} held out for test, "
                f"{len(np.unique(labels[fold.val]))} for validation"
            )
            raise ValueError(
                f"{key}={p} identities per batch, but {fold.name} trains on "
                f"{usable} people with two images or more ({len(data.names)} in the data: "
                f"{held}): set {key} to at most {usable} (--set {key}={max(2, usable)}), "
                "or lower data.val_people or raise data.folds"
            )


def split_names(data: ImageSet, plan: list[Fold]) -> dict[str, dict[str, list[str]]]:
    """fold -> {"train", "validation", "test"} -> sorted person names."""

    def names(index: np.ndarray) -> list[str]:
        return sorted({data.names[i] for i in data.labels[index].tolist()})

    return {
        f.name: {"train": names(f.train), "validation": names(f.val), "test": names(f.test)}
        for f in plan
    }


def shaping_settings(cfg: FacesConfig) -> dict[str, Any]:
    """The config as a flat dict of dotted keys, less :data:`FREE_KEYS`."""
    flat = flatten(to_dict(cfg))
    return {k: v for k, v in flat.items() if k not in FREE_KEYS}


def files_digest(paths: list[str]) -> str:
    """SHA-256 (16 hex digits) of the files' names (as given) and bytes, in order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.encode() + b"\0")
        try:
            digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
        except OSError as err:
            digest.update(f"unreadable {err.strerror}".encode())
    return digest.hexdigest()[:16]


def make_record(cfg: FacesConfig, data: ImageSet, plan: list[Fold]) -> dict[str, Any]:
    """What ``run.json`` holds for this config, data and folds."""
    settings = shaping_settings(cfg)
    return {
        "config_hash": settings_hash(settings),
        "config": settings,
        "data_digest": files_digest(sorted(data.paths)),
        "images": len(data),
        "folds": split_names(data, plan),
    }


def write_record(run: Path, record: dict[str, Any]) -> None:
    """``run/run.json``, atomically."""
    write_json(run / RECORD, record)


def check_record(run: Path, record: dict[str, Any], *, action: str) -> None:
    """Refuse ``action`` on ``run`` when its ``run.json`` differs from ``record``.

    Folds in ``record`` but not in the stored one (a run of one fold, extended) pass.

    Raises:
        ValueError: naming each config key that differs (old -> new), the data files, or the
            fold and part whose people differ; or a missing or unreadable ``run.json``.
    """
    path = run / RECORD
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise ValueError(
            f"{path} is missing: this run predates run records or was not trained to the end; "
            "train it again"
        ) from None
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    problems = _differences(stored, record)
    if problems:
        raise ValueError(f"cannot {action} {run}: it was trained with other " + "; ".join(problems))


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    problems = []
    if old.get("config_hash") != new["config_hash"]:
        a, b = old.get("config", {}), new["config"]
        keys = sorted(k for k in a.keys() | b.keys() if a.get(k, "(unset)") != b.get(k, "(unset)"))
        listed = ", ".join(f"{k} {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in keys)
        problems.append(f"config settings: {listed or 'hash ' + str(old.get('config_hash'))}")
    if old.get("data_digest") != new["data_digest"]:
        problems.append(
            f"data: the image files differ ({old.get('images')} images then, "
            f"{new['images']} now, or their contents changed)"
        )
    for fold, parts in new["folds"].items():
        before = old.get("folds", {}).get(fold)
        if before is None:
            continue
        for part, names in parts.items():
            if before.get(part) != names:
                problems.append(f"people: {fold} {part} was {before.get(part)}, now {names}")
    return problems
