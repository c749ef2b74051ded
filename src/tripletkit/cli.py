"""Command line: ``tripletkit <command> ...``; each command parses, calls one workflow, reports."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def _demo(args: argparse.Namespace) -> int:
    from .tasks.synthetic import run_demo

    run_demo(steps=args.steps, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tripletkit",
        description="FaceNet triplet loss with exact in-batch mining.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="one-minute demonstration on synthetic identities",
        description="Train a small MLP on synthetic identities with semi-hard mining and the "
        "default curriculum, and report rank-1 accuracy on held-out identities.",
    )
    demo.add_argument("--steps", type=int, default=300, help="optimiser steps (default 300)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))
