"""Face models as the commands use them: the stock pretrained dlib descriptor or a model folder
written by training, with what a photo becomes for it and its decision thresholds.

Two kinds of model:

- ``"dlib"``: dlib's face recognition ResNet (:class:`~tripletkit.faces.dlib_resnet.DlibResNet`),
  pretrained or fine-tuned with the triplet loss. Its input is the aligned 150 x 150 RGB chip
  (:mod:`tripletkit.faces.align`).
- ``"scratch"``: the residual CNN trained from scratch
  (:class:`~tripletkit.faces.cnn.ResNetEmbedder`) on the face box (or whole image), made gray
  or RGB and resized as its config says.

Runtimes: the dlib kind runs its network in PyTorch (``"torch"``, the default) or through
ONNX Runtime, fp32 (``"onnx"``) or int8 (``"onnx-int8"``), exported once and kept
(:mod:`tripletkit.faces.runtime`); the runtime comes from the caller (``--runtime``), else from
the model folder's config (``model.runtime``). Training always runs PyTorch.

A model folder holds ``model.json`` (the weights file's name, ``kind``, the run's config, the
thresholds and what they were calibrated on) and the weights (``model.safetensors``), and
during training its checkpoint and log. It is written as one unit
(:func:`tripletkit._io.atomic_folder`): a reader, and a resumed run, finds either the folder
before the model or the folder with the complete model, never weights without their
``model.json``.

Thresholds: two unit embeddings are the same person when their euclidean distance is at most
``threshold``: the largest distance at which at most a ``far`` share (default 1e-3) of
different-person pairs of the calibration people are accepted (:func:`calibrate`). A trained
model calibrates on its run's validation people, never on the people it trained on.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from .._io import atomic_folder, write_json
from .._onnx import check_runtime
from ..config import from_dict, to_dict
from . import metrics
from .align import best_face
from .cnn import ResNetEmbedder
from .config import FacesConfig
from .dlib_resnet import DlibResNet
from .images import to_float
from .pretrained import MODEL_FILE, MODEL_SHA256, PACKAGE_PIN, load_dlib_resnet
from .runtime import DEFAULT_RUNTIME, OnnxDescriptor, is_export, load_onnx

if TYPE_CHECKING:
    from .align import Face

WEIGHTS = "model.safetensors"
KINDS = ("dlib", "scratch")
DEFAULT_FAR = 1e-3

# The stock pretrained descriptor's thresholds (unit-normalised 128-d embeddings, euclidean
# distance). dlib documents 0.6 on its raw descriptors, whose norm is 1.41 +- 0.05 on ORL, so
# 0.6 there is about 0.43 here. These were calibrated instead, with :func:`calibrate`, on all
# 400 ORL images (40 people, full resolution, chips of tripletkit.faces.chips): verification at
# FAR 1e-3 over the 79,800 pairs; clustering at the best ARI (experiments/dlib_thresholds.py
# regenerates them). Every ORL person is a test person in some fold of the demo, so on ORL
# they are optimistic; the demo's own numbers never use them (its metrics sweep every
# threshold, and fine-tuned models calibrate on validation people). On the face_recognition
# 1.3.0 test photos obama/obama2/obama3 are 0.24-0.31 apart, biden 0.59-0.63 from each.
STOCK_THRESHOLD = 0.367
STOCK_CLUSTER_THRESHOLD = 0.345
# What a fine-tuned dlib model started from (its teacher, when trained against one).
STARTED_FROM = f"{MODEL_FILE} of {PACKAGE_PIN} (sha256 {MODEL_SHA256})"
STOCK_CALIBRATION = "all 400 ORL images (40 people, full resolution) at FAR 1e-3"


@dataclass(frozen=True)
class FaceModel:
    """A face descriptor ready for photos.

    Attributes:
        net: the network, in eval mode: inputs from :meth:`prepare` (as float) -> (N, 128)
            unit rows.
        kind: "dlib" (aligned 150 x 150 RGB chips) or "scratch" (resized face crops).
        threshold: verification: same person when the distance is at most this.
        cluster_threshold: agglomerative clustering's distance threshold.
        config: the training run's config (None for the stock pretrained model).
        calibration: what the thresholds were calibrated on, in words.
        runtime: "torch", "onnx" or "onnx-int8" (see :mod:`tripletkit.faces.runtime`).
        session: the ONNX Runtime session :meth:`embed` runs (None: ``net`` runs).
    """

    net: torch.nn.Module
    kind: str
    threshold: float
    cluster_threshold: float
    config: FacesConfig | None = None
    calibration: str = ""
    runtime: str = "torch"
    session: OnnxDescriptor | None = None

    def prepare(self, image: Image.Image, face: Face | None = None) -> torch.Tensor:
        """One photo (and optionally a face found in it) -> this model's input.

        Args:
            image: an upright RGB photo (:func:`~tripletkit.faces.align.load_photo`).
            face: a face of ``image`` (:func:`~tripletkit.faces.align.find_faces`); None: the
                dlib kind aligns the best face of the image (the whole image when none is
                found), the scratch kind takes the whole image.

        Returns:
            (C, H, W) uint8: (3, 150, 150) RGB chip for "dlib"; the crop resized to the
            config's (channels, height, width) for "scratch".

        Raises:
            ValueError: an empty image.
        """
        if self.kind == "dlib":
            return _chip_tensor(image, face)
        if self.config is None:
            raise ValueError("a scratch model needs its config to prepare images")
        crop = image if face is None else image.crop(face.box)
        data = self.config.data
        crop = crop.convert("L" if data.channels == 1 else "RGB")
        crop = crop.resize((data.width, data.height), Image.Resampling.BILINEAR)
        array = np.asarray(crop, dtype=np.uint8)
        array = array[None] if data.channels == 1 else array.transpose(2, 0, 1)
        return torch.from_numpy(np.array(array, dtype=np.uint8, order="C", copy=True))

    def one_face(self, image: Image.Image) -> Face | None:
        """The face this model takes from a photo that is one face: for "dlib" the best face
        the HOG detector finds (the whole image as the box when none is found, score NaN); None
        (the whole photo) for "scratch"."""
        if self.kind == "dlib":
            return best_face(image, whole_image_fallback=True)
        return None

    def embed(self, inputs: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """(N, C, H, W) uint8 from :meth:`prepare` -> (N, 128) float32 unit rows, through
        :attr:`session` when there is one, else ``net``; ``batch_size`` inputs at a time."""
        if self.session is not None:
            return self.session.embed(inputs, batch_size)
        if self.kind == "dlib":
            return embed_chips(self.net, inputs, batch_size)
        return embed_scratch(self.net, inputs, batch_size)


def _chip_tensor(image: Image.Image, face: Face | None) -> torch.Tensor:
    """(3, 150, 150) uint8 chip of ``face``, or of the best face of ``image``."""
    if face is None:
        face = best_face(image, whole_image_fallback=True)
        if face is None:
            raise ValueError(f"an empty image ({image.size[0]} x {image.size[1]}) has no face")
    return torch.from_numpy(np.array(face.chip.transpose(2, 0, 1), order="C", copy=True))


def embed_chips(net: torch.nn.Module, chips: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """(N, 3, 150, 150) uint8 chips -> (N, 128) float32 unit descriptors, no gradient."""
    net.eval()
    out = [np.zeros((0, 128), np.float32)]
    with torch.no_grad():
        for start in range(0, len(chips), batch_size):
            out.append(net(chips[start : start + batch_size].float()).numpy())
    return np.concatenate(out)


def embed_scratch(net: torch.nn.Module, images: torch.Tensor, batch_size: int = 128) -> np.ndarray:
    """(N, C, H, W) uint8 -> (N, d) embeddings, averaged with the mirrored image."""
    net.eval()
    device = next(net.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = to_float(images[start : start + batch_size]).to(device)
            e = net(x) + net(torch.flip(x, dims=[3]))
            out.append(torch.nn.functional.normalize(e, dim=1).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def calibrate(embeddings: np.ndarray, labels: np.ndarray, far: float = DEFAULT_FAR) -> dict:
    """Thresholds from labelled calibration people.

    Args:
        embeddings: (N, d) unit rows.
        labels: (N,) person ids; at least two people, one of them with two images.
        far: the false-accept rate of the verification threshold.

    Returns:
        {"threshold": the largest pair distance t with FAR(t) <= far over all pairs (FAR(t):
        the share of different-person pairs at distance <= t; 0.0 when even the closest
        different pair is too many), "cluster_threshold": the average-linkage threshold with
        the best ARI (:func:`tripletkit.faces.metrics.clustering_threshold`), "far": far}.

    Raises:
        ValueError: fewer than two people, or no person with two images.
    """
    labels = np.asarray(labels)
    people, counts = np.unique(labels, return_counts=True)
    if len(people) < 2 or counts.max() < 2:
        raise ValueError(
            "calibrating thresholds needs at least two people and one with two images, got "
            f"{len(people)} people and at most {counts.max() if len(counts) else 0} image(s) each"
        )
    dist = metrics.distance_matrix(embeddings)
    d, same = metrics.all_pairs(dist, labels)
    different = np.sort(d[~same])
    allowed = int(np.floor(far * len(different) + 1e-9))  # different pairs that may pass
    # the largest t accepting at most `allowed` different pairs: just below the next one
    threshold = (
        float(np.nextafter(different[allowed], -np.inf))
        if allowed < len(different)
        else float(d.max())
    )
    return {
        "threshold": max(0.0, threshold),
        "cluster_threshold": metrics.clustering_threshold(dist, labels),
        "far": far,
    }


# --- model folders -----------------------------------------------------------------------------


def save_model(
    folder: Path,
    model: torch.nn.Module,
    cfg: FacesConfig,
    thresholds: dict[str, Any],
    kind: str = "scratch",
    trained_on: list[str] | None = None,
) -> None:
    """``model.safetensors`` and ``model.json`` (weights file, kind, config, thresholds and
    what they were calibrated on, the names of the people it was ``trained_on``, and for the
    dlib kind the pretrained network it started from) into ``folder``.

    The folder is replaced as one unit: a new folder gets the model and the files already in
    ``folder`` (checkpoint, log), then takes its place; an interruption leaves the old folder.
    """
    if kind not in KINDS:
        raise ValueError(f"model kind must be one of {KINDS}, got {kind!r}")
    folder = Path(folder)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"weights": WEIGHTS, "kind": kind, "config": to_dict(cfg), **thresholds}
    if trained_on is not None:
        meta["training_people"] = sorted(trained_on)
    if kind == "dlib":
        meta["started_from"] = STARTED_FROM
    with atomic_folder(folder) as tmp:
        if folder.is_dir():
            # ONNX exports are of the old weights: not carried over
            stale = {p.name for p in folder.iterdir() if is_export(p.name)}
            _carry_over(folder, tmp, skip={WEIGHTS, "model.json", *stale})
        save_file(weights, str(tmp / WEIGHTS))
        write_json(tmp / "model.json", meta)


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
    try:
        meta = json.loads((Path(folder) / "model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    name = meta.get("weights") if isinstance(meta, dict) else None
    return isinstance(name, str) and (Path(folder) / name).is_file()


def read_meta(folder: Path) -> dict[str, Any]:
    """``folder/model.json``, checked to name existing weights and hold the thresholds.

    Raises:
        ValueError: naming the folder or file when the model is missing or incomplete.
    """
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
    kind = meta.get("kind", "scratch")  # older folders: scratch
    if kind not in KINDS:
        raise ValueError(f"{meta_path}: kind {kind!r} is not one of {KINDS}")
    weights = folder / str(meta.get("weights", WEIGHTS))  # older model.json: no "weights"
    if not weights.is_file():
        raise ValueError(f"{meta_path} names the weights {weights.name}, which are missing")
    meta["kind"], meta["weights"] = kind, weights.name
    return meta


def scratch_network(cfg: FacesConfig) -> ResNetEmbedder:
    """The from-scratch CNN of ``cfg`` (weights as initialised)."""
    return ResNetEmbedder(
        cfg.data.channels,
        cfg.model.stages,
        cfg.model.blocks,
        cfg.model.dim,
        cfg.model.head,
        (cfg.data.height, cfg.data.width),
    )


def load_model(folder: str | Path) -> tuple[torch.nn.Module, FacesConfig, dict[str, float]]:
    """The network of a model folder (either kind), its config and thresholds.

    Raises:
        ValueError: naming the folder or file when the model is missing, incomplete or does
            not fit its config.
    """
    folder = Path(folder)
    meta = read_meta(folder)
    where = str(folder / "model.json")
    cfg = from_dict(FacesConfig, meta["config"], where=where)
    net: torch.nn.Module = DlibResNet() if meta["kind"] == "dlib" else scratch_network(cfg)
    try:
        net.load_state_dict(load_file(str(folder / meta["weights"])))
    except (RuntimeError, OSError) as err:
        raise ValueError(f"{folder / meta['weights']}: does not fit {where} ({err})") from None
    net.eval()
    return net, cfg, {k: float(meta[k]) for k in ("threshold", "cluster_threshold")}


def load_face_model(spec: str | Path, runtime: str | None = None) -> FaceModel:
    """``"dlib"`` (the stock pretrained descriptor, thresholds :data:`STOCK_THRESHOLD` and
    :data:`STOCK_CLUSTER_THRESHOLD`) or a model folder written by training, to run on
    ``runtime`` (None: the folder's ``model.runtime``;
    :data:`~tripletkit.faces.runtime.DEFAULT_RUNTIME` for the stock descriptor). An ONNX
    runtime's export is built on first use: in the model folder, or in the cache folder
    for the stock descriptor (:func:`tripletkit.faces.runtime.load_onnx`).

    Raises:
        ValueError: anything else, naming it; a model folder that is missing or incomplete; a
            runtime that is not one of :data:`tripletkit._onnx.RUNTIMES` (naming where
            it came from), or an ONNX one for a scratch model.
    """
    if runtime is not None:
        check_runtime(runtime, "runtime")
    if str(spec) == "dlib":
        model = FaceModel(
            load_dlib_resnet(),
            "dlib",
            STOCK_THRESHOLD,
            STOCK_CLUSTER_THRESHOLD,
            None,
            STOCK_CALIBRATION,
        )
        return with_runtime(model, runtime or DEFAULT_RUNTIME, None)
    folder = Path(spec)
    if not folder.is_dir():
        raise ValueError(
            f"--model {spec}: not 'dlib' (the pretrained descriptor) nor a model folder "
            "(e.g. runs/demo/fold0)"
        )
    net, cfg, thresholds = load_model(folder)
    meta = read_meta(folder)
    if runtime is None:  # the folder's setting, which a scratch model leaves to PyTorch
        runtime = check_runtime(cfg.model.runtime, f"model.runtime of {folder / 'model.json'}")
        if meta["kind"] != "dlib":
            runtime = "torch"
    model = FaceModel(
        net,
        meta["kind"],
        thresholds["threshold"],
        thresholds["cluster_threshold"],
        cfg,
        str(meta.get("calibration", "training people (an older model folder)")),
    )
    return with_runtime(model, runtime, folder)


def with_runtime(model: FaceModel, runtime: str, folder: Path | None) -> FaceModel:
    """``model`` running on ``runtime``; an ONNX runtime's export lives in ``folder`` (None:
    the cache folder).

    Raises:
        ValueError: a bad runtime; an ONNX runtime for a scratch model.
    """
    check_runtime(runtime, "runtime")
    if runtime == "torch":
        return replace(model, runtime=runtime, session=None)
    if model.kind != "dlib" or not isinstance(model.net, DlibResNet):
        where = f" ({folder})" if folder is not None else ""
        raise ValueError(
            f"runtime {runtime!r} runs dlib's ResNet only; this is a {model.kind} model{where}: "
            "use runtime 'torch'"
        )
    return replace(model, runtime=runtime, session=load_onnx(model.net, runtime, folder))
