"""The from-scratch backbone of a faces run: P x K batches of (augmented) images, the residual
CNN, its training on one fold, and the mining ablation's arms."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .. import distributed
from ..losses import TripletStats
from ..sampling import PKSampler
from ..train import StepLoss, curriculum_from_config, fit, loss_from_config
from .cnn import ResNetEmbedder
from .config import FacesConfig
from .images import ImageSet, augment, to_float
from .models import calibrate, save_model, scratch_network
from .models import embed_scratch as embed

# Ablation arms: loss options layered over the run's config.
ARMS: dict[str, dict[str, object]] = {
    "semi-hard-curriculum": {"mining": "semi-hard", "curriculum": "default", "offset": 0.0},
    "semi-hard-fixed": {"mining": "semi-hard", "curriculum": "none", "offset": 0.0},
    "hard": {"mining": "hard", "curriculum": "none", "offset": 0.0},
    "all": {"mining": "all", "curriculum": "none", "offset": 0.0},
}


class FaceBatches:
    """P x K batches of (augmented) training images. Under torchrun each rank takes P / N of
    the identities, and the loss mines over the gathered global batch."""

    def __init__(self, data: ImageSet, cfg: FacesConfig) -> None:
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
        loss_fn: StepLoss,
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


def build_model(cfg: FacesConfig) -> ResNetEmbedder:
    """The configured network, initialised from ``train.seed``."""
    torch.manual_seed(cfg.train.seed)
    return scratch_network(cfg)


def train_model(
    cfg: FacesConfig,
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
    thresholds["calibration_people"] = calibration.people()
    save_model(out_dir, model.cpu(), cfg, thresholds, kind="scratch", trained_on=data.people())
    return model


def arm_config(cfg: FacesConfig, arm: str) -> FacesConfig:
    """``cfg`` with the loss options of ablation arm ``arm``."""
    if arm not in ARMS:
        raise ValueError(f"unknown ablation arm {arm!r}; arms: {', '.join(ARMS)}")
    return dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, **ARMS[arm]))  # type: ignore[arg-type]


def arm_folder(cfg: FacesConfig, run: Path, arm: str) -> Path:
    """Where arm ``arm``'s models live: the main models when the arm is the run's own config."""
    return run if arm_config(cfg, arm) == cfg else run / "ablation" / arm
