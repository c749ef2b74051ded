"""The service commands: serve an index and a gallery, enroll a folder of people."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_commands(commands: Any) -> None:
    """Register ``serve`` and ``enroll``."""
    serve = commands.add_parser(
        "serve",
        help="HTTP service and web page: search an index, look up faces in a gallery",
        description="Serve a search index (written by `tripletkit index`), a face gallery, or "
        "both, with a JSON API (/docs) and a web page (/). It comes up at once and loads (or, "
        "with --build-index, builds) in the background; /health says how far. Binds 127.0.0.1 "
        "unless --host says otherwise; enroll, rename and delete need the token in "
        "$TRIPLETKIT_SERVE_TOKEN when it is set, the faces' reads the one in "
        "$TRIPLETKIT_SERVE_READ_TOKEN (or the first) when that is set. Exits non-zero when "
        "loading fails. See docs/serve.md.",
    )
    serve.add_argument("--index", help="index folder written by `tripletkit index`")
    serve.add_argument("--gallery", help="face gallery folder (created when absent)")
    serve.add_argument(
        "--model", default="dlib", help="'dlib' (default) or a face model folder from training"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    serve.add_argument(
        "--build-index",
        metavar="DATA",
        help="when --index holds no index yet, build it in the background from DATA ('wiki' or "
        "a BEIR folder), as `tripletkit index` would; faces are answered meanwhile",
    )
    serve.add_argument(
        "--build-model",
        metavar="DIR",
        help="the sentence-transformers encoder of --build-index (default all-MiniLM-L6-v2)",
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a name the service is reached under (a reverse proxy's server name), besides "
        "127.0.0.1, localhost, ::1 and --host; repeatable; '*' accepts any Host",
    )
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


def _serve(args: argparse.Namespace) -> int:
    from ..serve.run import serve
    from ..serve.search import IndexBuild

    if args.build_model and not args.build_index:
        raise ValueError("--build-model needs --build-index")
    build = IndexBuild(args.build_index, args.build_model) if args.build_index else None
    serve(
        args.index,
        args.gallery,
        args.model,
        args.host,
        args.port,
        build=build,
        allowed_hosts=tuple(args.allowed_host),
    )
    return 0


def _enroll(args: argparse.Namespace) -> int:
    from ..faces.images import orl_root
    from ..serve.state import ServeConfig, load_services

    folder = orl_root() if args.folder == "orl" else Path(args.folder)
    services = load_services(ServeConfig(gallery=Path(args.gallery), model=args.model))
    try:
        assert services.faces is not None
        done = services.faces.enroll_folder(folder, per_person=args.per_person)
    finally:
        services.close()
    print(f"enrolled {sum(done.values())} faces of {len(done)} people into {args.gallery}")
    return 0
