"""Triplet fine-tuning of the pretrained dlib descriptor, on cached trunk features.

dlib's ResNet is ``stem -> level1..level5 -> mean -> fc -> normalise`` (see
:mod:`tripletkit.faces.dlib_resnet`). With ``model.train_levels = L`` the top ``L`` levels and
``fc`` train and the stem and the first ``5 - L`` levels stay frozen at the pretrained weights.
Frozen layers compute the same thing at every step, so their output is computed once for every
chip (and, with ``model.mirror``, its horizontal mirror, an augmentation that costs nothing
more per step) and training runs the top of the network on those cached maps:
``descriptor = tail(trunk(chip))`` with ``trunk`` cached. On 2 cores this makes a step of a
30 x 5 batch with L = 2 a few tens of milliseconds instead of seconds.

Batch norm: dlib's network has no batch-norm layers left, only ``affine`` layers (its batch
norm with the running statistics folded in, a fixed per-channel scale and shift). Fine-tuning
keeps them as affines: their scale and shift train like any other weight in the levels that
train, and no batch statistics are used. With 24 training people and batches of 120-150 chips
of a few people, batch statistics would be noisy and would differ between training and
inference; the folded statistics of 3 million faces are the better estimate.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..losses import TripletStats
from ..sampling import PKSampler
from ..train import Evaluation, StepLoss, curriculum_from_config, fit, loss_from_config
from . import metrics
from .config import FacesConfig
from .dlib_resnet import LEVELS, DlibResNet


def first_trained_level(cfg: FacesConfig) -> int:
    """Index of the first level that trains: ``5 - model.train_levels``.

    Raises:
        ValueError: ``model.train_levels`` outside 0..5.
    """
    levels = cfg.model.train_levels
    if not 0 <= levels <= len(LEVELS):
        raise ValueError(f"model.train_levels must be in 0..{len(LEVELS)}, got {levels}")
    return len(LEVELS) - levels


def trunk_features(
    net: DlibResNet,
    chips: Tensor,
    start: int,
    *,
    mirror: bool,
    batch_size: int = 50,
    progress: bool = True,
    desc: str = "caching trunk features",
) -> Tensor:
    """The frozen part's output for every chip.

    Args:
        net: the pretrained network.
        chips: (N, 3, 150, 150) uint8.
        start: levels computed (``net.trunk(x, levels=start)``).
        mirror: also the horizontally mirrored chips.

    Returns:
        (N, M, C, H, W) float32, M = 2 with ``mirror`` (index 1: the mirror), else 1.
    """
    net.eval()
    out = []
    with torch.no_grad():
        for i in tqdm(
            range(0, len(chips), batch_size), desc=desc, disable=not progress, leave=False
        ):
            x = chips[i : i + batch_size].float()
            views = [x, torch.flip(x, dims=[3])] if mirror else [x]
            out.append(torch.stack([net.trunk(v, levels=start) for v in views], dim=1))
    if not out:
        raise ValueError("no chips to compute features of")
    return torch.cat(out)


class Tail(nn.Module):
    """The trained top of a :class:`DlibResNet`: cached maps (B, C, H, W) -> (B, 128) unit.

    Holds the modules of ``net`` (levels ``start:`` and ``fc``), not copies: training it trains
    ``net``. Its state dict holds those layers only.
    """

    def __init__(self, net: DlibResNet, start: int) -> None:
        super().__init__()
        self.start = start
        self.levels = nn.ModuleList(list(net.levels)[start:])
        self.fc = net.fc

    def forward(self, maps: Tensor) -> Tensor:
        for level in self.levels:
            maps = level(maps)
        return nn.functional.normalize(self.fc(maps.mean(dim=(2, 3))), dim=1)


class FeatureBatches:
    """P x K batches of cached trunk features; with mirrored features present, each example
    takes its mirror with probability 1/2."""

    def __init__(self, features: Tensor, labels: Tensor, cfg: FacesConfig) -> None:
        self.features, self.labels = features, labels
        self.sampler = PKSampler(labels, cfg.train.p, cfg.train.k, seed=cfg.train.seed)

    def loss(
        self,
        model: nn.Module,
        loss_fn: StepLoss,
        indices: list[int],
        gen: torch.Generator,
        step: int,
    ) -> tuple[Tensor, TripletStats]:
        idx = torch.as_tensor(indices)
        views = self.features.shape[1]
        pick = torch.randint(0, views, (len(idx),), generator=gen)
        return loss_fn(model(self.features[idx, pick]), self.labels[idx])


def tail_embed(tail: nn.Module, features: Tensor, batch_size: int = 200) -> np.ndarray:
    """(N, M, C, H, W) cached features (view 0: the chip itself) -> (N, 128) descriptors."""
    tail.eval()
    with torch.no_grad():
        parts = [tail(features[i : i + batch_size, 0]) for i in range(0, len(features), batch_size)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, 128), np.float32)


Validation = dict[str, tuple[Tensor, np.ndarray]]
"""variant name -> (cached features of the validation chips, their labels)."""


def validation_scores(tail: nn.Module, val: Validation) -> dict[str, float]:
    """VAL@1e-3 and EER on each variant's validation people: ``{"<variant>/eer": ...}``."""
    out = {}
    for name, (features, labels) in val.items():
        dist = metrics.distance_matrix(tail_embed(tail, features))
        d, same = metrics.all_pairs(dist, labels)
        out[f"{name}/val_at_far_1e-3"] = metrics.val_at_far(d, same, 1e-3)
        out[f"{name}/eer"] = metrics.equal_error_rate(d, same)
    return out


def finetune(
    pretrained: DlibResNet,
    features: Tensor,
    labels: Tensor,
    cfg: FacesConfig,
    out_dir: Path,
    *,
    val: Validation | None = None,
    resume: bool = False,
    progress: bool = True,
) -> DlibResNet:
    """A copy of ``pretrained`` fine-tuned with the triplet loss on cached trunk features.

    Args:
        pretrained: the starting network (not changed).
        features: (N, M, C, H, W) from :func:`trunk_features` with
            ``start = first_trained_level(cfg)``.
        labels: (N,) person ids.
        cfg: ``loss`` (mining, margin, curriculum) and ``train`` (P, K, epochs, steps, lr).
        out_dir: checkpoint, ``train_log.jsonl`` and ``val_log.jsonl`` (VAL@1e-3 and EER on
            the validation people at step 0, i.e. the pretrained model, every
            ``model.eval_every`` steps, and at the end).
        val: the validation people's features per variant.
        resume: continue from the checkpoint in ``out_dir``.

    Returns:
        the fine-tuned network in eval mode (``pretrained`` itself copied when
        ``train_levels`` is 0).
    """
    start = first_trained_level(cfg)
    net = copy.deepcopy(pretrained).eval()
    if start == len(LEVELS):
        return net
    net.requires_grad_(False)
    tail = Tail(net, start)
    tail.requires_grad_(True)
    evaluation = None
    if val:
        evaluation = Evaluation(
            lambda model: validation_scores(model, val), cfg.model.eval_every, "val_log.jsonl"
        )
    fit(
        tail,
        loss_from_config(cfg.loss),
        FeatureBatches(features, labels, cfg),
        cfg.train,
        out_dir,
        curriculum=curriculum_from_config(cfg.loss),
        evaluation=evaluation,
        resume=resume,
        progress=progress,
        desc=f"fine-tuning {out_dir.name}",
        settings={
            "loss": dataclasses.asdict(cfg.loss),
            "model": dataclasses.asdict(cfg.model),
            "features": list(features.shape),
        },
    )
    return net.eval()
