"""Command line: ``tripletkit <command>``. Each command parses its arguments, loads the config,
calls one workflow, and reports where the outputs went. One module per domain registers its
commands (:mod:`.runs`: train, evaluate, demo; :mod:`.faces`; :mod:`.serve`; :mod:`.search`)
and imports the library lazily, so ``tripletkit --help`` starts at once."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from . import faces, runs, search, serve
from .settings import config_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tripletkit",
        description="Embeddings with the FaceNet triplet loss. Faces: train, evaluate, embed, "
        "cluster, verify. Search (--task search or a search config): train, evaluate, mine, "
        "index, search.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    runs.add_commands(commands)
    faces.add_commands(commands)
    serve.add_commands(commands)
    search.add_commands(commands, config_from_args)
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
