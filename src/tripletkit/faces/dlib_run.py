"""A faces run with the pretrained dlib backbone: per fold and resolution, fine-tune on the
training people, calibrate on the validation people, and embed for evaluation.

Layout: the models of resolution factor ``data.lowres[0]`` are ``<run>/fold0`` ...; those of a
further factor f are ``<run>/lowres<f>/fold0`` ... (see :func:`variant_folder`). With
``model.mix_resolutions`` every folder of a fold holds the same weights (one model trained on
every resolution's chips), calibrated on its own resolution's validation chips. With
``adapt.levels`` each fold's network is first adapted to the run's cameras
(:mod:`tripletkit.faces.adapt`; checkpoint and logs in ``<run>/adapt/fold0`` ...), and the
top levels are fine-tuned on the adapted one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .adapt import adapt
from .align import DETECTORS
from .chips import ChipSettings, load_chips
from .config import FacesConfig
from .dlib_resnet import DlibResNet
from .evaluation import baselines, calibration_index
from .finetune import Validation, finetune, first_trained_level, trunk_features
from .images import ImageSet
from .models import calibrate, embed_chips, load_model, save_model
from .runs import Fold


def variant_suffix(factor: int, factors: tuple[int, ...]) -> str:
    """Method-name suffix of resolution factor ``factor``: "" for the first factor,
    "-lowres" when there is one other, "-lowres<f>" when there are several."""
    if factor == factors[0]:
        return ""
    return "-lowres" if len(factors) == 2 else f"-lowres{factor}"


def variant_folder(run: Path, factor: int, factors: tuple[int, ...]) -> Path:
    """Where the models of resolution factor ``factor`` live."""
    return run if factor == factors[0] else run / f"lowres{factor}"


def chip_sets(cfg: FacesConfig, progress: bool) -> dict[int, ImageSet]:
    """factor -> the aligned chips of every image at that resolution (cached on disk).

    Raises:
        ValueError: when two resolutions do not hold the same images.
    """
    if cfg.data.detector not in DETECTORS:
        raise ValueError(f"data.detector must be one of {DETECTORS}, got {cfg.data.detector!r}")
    sets = {
        f: load_chips(
            cfg.data.source,
            ChipSettings(lowres=f, detector=cfg.data.detector),
            strict=cfg.data.strict,
            progress=progress,
        )
        for f in cfg.data.lowres
    }
    first = sets[cfg.data.lowres[0]]
    for f, s in sets.items():
        if s.paths != first.paths:
            raise ValueError(
                f"data.lowres {f}: the images differ from resolution {cfg.data.lowres[0]}"
            )
    return sets


def _calibration(net: DlibResNet, chips: ImageSet, fold: Fold, far: float) -> dict[str, object]:
    """Thresholds on the fold's validation people (its training people when it has none)."""
    index, who = (fold.val, "validation") if len(fold.val) else (fold.train, "training")
    emb = embed_chips(net, chips.images[index])
    out: dict[str, object] = dict(calibrate(emb, chips.labels[index].numpy(), far))
    people = sorted({chips.names[i] for i in chips.labels[index].tolist()})
    out["calibration"] = f"{len(people)} {who} people at FAR {far:g}"
    out["calibration_people"] = people
    return out


def _features(
    net: DlibResNet, chips: dict[int, ImageSet], start: int, cfg: FacesConfig, progress: bool
) -> dict[int, torch.Tensor]:
    """factor -> the frozen levels' output of every chip (see :func:`trunk_features`)."""
    return {
        f: trunk_features(
            net,
            s.images,
            start,
            mirror=cfg.model.mirror,
            progress=progress,
            desc=f"caching trunk features (x{f})",
        )
        for f, s in chips.items()
    }


def _adapted(
    pretrained: DlibResNet,
    chips: dict[int, ImageSet],
    fold: Fold,
    cfg: FacesConfig,
    out_dir: Path,
    *,
    resume: bool,
    progress: bool,
) -> DlibResNet:
    """The fold's camera-adapted network (:func:`tripletkit.faces.adapt.adapt`)."""
    val = None
    if len(fold.val):
        labels = chips[cfg.data.lowres[0]].labels[fold.val].numpy()
        val = ({f: s.images[fold.val] for f, s in chips.items()}, labels)
    return adapt(
        pretrained,
        {f: s.images[fold.train] for f, s in chips.items()},
        chips[cfg.data.lowres[0]].labels[fold.train],
        cfg,
        out_dir,
        val=val,
        resume=resume,
        progress=progress,
    )


