"""Command line: ``tripletkit <command>``. Each command parses its arguments, loads the config,
calls one workflow, and reports where the outputs went."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from ._cli_search import add_commands as add_search_commands
from ._io import atomic_write, write_json
from .config import load_config

if TYPE_CHECKING:
    import torch

    from .data.photos import PhotoFace
    from .tasks.face_models import FaceModel


def _config(args: argparse.Namespace) -> Any:
    overrides = list(args.set or [])
    if getattr(args, "data", None):
        overrides.append(f"data.source={args.data}")
    if getattr(args, "name", None):
        overrides.append(f"name={args.name}")
    if getattr(args, "strict", False):
        overrides.append("data.strict=true")
    if getattr(args, "backbone", None):
        overrides.append(f"model.backbone={args.backbone}")
    return load_config(args.config, overrides, task=getattr(args, "task", None))


def _task(name: str) -> Any:
    if name == "search":
        from .tasks import search

        return search
    from .tasks import faces

    return faces


def _train(args: argparse.Namespace) -> int:
    from . import distributed

    cfg = _config(args)
    run = Path(args.runs) / cfg.name
    with distributed.session(cfg.train.timeout, cfg.train.backend, cfg.train.device):
        models = _task(cfg.task).train(cfg, run, resume=args.resume, progress=not args.quiet)
        if distributed.is_main():
            world = distributed.world_size()
            ranks = f" on {world} ranks" if world > 1 else ""
            print(f"trained {len(models)} model(s) in {run}{ranks}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .report import FACE_METRICS, metrics_table
    from .search_report import SEARCH_METRICS

    run = Path(args.run)
    config = run / "config.yaml"
    task = "faces"
    if config.is_file():
        task = (yaml.safe_load(config.read_text()) or {}).get("task", "faces")
    summary = _task(task).evaluate(run, progress=not args.quiet)
    if task == "search":
        columns = SEARCH_METRICS
        lines = [
            "| arm | " + " | ".join(label for _, label in columns) + " |",
            "|---" * (len(columns) + 1) + "|",
        ]
        lines += [
            f"| {arm} | " + " | ".join(f"{row[k]:.4f}" for k, _ in columns) + " |"
            for arm, row in summary.items()
        ]
        print("\n".join(lines))
    else:
        print(metrics_table(summary, FACE_METRICS, list(summary)))
    print(f"report: {run / 'report.md'}")
    print(f"metrics: {run / 'metrics.json'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    _train(args)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 evaluates
        return 0
    args.run = str(Path(args.runs) / _config(args).name)
    return _evaluate(args)


def _photos(args: argparse.Namespace) -> tuple[FaceModel, list[PhotoFace], torch.Tensor]:
    """The model of ``--model`` and the faces of the photos under ``args.folder``."""
    from .data.photos import list_photos, read_faces
    from .tasks.face_models import load_face_model

    model = load_face_model(args.model)
    faces, inputs = read_faces(
        list_photos(args.folder),
        model.prepare,
        detect=args.detect,
        detector=args.detector,
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
    from . import metrics
    from .report import cluster_montage

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

    from .data.photos import read_faces
    from .tasks.face_models import load_face_model

    model = load_face_model(args.model)
    chosen, inputs = [], []
    for path in (args.image1, args.image2):
        faces, rows = read_faces(
            [path],
            model.prepare,
            detect=args.detect,
            detector=args.detector,
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


def _serve(args: argparse.Namespace) -> int:
    from .serve.run import serve

    serve(args.index, args.gallery, args.model, args.host, args.port)
    return 0


def _enroll(args: argparse.Namespace) -> int:
    from .data.images import orl_root
    from .serve.state import ServeConfig, load_services

    folder = orl_root() if args.folder == "orl" else Path(args.folder)
    services = load_services(ServeConfig(gallery=Path(args.gallery), model=args.model))
    try:
        assert services.faces is not None
        done = services.faces.enroll_folder(folder, per_person=args.per_person)
    finally:
        services.close()
    print(f"enrolled {sum(done.values())} faces of {len(done)} people into {args.gallery}")
    return 0


def _area(box: tuple[int, int, int, int]) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tripletkit",
        description="Embeddings with the FaceNet triplet loss. Faces: train, evaluate, embed, "
        "cluster, verify. Search (--task search or a search config): train, evaluate, mine, "
        "index, search.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="YAML config (default: built-in defaults for ORL)")
        p.add_argument(
            "--set",
            action="append",
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set train.epochs=50 (repeatable)",
        )
        p.add_argument("--data", help="'orl' or a folder with one sub-folder per identity")
        p.add_argument("--name", help="run name (folder under --runs)")
        p.add_argument("--runs", default="runs", help="folder of runs (default: runs)")
        p.add_argument(
            "--resume", action="store_true", help="continue from the last checkpoint of each model"
        )
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument(
            "--strict",
            action="store_true",
            help="stop on an unreadable image instead of skipping it",
        )
        p.add_argument(
            "--task",
            choices=["faces", "search"],
            help="faces (default) or search; a config's task key also sets it",
        )

    def with_backbone(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--model",
            dest="backbone",
            choices=["scratch", "dlib"],
            help="faces: train from scratch, or fine-tune dlib's pretrained descriptor "
            "(sets model.backbone)",
        )

    train = commands.add_parser(
        "train",
        help="train on every identity fold (and ablation arm)",
        description="Train one model per fold of held-out identities (data.fold: all, an "
        "index, or none to train on every identity). Writes RUNS/NAME/foldK/ with "
        "model.safetensors, model.json, train_log.jsonl and checkpoint.pt.",
    )
    with_config(train)
    with_backbone(train)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="score a trained run and write its report",
        description="Verification, identification and clustering on the held-out identities of "
        "every fold, for the model, its ablation arms and the baselines (eigenfaces, raw "
        "pixels, untrained network). Writes metrics.json, report.md and PNG figures.",
    )
    evaluate.add_argument("run", help="the run folder, e.g. runs/demo")
    evaluate.add_argument("--quiet", action="store_true", help="less output")
    evaluate.set_defaults(handler=_evaluate)

    demo = commands.add_parser(
        "demo",
        help="the ORL experiment: train every fold, evaluate, report",
        description="train followed by evaluate (what `make demo` runs).",
    )
    with_config(demo)
    with_backbone(demo)
    demo.set_defaults(handler=_demo)

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
            default="hog",
            help="with --detect: dlib's HOG (fast, frontal) or MMOD CNN (more poses, ~10x slower)",
        )
        p.add_argument(
            "--strict",
            action="store_true",
            help="stop on an unusable photo instead of skipping it",
        )
        p.add_argument("--quiet", action="store_true", help="no progress bar")

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
    serve = commands.add_parser(
        "serve",
        help="HTTP service and web page: search an index, look up faces in a gallery",
        description="Serve a search index (written by `tripletkit index`), a face gallery, or "
        "both, with a JSON API (/docs) and a web page (/). Binds 127.0.0.1 unless --host "
        "says otherwise; enroll, rename and delete need the token in $TRIPLETKIT_SERVE_TOKEN "
        "when it is set. See docs/serve.md.",
    )
    serve.add_argument("--index", help="index folder written by `tripletkit index`")
    serve.add_argument("--gallery", help="face gallery folder (created when absent)")
    serve.add_argument(
        "--model", default="dlib", help="'dlib' (default) or a face model folder from training"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    serve.set_defaults(handler=_serve)

    enroll = commands.add_parser(
        "enroll",
        help="enroll a folder of people into a face gallery",
        description="Enroll FOLDER (one sub-folder of photos per person, or 'orl') into the "
        "gallery at --gallery: the largest face of each photo, aligned.",
    )
    enroll.add_argument("folder", help="a folder with one sub-folder per person, or 'orl'")
    enroll.add_argument("--gallery", required=True, help="gallery folder (created when absent)")
    enroll.add_argument("--model", default="dlib", help="'dlib' (default) or a face model folder")
    enroll.add_argument("--per-person", type=int, help="at most this many photos per person")
    enroll.set_defaults(handler=_enroll)
    add_search_commands(commands, _config)
    return parser


def _warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> str:
    """Warnings as one plain line: they speak to the user, not about a line of our code."""
    return f"tripletkit: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    shown = warnings.formatwarning
    warnings.formatwarning = _warning
    try:
        return int(args.handler(args))
    except ValueError as err:
        print(f"tripletkit {args.command}: error: {err}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = shown
