"""The face commands: embed, cluster, verify photos with a face model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._io import atomic_write, write_json

if TYPE_CHECKING:
    import torch

    from ..faces.models import FaceModel
    from ..faces.photos import PhotoFace


def add_commands(commands: Any) -> None:
    """Register ``embed``, ``cluster`` and ``verify``."""
    embed = commands.add_parser(
        "embed",
        help="embed every image of a folder",
        description="Embed every image under FOLDER; writes an .npz with 'embeddings' and 'paths'.",
    )
    embed.add_argument("folder")
    with_model(embed)
    embed.add_argument("--out", default="embeddings.npz", help="output .npz file")
    embed.set_defaults(handler=_embed)

    cluster = commands.add_parser(
        "cluster",
        help="group the photos of a folder by person",
        description="Embed every image under FOLDER and group them by agglomerative clustering "
        "(average linkage); the number of people is unknown unless --clusters is given. "
        "Writes clusters.json and a montage clusters.png.",
    )
    cluster.add_argument("folder")
    with_model(cluster)
    cluster.add_argument("--clusters", type=int, help="number of people, when known")
    cluster.add_argument(
        "--threshold",
        type=float,
        help="distance threshold (default: the model's, chosen in training)",
    )
    cluster.add_argument("--out", default="clusters", help="output folder")
    cluster.set_defaults(handler=_cluster)

    verify = commands.add_parser(
        "verify",
        help="same person or not?",
        description="The distance between two face images and the decision at the model's "
        "threshold, as JSON.",
    )
    verify.add_argument("image1")
    verify.add_argument("image2")
    with_model(verify)
    verify.set_defaults(handler=_verify)


def with_model(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="'dlib' (the pretrained face descriptor) or a model folder, e.g. runs/demo/fold0",
    )
    p.add_argument(
        "--detect",
        action="store_true",
        help="find every face in each photo (dlib's detector, 5-point alignment); "
        "without it each photo is one face",
    )
    p.add_argument(
        "--detector",
        choices=["hog", "cnn"],
        default=None,
        help="with --detect: dlib's HOG (the default: fast, frontal) or MMOD CNN (more poses, "
        "~10x slower); without --detect it is an error, not silently ignored",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="stop on an unusable photo instead of skipping it",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    with_runtime(p)


def with_runtime(p: argparse.ArgumentParser) -> None:
    """``--runtime``: what runs a dlib model (default: the model folder's model.runtime)."""
    p.add_argument(
        "--runtime",
        choices=["torch", "onnx", "onnx-int8"],
        help="what runs a dlib model: PyTorch, ONNX Runtime fp32, or ONNX Runtime int8 (exported "
        "once and kept beside the model, or in the cache for 'dlib'); default: the model "
        "folder's model.runtime, 'onnx' for 'dlib'",
    )


def detector_of(args: argparse.Namespace) -> str:
    """``--detector`` (default "hog").

    Raises:
        ValueError: ``--detector`` given without ``--detect``, which alone finds faces.
    """
    if args.detector is not None and not args.detect:
        raise ValueError(
            f"--detector {args.detector} needs --detect (it chooses how faces are found)"
        )
    return str(args.detector or "hog")


def _photos(args: argparse.Namespace) -> tuple[FaceModel, list[PhotoFace], torch.Tensor]:
    """The model of ``--model`` and the faces of the photos under ``args.folder``."""
    from ..faces.models import load_face_model
    from ..faces.photos import list_photos, read_faces

    model = load_face_model(args.model, runtime=args.runtime)
    faces, inputs = read_faces(
        list_photos(args.folder),
        model.prepare,
        detect=args.detect,
        detector=detector_of(args),
        one_face=model.one_face,
        strict=args.strict,
        progress=not args.quiet,
    )
    return model, faces, inputs


def _embed(args: argparse.Namespace) -> int:
    model, faces, inputs = _photos(args)
    emb = model.embed(inputs)
    out = Path(args.out)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                embeddings=emb,
                paths=np.array([f.path for f in faces]),
                faces=np.array([f.index for f in faces], dtype=np.int64),
                boxes=np.array([f.box for f in faces], dtype=np.int64).reshape(-1, 4),
            )

    atomic_write(out, write)
    print(f"{len(emb)} embeddings of dimension {emb.shape[1]} -> {out}")
    return 0


def _cluster(args: argparse.Namespace) -> int:
    from ..faces import metrics
    from ..faces.report import cluster_montage

    if args.clusters is not None and args.clusters < 1:
        raise ValueError(f"--clusters must be at least 1, got {args.clusters}")
    if args.threshold is not None and not args.threshold >= 0:  # NaN too
        raise ValueError(f"--threshold must be a distance >= 0, got {args.threshold}")
    model, faces, inputs = _photos(args)
    dist = metrics.distance_matrix(model.embed(inputs))
    if args.clusters is not None:
        if args.clusters > len(faces):
            raise ValueError(f"--clusters {args.clusters} is more than the {len(faces)} face(s)")
        groups = metrics.agglomerative(dist, n_clusters=args.clusters)
    else:
        # 0 is a threshold like any other (every distinct face its own cluster)
        threshold = model.cluster_threshold if args.threshold is None else args.threshold
        groups = metrics.agglomerative(dist, threshold=threshold)
    out = Path(args.out)
    order = sorted(np.unique(groups).tolist(), key=lambda c: -int((groups == c).sum()))
    listing = {
        f"cluster{n}": [
            {"path": faces[i].path, "face": faces[i].index, "box": list(faces[i].box)}
            for i in np.flatnonzero(groups == c)
        ]
        for n, c in enumerate(order)
    }
    write_json(out / "clusters.json", listing)
    cluster_montage(inputs.numpy(), groups, out / "clusters.png")
    print(
        f"{len(faces)} faces in {len(listing)} clusters -> {out / 'clusters.json'}, "
        f"{out / 'clusters.png'}"
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    import torch

    from ..faces.models import load_face_model
    from ..faces.photos import read_faces

    model = load_face_model(args.model, runtime=args.runtime)
    chosen, inputs = [], []
    for path in (args.image1, args.image2):
        faces, rows = read_faces(
            [path],
            model.prepare,
            detect=args.detect,
            detector=detector_of(args),
            one_face=model.one_face,
            strict=True,
            progress=False,
        )
        # several faces: the largest one
        best = max(range(len(faces)), key=lambda i: _area(faces[i].box))
        chosen.append((faces[best], len(faces)))
        inputs.append(rows[best])
    a, b = model.embed(torch.stack(inputs))
    distance = float(np.linalg.norm(a - b))
    print(
        json.dumps(
            {
                "distance": round(distance, 4),
                "threshold": round(model.threshold, 4),
                "same_person": distance <= model.threshold,
                "calibration": model.calibration,
                "faces": [
                    {"path": f.path, "box": list(f.box), "faces_in_photo": n} for f, n in chosen
                ],
            }
        )
    )
    return 0


def _area(box: tuple[int, int, int, int]) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])
