"""The run commands, for either task: train, evaluate, demo (train, then evaluate)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from .settings import config_from_args


def add_commands(commands: Any) -> None:
    """Register ``train``, ``evaluate`` and ``demo``."""
    train = commands.add_parser(
        "train",
        help="train on every identity fold (and ablation arm)",
        description="Train one model per fold of held-out identities (data.fold: all, an "
        "index, or none to train on every identity). Writes RUNS/NAME/foldK/ (RUNS/NAME/all/ "
        "with data.fold=none) with model.safetensors, model.json, train_log.jsonl and "
        "checkpoint.pt; exits with status 1, naming the model, when an embedding ended "
        "collapsed.",
    )
    with_config(train)
    with_backbone(train)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="score a trained run and write its report",
        description="Verification, identification and clustering on the held-out identities of "
        "every fold, for the model, its ablation arms and the baselines (eigenfaces, raw "
        "pixels, untrained network). Writes metrics.json, report.md and PNG figures. With "
        "--people FOLDER (faces): every model of the run, and the pretrained descriptor a dlib "
        "run started from, scored on the people of FOLDER instead (one sub-folder per person, "
        "none of them trained on), with bootstrap intervals over people; writes "
        "RUN/people-<FOLDER name>.json.",
    )
    evaluate.add_argument("run", help="the run folder, e.g. runs/demo")
    evaluate.add_argument(
        "--people",
        metavar="FOLDER",
        help="score the run's models on these people (a sub-folder per person) instead",
    )
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


def _train(args: argparse.Namespace) -> int:
    from .. import distributed
    from ..train import LOG, ended_collapsed

    cfg = config_from_args(args)
    run = Path(args.runs) / cfg.name
    with distributed.session(cfg.train.timeout, cfg.train.backend, cfg.train.device):
        if cfg.task == "search":
            from ..search.training import train as train_search

            models = train_search(cfg, run, resume=args.resume, progress=not args.quiet)
        else:
            from ..faces.experiment import train as train_faces

            models = train_faces(cfg, run, resume=args.resume, progress=not args.quiet)
        if distributed.is_main():
            world = distributed.world_size()
            ranks = f" on {world} ranks" if world > 1 else ""
            print(f"trained {len(models)} model(s) in {run}{ranks}")
            collapsed = [(m, why) for m in models if (why := ended_collapsed(Path(m) / LOG))]
            for model, why in collapsed:
                print(
                    f"tripletkit train: error: {model}: {why}; it was saved but is not worth "
                    "using: lower train.lr, lengthen train.warmup_steps or mine easier "
                    "triplets (loss.mining=semi-hard)",
                    file=sys.stderr,
                )
            if collapsed:
                return 1
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ..config import read_settings

    run = Path(args.run)
    config = run / "config.yaml"
    task = read_settings(config).get("task", "faces") if config.is_file() else "faces"
    if getattr(args, "people", None) is not None:
        if task != "faces":
            raise ValueError(f"--people scores face models; {run} is a {task} run")
        from ..faces.held_out import evaluate_people, scores_file, table

        print(table(evaluate_people(run, args.people, progress=not args.quiet)))
        print(f"scores: {scores_file(run, Path(args.people))}")
        return 0
    if task == "search":
        from ..search.evaluation import evaluate
        from ..search.report import SEARCH_METRICS

        summary = evaluate(run, progress=not args.quiet)
        lines = [
            "| arm | " + " | ".join(label for _, label in SEARCH_METRICS) + " |",
            "|---" * (len(SEARCH_METRICS) + 1) + "|",
        ]
        lines += [
            f"| {arm} | " + " | ".join(f"{row[k]:.4f}" for k, _ in SEARCH_METRICS) + " |"
            for arm, row in summary.items()
        ]
        print("\n".join(lines))
    else:
        from ..faces.experiment import evaluate as evaluate_faces
        from ..faces.report import FACE_METRICS, metrics_table

        faces = evaluate_faces(run, progress=not args.quiet)
        print(metrics_table(faces, FACE_METRICS, list(faces)))
    print(f"report: {run / 'report.md'}")
    print(f"metrics: {run / 'metrics.json'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    trained = _train(args)
    if trained:
        return trained
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 evaluates
        return 0
    args.run = str(Path(args.runs) / config_from_args(args).name)
    return _evaluate(args)
