"""Faces: train on some identities, evaluate FaceNet's protocols on held-out ones.

A run folder holds ``config.yaml``, one model folder per identity fold (``fold0`` ...), one per
ablation arm and fold (``ablation/<arm>/fold0`` ...), and after :func:`evaluate`
``metrics.json``, ``report.md`` and the figures.

A model folder holds the training checkpoint and log, and once training is over the model:
``model.safetensors`` and ``model.json``, which names the weights file. The folder is written
as one unit (:func:`tripletkit._io.atomic_folder`), so a reader, and a resumed run, finds either
the folder before the model or the folder with the complete model, never weights without their
``model.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file
from sklearn.decomposition import PCA
from torch import Tensor

from .. import distributed, metrics
from .._io import atomic_folder, write_json, write_text
from ..config import Config, DataConfig, from_dict, to_dict
from ..data.images import (
    SUFFIXES,
    ImageSet,
    augment,
    identity_folds,
    load_identities,
    orl_root,
    read_pairs,
    to_float,
)
from ..losses import TripletLoss, TripletStats
from ..models import ResNetEmbedder
from ..sampling import PKSampler
from ..train import curriculum_from_config, fit, loss_from_config

# Ablation arms: loss options layered over the run's config.
ARMS: dict[str, dict[str, object]] = {
    "semi-hard-curriculum": {"mining": "semi-hard", "curriculum": "default", "offset": 0.0},
    "semi-hard-fixed": {"mining": "semi-hard", "curriculum": "none", "offset": 0.0},
    "hard": {"mining": "hard", "curriculum": "none", "offset": 0.0},
    "all": {"mining": "all", "curriculum": "none", "offset": 0.0},
}
BASELINES = ("eigenfaces", "pixels", "untrained")


@dataclass(frozen=True)
class Fold:
    """Training and test example indices of one identity fold."""

    name: str
    train: np.ndarray
    test: np.ndarray


def load_faces(cfg: DataConfig) -> ImageSet:
    """The configured image set: ORL or a folder per identity, optionally face-cropped."""
    crop = None
    if cfg.detect:
        from ..data.detect import face_cropper

        crop = face_cropper()
    if cfg.source == "orl":
        root, suffixes = orl_root(), {".pgm"}  # ORL ships one stray JPEG
    else:
        root, suffixes = Path(cfg.source), SUFFIXES
    return load_identities(
        root, (cfg.height, cfg.width), cfg.channels, strict=cfg.strict, suffixes=suffixes, crop=crop
    )


def folds(cfg: DataConfig, data: ImageSet) -> list[Fold]:
    """The configured identity folds (``fold`` "all", an index, or "none": train on all)."""
    labels = data.labels.numpy()
    everyone = np.arange(len(labels))
    if cfg.fold == "none":
        return [Fold("all", everyone, everyone[:0])]
    parts = identity_folds(len(data.names), cfg.folds, cfg.seed)
    if cfg.fold == "all":
        chosen = list(range(cfg.folds))
    elif cfg.fold.isdigit() and int(cfg.fold) < cfg.folds:
        chosen = [int(cfg.fold)]
    else:
        raise ValueError(f"data.fold must be 'all', 'none' or 0..{cfg.folds - 1}, got {cfg.fold!r}")
    out = []
    for k in chosen:
        test = np.isin(labels, parts[k])
        out.append(Fold(f"fold{k}", everyone[~test], everyone[test]))
    return out


class FaceBatches:
    """P x K batches of (augmented) training images. Under torchrun each rank takes P / N of
    the identities, and the loss mines over the gathered global batch."""

    def __init__(self, data: ImageSet, cfg: Config) -> None:
        self.data = data
        self.augment = cfg.train.augment
        p = distributed.split(cfg.train.p, "train.p")
        world = distributed.world_size()
        # People with a single image cannot be anchors; up to P of them join each batch as
        # pure negatives.
        counts = torch.bincount(data.labels)
        singles = int((counts == 1).sum())
        with warnings.catch_warnings():
            if not distributed.is_main():  # rank 0 reports left-out identities once
                warnings.simplefilter("ignore")
            self.sampler = PKSampler(
                data.labels,
                p,
                cfg.train.k,
                seed=cfg.train.seed,
                singletons=min(singles // world, p),
                rank=distributed.rank(),
                world_size=world,
            )

    def loss(
        self,
        model: torch.nn.Module,
        loss_fn: TripletLoss,
        indices: list[int],
        gen: torch.Generator,
        step: int,
    ) -> tuple[Tensor, TripletStats]:
        images = self.data.images[indices]
        x = augment(images, gen) if self.augment else to_float(images)
        device = next(model.parameters()).device
        embeddings = distributed.gather(model(x.to(device)))
        labels = distributed.gather(self.data.labels[indices].to(device))
        return loss_fn(embeddings, labels)


def build_model(cfg: Config) -> ResNetEmbedder:
    """The configured network, initialised from ``train.seed``."""
    torch.manual_seed(cfg.train.seed)
    return _network(cfg)


def _network(cfg: Config) -> ResNetEmbedder:
    return ResNetEmbedder(
        cfg.data.channels,
        cfg.model.stages,
        cfg.model.blocks,
        cfg.model.dim,
        cfg.model.head,
        (cfg.data.height, cfg.data.width),
    )


def embed(model: torch.nn.Module, images: Tensor, batch_size: int = 128) -> np.ndarray:
    """(N, C, H, W) uint8 -> (N, d) embeddings, averaged with the mirrored image."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = to_float(images[start : start + batch_size]).to(device)
            e = model(x) + model(torch.flip(x, dims=[3]))
            out.append(torch.nn.functional.normalize(e, dim=1).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def train_model(
    cfg: Config,
    data: ImageSet,
    out_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after_epoch: int | None = None,
) -> ResNetEmbedder:
    """Train one model on ``data`` and save it with its verification threshold."""
    model = build_model(cfg)
    fit(
        model,
        loss_from_config(cfg.loss),
        FaceBatches(data, cfg),
        cfg.train,
        out_dir,
        curriculum=curriculum_from_config(cfg.loss),
        resume=resume,
        progress=progress,
        stop_after_epoch=stop_after_epoch,
        desc=str(out_dir.name),
        settings={
            "loss": dataclasses.asdict(cfg.loss),
            "model": dataclasses.asdict(cfg.model),
            # what decides the training images (not which folds run, pairs or strictness)
            "data": {
                k: v
                for k, v in dataclasses.asdict(cfg.data).items()
                if k not in ("fold", "pairs", "strict")
            },
        },
    )
    embeddings = distributed.sharded(lambda part: embed(model, part), data.images)
    if not distributed.is_main():
        return model
    dist = metrics.distance_matrix(embeddings)
    labels = data.labels.numpy()
    d, same = metrics.all_pairs(dist, labels)
    thresholds = {
        "threshold": metrics.best_threshold(d, same),
        "cluster_threshold": metrics.clustering_threshold(dist, labels),
    }
    save_model(out_dir, model.cpu(), cfg, thresholds)
    return model


WEIGHTS = "model.safetensors"


def save_model(
    folder: Path, model: torch.nn.Module, cfg: Config, thresholds: dict[str, float]
) -> None:
    """``model.safetensors`` and ``model.json``: the weights file's name, the config, the
    verification threshold (best accuracy on training pairs) and the clustering threshold (best
    ARI on training people).

    The folder is replaced as one unit: a new folder gets the model and the files already in
    ``folder`` (checkpoint, log), then takes its place; an interruption leaves the old folder.
    """
    folder = Path(folder)
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    with atomic_folder(folder) as tmp:
        if folder.is_dir():
            _carry_over(folder, tmp, skip={WEIGHTS, "model.json"})
        save_file(weights, str(tmp / WEIGHTS))
        write_json(tmp / "model.json", {"weights": WEIGHTS, "config": to_dict(cfg), **thresholds})


def _carry_over(source: Path, target: Path, skip: set[str]) -> None:
    """Every entry of ``source`` but ``skip`` into ``target``: files hard-linked (copied where
    links are not possible), folders copied the same way."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    for entry in source.iterdir():
        if entry.name in skip:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target / entry.name, symlinks=True, copy_function=link)
        elif entry.is_symlink():
            os.symlink(os.readlink(entry), target / entry.name)
        else:
            link(str(entry), str(target / entry.name))


def model_saved(folder: str | Path) -> bool:
    """True when ``folder`` holds a complete model: a ``model.json`` that parses and names its
    weights file, and that file. (Weights alone, or a ``model.json`` of an older version that
    does not name them, do not count.)"""
    meta_path = Path(folder) / "model.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    name = meta.get("weights") if isinstance(meta, dict) else None
    return isinstance(name, str) and (Path(folder) / name).is_file()


def load_model(folder: str | Path) -> tuple[ResNetEmbedder, Config, dict[str, float]]:
    """A model saved by :func:`save_model`, with its config and thresholds.

    Raises:
        ValueError: naming the folder or file when the model is missing or incomplete.
    """
    folder = Path(folder)
    meta_path = folder / "model.json"
    if not meta_path.is_file():
        raise ValueError(f"no model in {folder} (expected model.json and model.safetensors)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{meta_path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path}: expected a JSON object")
    missing = {"config", "threshold", "cluster_threshold"} - set(meta)
    if missing:
        raise ValueError(f"{meta_path}: missing key(s) {', '.join(sorted(missing))}")
    weights = folder / str(meta.get("weights", WEIGHTS))  # older model.json: no "weights"
    if not weights.is_file():
        raise ValueError(f"{meta_path} names the weights {weights.name}, which are missing")
    cfg = from_dict(Config, meta["config"], where=str(meta_path))
    model = _network(cfg)
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    return model, cfg, {k: float(meta[k]) for k in ("threshold", "cluster_threshold")}


def arm_config(cfg: Config, arm: str) -> Config:
    """``cfg`` with the loss options of ablation arm ``arm``."""
    if arm not in ARMS:
        raise ValueError(f"unknown ablation arm {arm!r}; arms: {', '.join(ARMS)}")
    return dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, **ARMS[arm]))  # type: ignore[arg-type]


def arm_folder(cfg: Config, run: Path, arm: str) -> Path:
    """Where arm ``arm``'s models live: the main models when the arm is the run's own config."""
    return run if arm_config(cfg, arm) == cfg else run / "ablation" / arm


def train(
    cfg: Config, run_dir: str | Path, *, resume: bool = False, progress: bool = True
) -> list[Path]:
    """Train the configured model on every fold, and every ablation arm; return model folders."""
    run = Path(run_dir)
    data = load_faces(cfg.data)
    distributed.check_same(to_dict(cfg))
    if distributed.is_main():
        write_text(run / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    jobs = {run: cfg}
    for arm in cfg.ablation:
        jobs.setdefault(arm_folder(cfg, run, arm), arm_config(cfg, arm))
    done = []
    for base, job_cfg in jobs.items():
        for fold in folds(cfg.data, data):
            out = base / fold.name
            done_before = resume and model_saved(out)
            if not distributed.broadcast(done_before, "resume plan"):
                train_model(job_cfg, data.subset(fold.train), out, resume=resume, progress=progress)
            done.append(out)
    return done


def method_embeddings(
    cfg: Config, run: Path, data: ImageSet, fold: Fold
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(train, test) embeddings of every method on one fold."""
    train_set, test_set = data.subset(fold.train), data.subset(fold.test)
    out = {}
    model, _, _ = load_model(run / fold.name)
    out["tripletkit"] = (embed(model, train_set.images), embed(model, test_set.images))
    for arm in cfg.ablation:
        arm_model, _, _ = load_model(arm_folder(cfg, run, arm) / fold.name)
        out[arm] = (embed(arm_model, train_set.images), embed(arm_model, test_set.images))
    untrained = build_model(cfg)
    out["untrained"] = (embed(untrained, train_set.images), embed(untrained, test_set.images))
    pix_train = train_set.images.flatten(1).float().numpy() / 255.0
    pix_test = test_set.images.flatten(1).float().numpy() / 255.0
    out["pixels"] = (pix_train, pix_test)
    pca = PCA(n_components=min(100, len(pix_train) - 1), whiten=True, random_state=0)
    eig_train, eig_test = pca.fit_transform(pix_train), pca.transform(pix_test)
    out["eigenfaces"] = (_unit(eig_train), _unit(eig_test))
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def score(
    train_emb: np.ndarray,
    train_labels: np.ndarray,
    test_emb: np.ndarray,
    test_labels: np.ndarray,
    seed: int,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, float]:
    """Every metric of one method on one fold."""
    dist = metrics.distance_matrix(test_emb)
    out = metrics.verification(dist, test_labels, seed=seed, pairs=pairs)
    out.update(metrics.identification(dist, test_labels))
    n_people = len(np.unique(test_labels))
    known = metrics.agglomerative(dist, n_clusters=n_people)
    out.update(metrics.clustering_scores(test_labels, known))
    threshold = metrics.clustering_threshold(metrics.distance_matrix(train_emb), train_labels)
    unknown = metrics.agglomerative(dist, threshold=threshold)
    out.update(
        {f"{k}_unknown_k": v for k, v in metrics.clustering_scores(test_labels, unknown).items()}
    )
    out["clusters_unknown_k"] = float(len(np.unique(unknown)))
    return out


def evaluate(run_dir: str | Path, *, progress: bool = True) -> dict[str, metrics.Summary]:
    """Score every method on every fold; write ``metrics.json``, the figures and ``report.md``.

    Returns:
        method -> metric -> {"mean", "std", "folds", "missing"} over folds (see
        :func:`tripletkit.metrics.summarise_folds`).
    """
    from .. import report

    run = Path(run_dir)
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise ValueError(f"{run} is not a training run (no config.yaml); run tripletkit train")
    cfg = from_dict(Config, yaml.safe_load(cfg_path.read_text()), where=str(cfg_path))
    data = load_faces(cfg.data)
    plan = [f for f in folds(cfg.data, data) if len(f.test)]
    if not plan:
        raise ValueError(f"{run} has no held-out identities to evaluate (data.fold=none)")
    per_fold: dict[str, list[dict[str, float]]] = {}
    tests: list[dict] = []  # per fold: test embeddings of every method, for the figures
    for i, fold in enumerate(plan):
        emb = method_embeddings(cfg, run, data, fold)
        train_labels = data.labels[fold.train].numpy()
        test_labels = data.labels[fold.test].numpy()
        pairs = None
        if cfg.data.pairs:
            pairs = _fold_pairs(read_pairs(cfg.data.pairs, data), fold)
        for method, (tr, te) in emb.items():
            per_fold.setdefault(method, []).append(
                score(tr, train_labels, te, test_labels, seed=cfg.data.seed, pairs=pairs)
            )
        tests.append({"embeddings": {m: te for m, (_, te) in emb.items()}, "labels": test_labels})
        if progress:
            print(f"evaluated {fold.name} ({i + 1}/{len(plan)})", flush=True)
    summary = {m: metrics.summarise_folds(rows) for m, rows in per_fold.items()}
    write_json(run / "metrics.json", summary)
    report.faces_report(run, cfg, data, plan, summary, per_fold, tests)
    return summary


def _fold_pairs(
    pairs: tuple[np.ndarray, np.ndarray], fold: Fold
) -> tuple[np.ndarray, np.ndarray] | None:
    """The pairs whose two images are both in the fold's test set, re-indexed into it."""
    where = {int(g): i for i, g in enumerate(fold.test)}
    keep = [k for k, (a, b) in enumerate(pairs[0]) if int(a) in where and int(b) in where]
    if not keep:
        return None
    idx = np.array([[where[int(a)], where[int(b)]] for a, b in pairs[0][keep]])
    return idx, pairs[1][keep]
