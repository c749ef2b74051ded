"""Camera adaptation of the dlib descriptor: its lowest levels taught to see through the run's
worse cameras, by distillation from the frozen network (issue 19).

The frozen pretrained network is the teacher; the student starts as a copy of it. The
student's stem and first ``adapt.levels`` levels train; the levels above and the final layer
stay the pretrained weights, so the embedding space stays the teacher's and the signal does
not depend on who the training people are. Each training example is one image of the fold's
training people seen through one of the run's cameras: its chip at one ``data.lowres`` factor,
drawn per example and per step, the clean chip (factor 1) among them. Its student embedding is
pulled to the teacher's embedding of the same image's clean chip (the squared distance of the
two unit vectors); with ``adapt.triplet`` > 0, triplets are added whose anchors are the
student's embeddings of the batch and whose positives and negatives are the teacher's clean
embeddings of the batch (the same image and the person's other images positive, other people
negative, mined in the batch as the ``loss`` section says: :meth:`TripletLoss.cross`). The
triplet statistics are logged either way.

Why the clean chips are among the views: trained on the degraded chips alone, the student
beats the frozen network at that camera but forgets full resolution; with the clean chips
beside them it keeps it (docs/faces_lowlevel_distill.md, on validation people).

Nothing is cached: the gradient runs through the frozen upper levels to the trained ones, so
every step runs the whole network forward and backward (about 1.5 s for 48 chips on 2 cores).
With ``model.train_levels`` > 0 the top levels are then fine-tuned with the triplet loss on
the adapted network, as without adaptation (:mod:`tripletkit.faces.finetune`).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..config import TrainConfig
from ..losses import TripletStats
from ..sampling import PKSampler
from ..train import Evaluation, StepLoss, fit, loss_from_config
from . import metrics
from .config import AdaptConfig, FacesConfig
from .dlib_resnet import LEVELS, DlibResNet
from .models import embed_chips


def check_adapt(cfg: FacesConfig) -> None:
    """Raises ValueError when the ``adapt`` section cannot run with the rest of ``cfg``."""
    adapt = cfg.adapt
    if adapt.levels == 0:
        return
    if cfg.model.backbone != "dlib":
        raise ValueError("adapt.levels > 0 adapts the dlib backbone: set model.backbone=dlib")
    if not 0 <= adapt.levels <= len(LEVELS):
        raise ValueError(f"adapt.levels must be in 0..{len(LEVELS)}, got {adapt.levels}")
    if adapt.levels + cfg.model.train_levels > len(LEVELS):
        raise ValueError(
            f"adapt.levels ({adapt.levels}, from the bottom) and model.train_levels "
            f"({cfg.model.train_levels}, from the top) overlap: their sum must be at most "
            f"{len(LEVELS)}"
        )
    if 1 not in cfg.data.lowres or len(cfg.data.lowres) < 2:
        raise ValueError(
            "adapt.levels > 0 trains on the clean chips and the degraded ones: data.lowres must "
            f"hold 1 and at least one other factor, got {list(cfg.data.lowres)}"
        )
    if adapt.steps < 1 or adapt.lr <= 0 or adapt.triplet < 0:
        raise ValueError(
            "adapt.steps must be >= 1, adapt.lr > 0 and adapt.triplet >= 0, got "
            f"{adapt.steps}, {adapt.lr} and {adapt.triplet}"
        )


def adapt_train_config(adapt: AdaptConfig) -> TrainConfig:
    """The optimiser settings of the adaptation: Adam at a constant ``adapt.lr``, P x K
    batches, ``adapt.steps`` steps."""
    return TrainConfig(
        epochs=1_000_000,
        max_steps=adapt.steps,
        p=adapt.p,
        k=adapt.k,
        optimizer="adam",
        lr=adapt.lr,
        weight_decay=0.0,
        schedule="constant",
        warmup_steps=0,
        seed=adapt.seed,
        augment=False,
    )


class Student(nn.Module):
    """The network with only its stem and first ``levels`` levels trainable. Its state dict is
    the whole network's; its parameters are the trained ones only."""

    def __init__(self, teacher: DlibResNet, levels: int) -> None:
        super().__init__()
        self.net = copy.deepcopy(teacher).eval()
        self.net.requires_grad_(False)
        for module in (self.net.stem, *list(self.net.levels)[:levels]):
            module.requires_grad_(True)

    def forward(self, chips: Tensor) -> Tensor:
        return self.net(chips)


