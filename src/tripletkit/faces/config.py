"""The configuration of a faces run: images and folds, the network, and the whole run."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import LossConfig, TrainConfig


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
            (:func:`tripletkit.faces.chips.low_resolution`). The dlib backbone runs every
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
    end only). ``far``: the false-accept rate of the verification threshold. ``runtime``: what
    runs the saved dlib model for inference (the commands that embed, the service): "torch",
    "onnx" (ONNX Runtime, fp32: the default, the port's descriptors at cosine >= 0.9999 and
    faster) or "onnx-int8" (statically quantised); see :mod:`tripletkit.faces.runtime` and
    benchmarks/inference_cpu.md. Training runs PyTorch whatever it says, and so does a scratch
    model (its ``--runtime onnx`` is an error).
    """

    backbone: str = "scratch"
    train_levels: int = 2
    mirror: bool = True
    mix_resolutions: bool = False
    eval_every: int = 0
    far: float = 1e-3
    runtime: str = "onnx"
    stages: tuple[int, ...] = (16, 32, 64, 128)
    blocks: int = 1
    dim: int = 128
    head: str = "flatten"


@dataclass(frozen=True)
class AdaptConfig:
    """Camera adaptation of the dlib backbone (:mod:`tripletkit.faces.adapt`), before any
    fine-tuning of its top levels: the stem and the first ``levels`` levels (0: no adaptation)
    learn to map the chips of every ``data.lowres`` factor to the frozen network's embedding of
    the clean chip. One adapted network per fold serves every factor. ``steps`` steps of Adam
    at ``lr`` on ``p`` x ``k`` batches of the training people (each example one of its views),
    seeded by ``seed``; ``triplet`` weighs the teacher-anchored triplets (student anchors,
    teacher candidates; mining and margin from the ``loss`` section) against the distillation
    term (0: distillation alone).
    """

    levels: int = 0
    steps: int = 400
    lr: float = 1e-4
    p: int = 12
    k: int = 4
    triplet: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class FacesConfig:
    """A whole faces run."""

    name: str = "demo"
    task: str = "faces"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    ablation: tuple[str, ...] = ()