def adapt_folder(run: Path) -> Path:
    """Where a run's camera adaptations (one per fold: checkpoint and logs) live."""
    return run / "adapt"


def train_dlib(
    cfg: FacesConfig,
    run: Path,
    plan: list[Fold],
    chips: dict[int, ImageSet],
    pretrained: DlibResNet,
    *,
    resume: bool,
    progress: bool,
    done: Callable[[Path], bool],
) -> list[Path]:
    """Per fold: adapt the network to the run's cameras (with ``adapt.levels``), fine-tune its
    top levels at every resolution (with ``model.train_levels``), calibrate and save; return the
    model folders."""
    factors = cfg.data.lowres
    start = first_trained_level(cfg)
    shared: dict[int, torch.Tensor] = {}
    if start < 5 and not cfg.adapt.levels:
        shared = _features(pretrained, chips, start, cfg, progress)
    out: list[Path] = []
    for fold in plan:
        folders = {f: variant_folder(run, f, factors) / fold.name for f in factors}
        if resume and all(done(p) for p in folders.values()):
            out += folders.values()
            continue
        base, features = pretrained, shared
        record: dict[str, object] = {}
        if cfg.adapt.levels:
            where = adapt_folder(run) / fold.name
            base = _adapted(pretrained, chips, fold, cfg, where, resume=resume, progress=progress)
            record = {"adapted_to": [f"x{f}" for f in sorted(factors)]}
            if start < 5:
                features = _features(base, chips, start, cfg, progress)
        val: Validation = {}
        if features and len(fold.val):
            val = {
                f"x{f}": (features[f][fold.val], chips[f].labels[fold.val].numpy()) for f in factors
            }
        groups = [list(factors)] if cfg.model.mix_resolutions else [[f] for f in factors]
        for group in groups:
            net = base
            if features:
                feats = torch.cat([features[f][fold.train] for f in group])
                labels = torch.cat([chips[f].labels[fold.train] for f in group])
                net = finetune(
                    base,
                    feats,
                    labels,
                    cfg,
                    folders[group[0]],
                    val=val,
                    resume=resume,
                    progress=progress,
                )
            for f in group:
                thresholds = {**_calibration(net, chips[f], fold, cfg.model.far), **record}
                trained_on = chips[f].subset(fold.train).people()
                save_model(folders[f], net, cfg, thresholds, kind="dlib", trained_on=trained_on)
                out.append(folders[f])
    return out


def dlib_embeddings(
    cfg: FacesConfig,
    run: Path,
    fold: Fold,
    chips: dict[int, ImageSet],
    images: dict[int, ImageSet],
    stock: dict[int, np.ndarray],
) -> dict[str, dict[str, np.ndarray]]:
    """method -> {"calib", "test"} embeddings on one fold (see
    :data:`tripletkit.faces.experiment.Embeddings`): pretrained, finetuned, eigenfaces and pixels at
    every resolution (suffixed, :func:`variant_suffix`); at a factor f > 1, when factor 1 is
    run too, pretrained and finetuned also hold "gallery": the same model's embeddings of the
    test people's full-resolution chips (the clean gallery of the gallery / probe protocol).
    ``images`` are the raw images at each resolution (configured height and width), for the
    baselines; ``stock`` the pretrained
    model's embeddings of every chip at each resolution (the same for every fold)."""
    factors = cfg.data.lowres
    parts = {"calib": calibration_index(fold), "test": fold.test}
    out: dict[str, dict[str, np.ndarray]] = {}
    for f in factors:
        sfx = variant_suffix(f, factors)
        net, _, _ = load_model(variant_folder(run, f, factors) / fold.name)
        out["pretrained" + sfx] = {k: stock[f][v] for k, v in parts.items()}
        out["finetuned" + sfx] = {k: embed_chips(net, chips[f].images[v]) for k, v in parts.items()}
        if f != 1 and 1 in factors:  # a clean gallery: the test people's full-resolution chips
            out["pretrained" + sfx]["gallery"] = stock[1][fold.test]
            out["finetuned" + sfx]["gallery"] = embed_chips(net, chips[1].images[fold.test])
        out.update({m + sfx: e for m, e in baselines(images[f], fold, parts).items()})
    return out