class CameraViews:
    """P x K batches of training images, each seen through one of its views (drawn per example
    and step) and pulled to the teacher's embedding of its clean chip."""

    def __init__(self, views: Tensor, targets: Tensor, labels: Tensor, adapt: AdaptConfig) -> None:
        """``views`` (N, V, 3, 150, 150) uint8; ``targets`` (N, 128) the teacher's clean
        embeddings; ``labels`` (N,) person ids."""
        self.views, self.targets, self.labels = views, targets, labels
        self.weight = adapt.triplet
        self.sampler = PKSampler(labels, adapt.p, adapt.k, seed=adapt.seed)

    def loss(
        self,
        model: nn.Module,
        loss_fn: StepLoss,
        indices: list[int],
        gen: torch.Generator,
        step: int,
    ) -> tuple[Tensor, TripletStats]:
        idx = torch.as_tensor(indices)
        pick = torch.randint(0, self.views.shape[1], (len(idx),), generator=gen)
        emb = model(self.views[idx, pick].float())
        target, labels = self.targets[idx], self.labels[idx]
        distill = ((emb - target) ** 2).sum(dim=1).mean()
        triplet, stats = loss_fn.cross(emb, labels, target, labels)
        return distill + self.weight * triplet, stats


def adapt_scores(net: nn.Module, val: dict[int, Tensor], labels: np.ndarray) -> dict[str, float]:
    """VAL@1e-3 and EER on the validation people: at each factor f among its own chips
    ("x<f>/eer"), and for f > 1 a factor-f probe against a clean gallery ("clean-x<f>/eer")."""
    emb = {f: embed_chips(net, chips) for f, chips in val.items()}
    out = {}
    for f, e in emb.items():
        dist = metrics.distance_matrix(e)
        pairs = {f"x{f}": metrics.all_pairs(dist, labels)}
        if f != 1:
            cross = metrics.cross_distance(e, emb[1])
            pairs[f"clean-x{f}"] = metrics.cross_pairs(cross, labels)
        for name, (d, same) in pairs.items():
            out[f"{name}/val_at_far_1e-3"] = metrics.val_at_far(d, same, 1e-3)
            out[f"{name}/eer"] = metrics.equal_error_rate(d, same)
    return out


def adapt(
    teacher: DlibResNet,
    chips: dict[int, Tensor],
    labels: Tensor,
    cfg: FacesConfig,
    out_dir: Path,
    *,
    val: tuple[dict[int, Tensor], np.ndarray] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> DlibResNet:
    """A copy of ``teacher`` whose lowest levels are adapted to the cameras of ``chips``.

    Args:
        teacher: the pretrained network (not changed).
        chips: factor -> (N, 3, 150, 150) uint8 chips of the training images, the same images
            in the same order at every factor; factor 1 is the clean chip.
        labels: (N,) person ids.
        cfg: the ``adapt`` section, and ``loss`` for the triplet term's mining and margin.
        out_dir: ``checkpoint.pt``, ``train_log.jsonl`` (loss and triplet statistics per step)
            and ``val_log.jsonl`` (:func:`adapt_scores` at step 0, the teacher, every
            ``model.eval_every`` steps and at the end).
        val: the validation people's chips per factor and their labels.
        resume: continue from the checkpoint in ``out_dir``.

    Returns:
        the student network in eval mode.
    """
    factors = sorted(chips)
    views = torch.stack([chips[f] for f in factors], dim=1)
    targets = torch.from_numpy(embed_chips(teacher, chips[1]))
    student = Student(teacher, cfg.adapt.levels)
    evaluation = None
    if val is not None:
        evaluation = Evaluation(
            lambda model: adapt_scores(model, *val), cfg.model.eval_every, "val_log.jsonl"
        )
    fit(
        student,
        loss_from_config(cfg.loss),
        CameraViews(views, targets, labels, cfg.adapt),
        adapt_train_config(cfg.adapt),
        out_dir,
        evaluation=evaluation,
        resume=resume,
        progress=progress,
        desc=f"adapting {out_dir.name} to x{'/x'.join(map(str, factors))}",
        settings={"adapt": dataclasses.asdict(cfg.adapt), "loss": dataclasses.asdict(cfg.loss)},
    )
    return student.net.eval()
