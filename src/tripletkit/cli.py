"""Command line: ``tripletkit <command>``. Each command parses its arguments, loads the config,
calls one workflow, and reports where the outputs went."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from ._cli_search import add_commands as add_search_commands
from ._io import atomic_write, write_json
from .config import load_config

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from .data.images import ImageSet


def _config(args: argparse.Namespace) -> Any:
    overrides = list(args.set or [])
    if getattr(args, "data", None):
        overrides.append(f"data.source={args.data}")
    if getattr(args, "name", None):
        overrides.append(f"name={args.name}")
    if getattr(args, "strict", False):
        overrides.append("data.strict=true")
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


def _crop(detect: bool) -> Callable[[Image.Image], Image.Image | None] | None:
    if not detect:
        return None
    from .data.detect import face_cropper

    return face_cropper()


def _photos(args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, float], ImageSet]:
    """The model of ``--model`` and every image under ``args.folder``, sized for it."""
    from .data.images import load_unlabelled
    from .tasks import faces

    model, cfg, meta = faces.load_model(args.model)
    size = (cfg.data.height, cfg.data.width)
    data = load_unlabelled(
        args.folder, size, cfg.data.channels, strict=args.strict, crop=_crop(args.detect)
    )
    return model, meta, data


def _embed(args: argparse.Namespace) -> int:
    from .tasks import faces

    model, _, data = _photos(args)
    emb = faces.embed(model, data.images)
    out = Path(args.out)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, embeddings=emb, paths=np.array(data.paths))

    atomic_write(out, write)
    print(f"{len(emb)} embeddings of dimension {emb.shape[1]} -> {out}")
    return 0


def _cluster(args: argparse.Namespace) -> int:
    from . import metrics
    from .report import cluster_montage
    from .tasks import faces

    if args.clusters is not None and args.clusters < 1:
        raise ValueError(f"--clusters must be at least 1, got {args.clusters}")
    if args.threshold is not None and not args.threshold >= 0:  # NaN too
        raise ValueError(f"--threshold must be a distance >= 0, got {args.threshold}")
    model, meta, data = _photos(args)
    dist = metrics.distance_matrix(faces.embed(model, data.images))
    if args.clusters is not None:
        if args.clusters > len(data):
            raise ValueError(f"--clusters {args.clusters} is more than the {len(data)} image(s)")
        groups = metrics.agglomerative(dist, n_clusters=args.clusters)
    else:
        # 0 is a threshold like any other (every distinct image its own cluster)
        threshold = meta["cluster_threshold"] if args.threshold is None else args.threshold
        groups = metrics.agglomerative(dist, threshold=threshold)
    out = Path(args.out)
    listing = {
        f"cluster{c}": [data.paths[i] for i in np.flatnonzero(groups == c)]
        for c in np.unique(groups)
    }
    write_json(out / "clusters.json", listing)
    cluster_montage(data.images.numpy(), groups, out / "clusters.png")
    print(
        f"{len(data)} images in {len(listing)} clusters -> {out / 'clusters.json'}, "
        f"{out / 'clusters.png'}"
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    import torch

    from .data.images import read_image
    from .tasks import faces

    model, cfg, meta = faces.load_model(args.model)
    size = (cfg.data.height, cfg.data.width)
    crop = _crop(args.detect)
    images = [read_image(p, size, cfg.data.channels, crop) for p in (args.image1, args.image2)]
    a, b = faces.embed(model, torch.stack(images))
    distance = float(np.linalg.norm(a - b))
    same = distance <= meta["threshold"]
    print(
        json.dumps(
            {
                "distance": round(distance, 4),
                "threshold": round(meta["threshold"], 4),
                "same_person": same,
            }
        )
    )
    return 0


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

    train = commands.add_parser(
        "train",
        help="train on every identity fold (and ablation arm)",
        description="Train one model per fold of held-out identities (data.fold: all, an "
        "index, or none to train on every identity). Writes RUNS/NAME/foldK/ with "
        "model.safetensors, model.json, train_log.jsonl and checkpoint.pt.",
    )
    with_config(train)
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
    demo.set_defaults(handler=_demo)

    def with_model(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, help="a model folder, e.g. runs/demo/fold0")
        p.add_argument(
            "--detect", action="store_true", help="find and crop the largest face first (OpenCV)"
        )
        p.add_argument(
            "--strict",
            action="store_true",
            help="stop on an unreadable image instead of skipping it",
        )

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
    add_search_commands(commands, _config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ValueError as err:
        print(f"tripletkit {args.command}: error: {err}", file=sys.stderr)
        return 2
