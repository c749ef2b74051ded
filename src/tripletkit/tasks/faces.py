"""Faces: train on some identities, evaluate FaceNet's protocols on held-out ones.

Two backbones (``model.backbone``): "scratch", the residual CNN trained from scratch, and
"dlib", the pretrained dlib descriptor fine-tuned with the triplet loss
(:mod:`tripletkit.tasks.dlib_run`, :mod:`tripletkit.tasks.finetune`).

A run folder holds ``config.yaml``, ``run.json`` (the config hash, the data digest and each
fold's train / validation / test people: :mod:`tripletkit.tasks.face_runs`), one model folder
per identity fold (``fold0`` ...; :mod:`tripletkit.tasks.face_models`), for the scratch
backbone one per ablation arm and fold (``ablation/<arm>/fold0`` ...), for the dlib backbone
one per further resolution and fold (``lowres4/fold0`` ...), and after :func:`evaluate`
``metrics.json``, ``report.md`` and the figures.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image
from sklearn.decomposition import PCA
from torch import Tensor

from .. import distributed, metrics
from .._io import write_json, write_text
from ..config import Config, DataConfig, from_dict, to_dict
from ..data.chips import low_resolution
from ..data.images import (
    SUFFIXES,
    ImageSet,
    augment,
    load_identities,
    orl_root,
    read_pairs,
    to_float,
)
from ..losses import TripletLoss, TripletStats
from ..models import ResNetEmbedder
from ..sampling import PKSampler
from ..train import curriculum_from_config, fit, loss_from_config
from .face_models import (
    calibrate,
    embed_chips,
    load_model,
    model_saved,
    save_model,
    scratch_network,
)
from .face_models import embed_scratch as embed
from .face_runs import Fold, check_record, folds, make_record, write_record

# Ablation arms: loss options layered over the run's config.
ARMS: dict[str, dict[str, object]] = {
    "semi-hard-curriculum": {"mining": "semi-hard", "curriculum": "default", "offset": 0.0},
    "semi-hard-fixed": {"mining": "semi-hard", "curriculum": "none", "offset": 0.0},
    "hard": {"mining": "hard", "curriculum": "none", "offset": 0.0},
    "all": {"mining": "all", "curriculum": "none", "offset": 0.0},
}
BASELINES = ("eigenfaces", "pixels", "untrained")


def load_faces(cfg: DataConfig, factor: int | None = None) -> ImageSet:
    """The configured image set: ORL or a folder per identity, optionally face-cropped, at
    resolution factor ``factor`` (default the first of ``data.lowres``; see
    :func:`tripletkit.data.chips.low_resolution`, applied before cropping and resizing)."""
    factor = cfg.lowres[0] if factor is None else factor
    finder = None
    if cfg.detect:
        from ..data.detect import face_cropper

        finder = face_cropper()

    def crop(image: Image.Image) -> Image.Image | None:
        image = low_resolution(image, factor)
        return finder(image) if finder is not None else image

    if cfg.source == "orl":
        root, suffixes = orl_root(), {".pgm"}  # ORL ships one stray JPEG
    else:
        root, suffixes = Path(cfg.source), SUFFIXES
    return load_identities(
        root,
        (cfg.height, cfg.width),
        cfg.channels,
        strict=cfg.strict,
        suffixes=suffixes,
        crop=crop if (finder is not None or factor != 1) else None,
    )


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
    return scratch_network(cfg)


def train_model(
    cfg: Config,
    data: ImageSet,
    out_dir: Path,
    *,
    calibration: ImageSet | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after_epoch: int | None = None,
) -> ResNetEmbedder:
    """Train one from-scratch model on ``data`` and save it with thresholds calibrated on
    ``calibration`` (the validation people; None: the training people themselves)."""
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
    who = "validation" if calibration is not None else "training"
    calibration = data if calibration is None else calibration
    embeddings = distributed.sharded(lambda part: embed(model, part), calibration.images)
    if not distributed.is_main():
        return model
    labels = calibration.labels.numpy()
    thresholds: dict[str, object] = dict(calibrate(embeddings, labels, cfg.model.far))
    thresholds["calibration"] = f"{len(np.unique(labels))} {who} people at FAR {cfg.model.far:g}"
    save_model(out_dir, model.cpu(), cfg, thresholds, kind="scratch")
    return model


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
    """Train the configured model on every fold (and every ablation arm, or every resolution
    of the dlib backbone); return the model folders.

    Raises:
        ValueError: with ``resume``, when the run was trained with another config or data
            (naming what differs); a bad ``model.backbone``.
    """
    run = Path(run_dir)
    if cfg.model.backbone not in ("scratch", "dlib"):
        raise ValueError(f"model.backbone must be 'scratch' or 'dlib', got {cfg.model.backbone!r}")
    distributed.check_same(to_dict(cfg))
    if cfg.model.backbone == "dlib":
        return _train_dlib(cfg, run, resume=resume, progress=progress)
    data = load_faces(cfg.data)
    plan = folds(cfg.data, data)
    _start_run(cfg, run, make_record(cfg, data, plan), resume)
    jobs = {run: cfg}
    for arm in cfg.ablation:
        jobs.setdefault(arm_folder(cfg, run, arm), arm_config(cfg, arm))
    done = []
    for base, job_cfg in jobs.items():
        for fold in plan:
            out = base / fold.name
            done_before = resume and model_saved(out)
            if not distributed.broadcast(done_before, "resume plan"):
                calibration = data.subset(fold.val) if len(fold.val) else None
                train_model(
                    job_cfg,
                    data.subset(fold.train),
                    out,
                    calibration=calibration,
                    resume=resume,
                    progress=progress,
                )
            done.append(out)
    return done


def _start_run(cfg: Config, run: Path, record: dict, resume: bool) -> None:
    """Check a resumed run's record against ``record``; write ``config.yaml`` and ``run.json``."""
    if resume and (run / "run.json").exists():
        check_record(run, record, action="resume")
    if distributed.is_main():
        write_text(run / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        write_record(run, record)


def _train_dlib(cfg: Config, run: Path, *, resume: bool, progress: bool) -> list[Path]:
    from ..models.pretrained import load_dlib_resnet
    from .dlib_run import chip_sets, train_dlib

    if cfg.ablation:
        raise ValueError(
            "ablation arms (--set ablation=[...]) compare mining on the from-scratch CNN: use "
            "model.backbone=scratch (configs/orl-scratch.yaml), not the dlib backbone"
        )
    if distributed.active():
        raise ValueError(
            "fine-tuning the dlib backbone runs in one process: run it without torchrun"
        )
    chips = chip_sets(cfg, progress)
    plan = folds(cfg.data, chips[cfg.data.lowres[0]])
    _start_run(cfg, run, make_record(cfg, chips[cfg.data.lowres[0]], plan), resume)
    return train_dlib(
        cfg,
        run,
        plan,
        chips,
        load_dlib_resnet(),
        resume=resume,
        progress=progress,
        done=model_saved,
    )


Embeddings = dict[str, dict[str, np.ndarray]]
"""method -> {"calib": the calibration people's embeddings (validation people, or training
people when there are none), "test": the test people's}."""


def calibration_index(fold: Fold) -> np.ndarray:
    """The images thresholds are chosen on: the validation people's, else the training's."""
    return fold.val if len(fold.val) else fold.train


def method_embeddings(cfg: Config, run: Path, data: ImageSet, fold: Fold) -> Embeddings:
    """Embeddings of every method of a scratch run on one fold (see :data:`Embeddings`)."""
    parts = {"calib": calibration_index(fold), "test": fold.test}
    out: Embeddings = {}

    def of(model: torch.nn.Module) -> dict[str, np.ndarray]:
        return {k: embed(model, data.images[v]) for k, v in parts.items()}

    out["tripletkit"] = of(load_model(run / fold.name)[0])
    for arm in cfg.ablation:
        out[arm] = of(load_model(arm_folder(cfg, run, arm) / fold.name)[0])
    out["untrained"] = of(build_model(cfg))
    out.update(baselines(data, fold, parts))
    return out


def baselines(data: ImageSet, fold: Fold, parts: dict[str, np.ndarray]) -> Embeddings:
    """ "pixels" (raw pixel vectors) and "eigenfaces" (whitened PCA, up to 100 components,
    fitted on the training and validation people's images, rows made unit length)."""
    pixels = data.images.flatten(1).float().numpy() / 255.0
    fit_on = np.concatenate([fold.train, fold.val])
    pca = PCA(n_components=min(100, len(fit_on) - 1), whiten=True, random_state=0)
    pca.fit(pixels[fit_on])
    return {
        "pixels": {k: pixels[v] for k, v in parts.items()},
        "eigenfaces": {k: _unit(pca.transform(pixels[v])) for k, v in parts.items()},
    }


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def score(
    calib_emb: np.ndarray,
    calib_labels: np.ndarray,
    test_emb: np.ndarray,
    test_labels: np.ndarray,
    seed: int,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, float]:
    """Every metric of one method on one fold; the clustering threshold of "k unknown" is
    chosen on the calibration people."""
    dist = metrics.distance_matrix(test_emb)
    out = metrics.verification(dist, test_labels, seed=seed, pairs=pairs)
    out.update(metrics.identification(dist, test_labels))
    n_people = len(np.unique(test_labels))
    known = metrics.agglomerative(dist, n_clusters=n_people)
    out.update(metrics.clustering_scores(test_labels, known))
    threshold = metrics.clustering_threshold(metrics.distance_matrix(calib_emb), calib_labels)
    unknown = metrics.agglomerative(dist, threshold=threshold)
    out.update(
        {f"{k}_unknown_k": v for k, v in metrics.clustering_scores(test_labels, unknown).items()}
    )
    out["clusters_unknown_k"] = float(len(np.unique(unknown)))
    return out


def evaluate(run_dir: str | Path, *, progress: bool = True) -> dict[str, metrics.Summary]:
    """Score every method on every fold's test people; write ``metrics.json``, the figures and
    ``report.md``.

    Returns:
        method -> metric -> {"mean", "std", "folds", "missing"} over folds (see
        :func:`tripletkit.metrics.summarise_folds`).

    Raises:
        ValueError: not a run, no test people, or a run whose config or data changed since
            it was trained (naming what differs).
    """
    from .. import dlib_report, report

    run = Path(run_dir)
    cfg, data, plan, per_fold, tests = _score_folds(run, "test", progress)
    summary = {m: metrics.summarise_folds(rows) for m, rows in per_fold.items()}
    if cfg.model.backbone == "dlib":
        return dlib_report.finetune_report(run, cfg, data, plan, summary, per_fold, tests)
    write_json(run / "metrics.json", summary)
    report.faces_report(run, cfg, data, plan, summary, per_fold, tests)
    return summary


def validate(run_dir: str | Path, *, progress: bool = False) -> dict[str, metrics.Summary]:
    """Score every method on every fold's VALIDATION people, the people choices are made on
    (recipes, steps), and write ``validation.json``. Test people are not read.

    The "k unknown" clustering threshold is then chosen on the same validation people, so that
    metric is optimistic here.

    Raises:
        ValueError: as :func:`evaluate`; a run without validation people.
    """
    run = Path(run_dir)
    _, _, _, per_fold, _ = _score_folds(run, "val", progress)
    summary = {m: metrics.summarise_folds(rows) for m, rows in per_fold.items()}
    write_json(run / "validation.json", summary)
    return summary


def _score_folds(
    run: Path, part: str, progress: bool
) -> tuple[Config, ImageSet, list[Fold], dict[str, list[dict[str, float]]], list[dict]]:
    """Config, data, folds, per-method per-fold scores on ``part`` ("test" or "val") people
    and, per fold, the embeddings of ``part`` for the figures."""
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise ValueError(f"{run} is not a training run (no config.yaml); run tripletkit train")
    cfg = from_dict(Config, yaml.safe_load(cfg_path.read_text()), where=str(cfg_path))
    if cfg.model.backbone == "dlib":
        embeddings_of, data = _dlib_evaluation(cfg, run, progress)
    else:
        data = load_faces(cfg.data)

        def embeddings_of(fold: Fold) -> Embeddings:
            return method_embeddings(cfg, run, data, fold)

    plan = folds(cfg.data, data)
    check_record(run, make_record(cfg, data, plan), action="evaluate")
    if part == "val":
        plan = [dataclasses.replace(f, test=f.val) for f in plan if len(f.val)]
        if not plan:
            raise ValueError(f"{run} has no validation people (data.val_people=0)")
    plan = [f for f in plan if len(f.test)]
    if not plan:
        raise ValueError(f"{run} has no held-out identities to evaluate (data.fold=none)")
    per_fold: dict[str, list[dict[str, float]]] = {}
    tests: list[dict] = []
    for i, fold in enumerate(plan):
        emb = embeddings_of(fold)
        calib_labels = data.labels[calibration_index(fold)].numpy()
        test_labels = data.labels[fold.test].numpy()
        pairs = None
        if cfg.data.pairs and part == "test":
            pairs = _fold_pairs(read_pairs(cfg.data.pairs, data), fold)
        for method, e in emb.items():
            per_fold.setdefault(method, []).append(
                score(e["calib"], calib_labels, e["test"], test_labels, cfg.data.seed, pairs)
            )
        tests.append({"embeddings": {m: e["test"] for m, e in emb.items()}, "labels": test_labels})
        if progress:
            print(f"evaluated {fold.name} ({i + 1}/{len(plan)})", flush=True)
    return cfg, data, plan, per_fold, tests


def _dlib_evaluation(cfg: Config, run: Path, progress: bool) -> tuple[Any, ImageSet]:
    """The embeddings function of a dlib run, and its chips at the first resolution."""
    from ..models.pretrained import load_dlib_resnet
    from .dlib_run import chip_sets, dlib_embeddings

    chips = chip_sets(cfg, progress)
    images = {f: load_faces(cfg.data, f) for f in cfg.data.lowres}
    first = chips[cfg.data.lowres[0]]
    for f, raw in images.items():
        if raw.paths != first.paths:
            raise ValueError(
                f"data.lowres {f}: the images read for the baselines differ from the chips"
            )
    pretrained = load_dlib_resnet()
    stock = {f: embed_chips(pretrained, s.images) for f, s in chips.items()}

    def embeddings_of(fold: Fold) -> Embeddings:
        return dlib_embeddings(cfg, run, fold, chips, images, stock)

    return embeddings_of, first


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
