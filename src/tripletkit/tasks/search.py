"""Semantic search: triplet fine-tuning of a sentence encoder with false-negative-aware mining,
FAISS search, and IR evaluation on BEIR-format data.

A run folder holds ``config.yaml``; ``base/`` (the zero-shot encoder's corpus embeddings, shared
by its evaluation and by the miner); one folder per fine-tuned arm (``mined_filtered/`` ...)
with ``model/`` (sentence-transformers format), the training log, mined negatives and the dev
curve; and after :func:`evaluate` ``metrics.json``, ``report.md``, one TREC run file per arm and
the qrels they were scored against.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor

from .. import distributed, metrics
from .._io import write_json, write_text
from ..config import SearchConfig, from_dict, to_dict
from ..data.text import Retrieval, build_wiki, load_beir
from ..index import Index
from ..losses import TripletLoss, TripletStats
from ..models.text import dimension, embed, load_encoder, save_encoder
from ..negatives import MinedNegatives, MiningConfig, mine_negatives
from ..sampling import ShuffledBatches
from ..train import curriculum_from_config, fit, loss_from_config
from .corpus_encodings import corpus_vectors, encode_sharded, unwrap

ARMS = ("bm25", "base", "in_batch", "mined_unfiltered", "mined_filtered")
TRAINED = ("in_batch", "mined_unfiltered", "mined_filtered")
TOP_K = 100


def load_data(cfg: SearchConfig) -> Retrieval:
    """The configured BEIR folder; "wiki" is built into ``data.cache`` on first use."""
    if cfg.data.source == "wiki":
        root = Path(cfg.data.cache) / f"wiki-seed{cfg.data.seed}"
        if not (root / "qrels" / "test.tsv").is_file():
            build_wiki(root, seed=cfg.data.seed)
    else:
        root = Path(cfg.data.source)
    return load_beir(root)


def mining_config(cfg: SearchConfig, arm: str) -> MiningConfig | None:
    """The miner of an arm: none for in-batch only, the rank window alone, or every filter."""
    neg = cfg.negatives
    if arm == "in_batch":
        return None
    if arm == "mined_unfiltered":
        return MiningConfig.unfiltered(neg.n, neg.r_min, neg.r_max)
    return MiningConfig(
        n=neg.n,
        r_min=neg.r_min,
        r_max=neg.r_max,
        max_score=neg.max_score,
        relative_margin=neg.relative_margin,
        absolute_margin=neg.absolute_margin,
    )


class SearchBatches:
    """Batches of training queries, each with one of its relevant documents (drawn per step)
    and its mined negatives; the loss mines again inside the batch, where relevance comes
    from the qrels, so a document relevant to several queries is a negative for none.

    Under torchrun each rank takes ``batch_size / N`` queries; the query and document
    embeddings of every rank are gathered, and relevance is judged over the global batch.

    With ``remine``, the negatives are mined again with the model in training at every
    ``negatives.remine_every``-th step; :meth:`state_dict` carries the current ones into the
    checkpoint, so a resumed run continues with the negatives the interrupted one had.
    """

    unused_parameters = True  # the transformer's pooler is loaded but not used

    def __init__(
        self,
        data: Retrieval,
        qrels: dict[str, dict[str, int]],
        negatives: dict[str, list[str]],
        cfg: SearchConfig,
        remine: Callable[[torch.nn.Module], dict[str, list[str]]] | None = None,
    ) -> None:
        self.data, self.qrels, self.negatives = data, qrels, negatives
        self.qids = sorted(q for q, docs in qrels.items() if any(v > 0 for v in docs.values()))
        self.sampler = ShuffledBatches(
            len(self.qids),
            distributed.split(cfg.train.batch_size, "train.batch_size"),
            seed=cfg.train.seed,
            rank=distributed.rank(),
            world_size=distributed.world_size(),
        )
        self.remine, self.remine_every = remine, cfg.negatives.remine_every

    def state_dict(self) -> dict[str, Any]:
        """What decides the coming batches beyond the sampler's state: the current negatives
        (query id -> document ids), re-mined or first mined."""
        return {"negatives": {q: list(ds) for q, ds in self.negatives.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue with the negatives of :meth:`state_dict`.

        Raises:
            ValueError: naming the key or the document when ``state`` has no "negatives"
                (query id -> list of document ids) or names a document not in the corpus.
        """
        negatives = state.get("negatives") if isinstance(state, dict) else None
        if not isinstance(negatives, dict) or not all(
            isinstance(q, str) and isinstance(ds, list) for q, ds in negatives.items()
        ):
            raise ValueError(
                "the checkpoint's batch source state needs 'negatives': query id -> list of "
                "document ids"
            )
        index = self.data.corpus.index
        for q, ds in negatives.items():
            unknown = next((d for d in ds if d not in index), None)
            if unknown is not None:
                raise ValueError(
                    f"the checkpoint's negatives of query {q!r} name document {unknown!r}, "
                    "which is not in the corpus"
                )
        self.negatives = {q: list(ds) for q, ds in negatives.items()}

    def loss(
        self,
        model: torch.nn.Module,
        loss_fn: TripletLoss,
        indices: list[int],
        gen: torch.Generator,
        step: int,
    ) -> tuple[Tensor, TripletStats]:
        if self.remine is not None and self.remine_every and step and step % self.remine_every == 0:
            self.negatives = self.remine(model)
            model.train()
        qids = [self.qids[i] for i in indices]
        docs: list[str] = []
        for q in qids:
            relevant = sorted(d for d, s in self.qrels[q].items() if s > 0)
            docs.append(relevant[int(torch.randint(len(relevant), (1,), generator=gen))])
            docs.extend(self.negatives.get(q, []))
        docs = list(dict.fromkeys(docs))  # a document twice in the batch is one column
        corpus = self.data.corpus
        q_emb = distributed.gather(embed(model, [self.data.queries[q] for q in qids]))
        d_emb = distributed.gather(embed(model, [corpus.texts[corpus.index[d]] for d in docs]))
        everyone = distributed.all_objects((qids, docs), "batch ids")
        qids = [q for part, _ in everyone for q in part]
        docs = [d for _, part in everyone for d in part]
        relevant_mask = torch.tensor([[self.qrels[q].get(d, 0) > 0 for d in docs] for q in qids])
        return loss_fn.relevance(q_emb, d_emb, relevant_mask.to(q_emb.device))


def index_on_disk(
    model: Any,
    data: Retrieval,
    cfg: SearchConfig,
    folder: Path,
    extra: dict[str, str],
    progress: bool,
    chunk: int = 16384,
) -> None:
    """An IVF-PQ (HNSW quantizer) of the corpus with its lists on disk, for corpora larger than
    memory: the corpus is encoded ``chunk`` texts at a time (sharded over the ranks) into a
    memory-mapped .npy beside ``folder``, which then feeds the training sample and the chunked
    build; rank 0 writes. The ``extra`` files (name -> text) are written into the index's
    temporary folder, so the folder appears complete with them or not at all. Memory holds a
    chunk, the sample and the ids."""
    from ..index import default_nlist, training_sample

    texts, main = data.corpus.texts, distributed.is_main()
    scratch = folder.with_name(f".{folder.name}.vectors.npy")
    dim = dimension(model)
    store = (
        np.lib.format.open_memmap(scratch, "w+", np.float32, (len(texts), dim)) if main else None
    )
    try:
        for start in range(0, len(texts), chunk):
            part = encode_sharded(model, texts[start : start + chunk], cfg, False)
            if store is not None:
                store[start : start + len(part)] = part
            if progress and main:
                print(f"encoded {min(start + chunk, len(texts))}/{len(texts)}", flush=True)
        if store is None:
            return
        store.flush()
        nlist = default_nlist(len(texts))
        pieces = (store[i : i + chunk] for i in range(0, len(texts), chunk))
        Index.build_on_disk(
            pieces,
            data.corpus.ids,
            folder,
            trained_on=training_sample(store, nlist),
            nlist=nlist,
            quantizer="hnsw",
            extra=extra,  # published with the index, in the same rename
        )
    finally:
        del store
        if main:
            scratch.unlink(missing_ok=True)


def retrieve(
    model: Any,
    data: Retrieval,
    query_ids: list[str],
    vectors: np.ndarray,
    cfg: SearchConfig,
    progress: bool,
) -> dict[str, dict[str, float]]:
    """Top-100 documents per query by inner product over ``vectors``."""
    q = encode_sharded(model, [data.queries[i] for i in query_ids], cfg, progress)
    index = Index.build(vectors, data.corpus.ids, cfg.index)
    hits = index.search_ids(q, TOP_K)
    return {qid: dict(h) for qid, h in zip(query_ids, hits, strict=True)}


def bm25_run(data: Retrieval, query_ids: list[str]) -> dict[str, dict[str, float]]:
    """BM25 (bm25s, Lucene variant, k1 = 1.5, b = 0.75, English stop words) top-100."""
    import bm25s

    retriever = bm25s.BM25(k1=1.5, b=0.75)
    retriever.index(
        bm25s.tokenize(data.corpus.texts, stopwords="en", show_progress=False), show_progress=False
    )
    tokens = bm25s.tokenize(
        [data.queries[q] for q in query_ids], stopwords="en", show_progress=False
    )
    k = min(TOP_K, len(data.corpus))
    rows, scores = retriever.retrieve(tokens, k=k, show_progress=False)
    return {
        qid: {data.corpus.ids[r]: float(s) for r, s in zip(row, srow, strict=True)}
        for qid, row, srow in zip(query_ids, rows, scores, strict=True)
    }


def dev_subset(
    data: Retrieval, cfg: SearchConfig, queries: int = 200, extra_docs: int = 1000
) -> tuple[list[str], list[int]]:
    """A fixed dev subset for the curve during training: some dev queries, their relevant
    documents and random others (a small corpus, so the curve costs seconds, not minutes)."""
    qrels = data.split(cfg.data.dev_split)
    rng = np.random.default_rng(cfg.data.seed)
    qids = sorted(qrels)
    qids = sorted(rng.choice(qids, size=min(queries, len(qids)), replace=False).tolist())
    docs = {data.corpus.index[d] for q in qids for d in qrels[q]}
    docs |= set(
        rng.choice(len(data.corpus), size=min(extra_docs, len(data.corpus)), replace=False).tolist()
    )
    return qids, sorted(docs)


def train(
    cfg: SearchConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True
) -> list[Path]:
    """Fine-tune the configured arms; return their model folders."""
    run = Path(run_dir)
    distributed.check_same(to_dict(cfg))
    # rank 0 loads (and for "wiki" builds) the data once, and sends it to the others
    data = distributed.broadcast(load_data(cfg) if distributed.is_main() else None, "data")
    assert data is not None
    if distributed.is_main():
        write_text(run / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    done = []
    for arm in cfg.arms:
        if arm not in ARMS:
            raise ValueError(f"unknown arm {arm!r}; arms: {', '.join(ARMS)}")
        if arm in TRAINED:
            folder = run / arm / "model"
            trained = resume and (folder / "modules.json").is_file()
            if not distributed.broadcast(trained, "resume plan"):
                train_arm(cfg, data, run, arm, resume=resume, progress=progress)
            done.append(folder)
    return done


def train_arm(
    cfg: SearchConfig, data: Retrieval, run: Path, arm: str, *, resume: bool, progress: bool
) -> None:
    """Mine negatives for one arm with the zero-shot encoder, fine-tune, save the model."""
    out = run / arm
    qrels = data.split(cfg.data.train_split)
    miner = mining_config(cfg, arm)
    negatives: dict[str, list[str]] = {}
    if miner is not None:
        base = load_encoder(cfg.model.path, cfg.model.max_seq_length)
        mined = mine_with(base, data, qrels, cfg, miner, run / "base" / "corpus.npz", progress)
        if distributed.is_main():
            write_mined(out / "negatives.jsonl", out / "mining.json", mined, miner)
        negatives = mined.negatives
    model = load_encoder(cfg.model.path, cfg.model.max_seq_length)
    torch.manual_seed(cfg.train.seed)  # dropout: the same arm trains the same in any run
    remine = None
    if miner is not None and cfg.negatives.remine_every:
        remine = remine_with(data, qrels, cfg, miner, progress)
    source = SearchBatches(data, qrels, negatives, cfg, remine)
    on_step = None
    if cfg.eval_every:
        curve = _dev_curve(data, cfg, out / "dev_curve.jsonl")
        curve(0, model)

        def on_step(step: int, m: torch.nn.Module) -> None:
            if step % cfg.eval_every == 0:
                curve(step, m)

    result = fit(
        model,
        loss_from_config(cfg.loss),
        source,
        cfg.train,
        out,
        curriculum=curriculum_from_config(cfg.loss),
        resume=resume,
        progress=progress,
        desc=arm,
        on_step=on_step,
        settings={
            "arm": arm,
            "loss": dataclasses.asdict(cfg.loss),
            "negatives": dataclasses.asdict(cfg.negatives),
            "model": dataclasses.asdict(cfg.model),
        },
    )
    if cfg.eval_every and result.steps % cfg.eval_every:
        curve(result.steps, model)
    if distributed.is_main():
        save_encoder(model, out / "model")


def remine_with(
    data: Retrieval,
    qrels: dict[str, dict[str, int]],
    cfg: SearchConfig,
    miner: MiningConfig,
    progress: bool,
) -> Callable[[torch.nn.Module], dict[str, list[str]]]:
    """The re-miner of :class:`SearchBatches`: model (possibly wrapped in
    DistributedDataParallel, as the training loop passes it) -> negatives per training query,
    mined with that model's current encodings of the corpus and the queries (not cached: the
    model changes between calls). Leaves the model in eval mode."""

    def remine(model: torch.nn.Module) -> dict[str, list[str]]:
        inner = unwrap(model)
        inner.eval()
        vectors = encode_sharded(inner, data.corpus.texts, cfg, progress, "corpus")
        return mine_with(inner, data, qrels, cfg, miner, None, progress, vectors).negatives

    return remine


def mine_with(
    model: Any,
    data: Retrieval,
    qrels: dict[str, dict[str, int]],
    cfg: SearchConfig,
    miner: MiningConfig,
    cache: Path | None,
    progress: bool,
    vectors: np.ndarray | None = None,
) -> MinedNegatives:
    """Mine negatives for the training queries with ``model``'s embeddings."""
    if vectors is None:
        assert cache is not None
        vectors = corpus_vectors(model, data, cfg, cache, progress)
    qids = sorted(qrels)
    q = encode_sharded(model, [data.queries[i] for i in qids], cfg, progress)
    index = Index.build(vectors, data.corpus.ids, cfg.index)
    show = progress and distributed.is_main()
    return mine_negatives(qids, q, data.corpus.ids, vectors, qrels, miner, index, show)


def write_mined(path: Path, summary: Path, mined: MinedNegatives, miner: MiningConfig) -> None:
    """The negatives as JSONL triplets, and the filter counts as JSON."""
    lines = [
        json.dumps(
            {
                "query_id": q,
                "negative_ids": n,
                "negative_scores": mined.scores[q],
                "positive_score": mined.positive_score[q],
            }
        )
        for q, n in mined.negatives.items()
    ]
    write_text(path, "\n".join(lines) + "\n")
    write_json(
        summary,
        {
            "config": asdict(miner),
            "queries": len(mined.negatives),
            "candidates": mined.candidates,
            "removed": mined.removed,
            "kept": mined.kept,
            "relevant_kept": mined.relevant_kept,
        },
    )


def _dev_curve(data: Retrieval, cfg: SearchConfig, path: Path) -> Callable[[int, Any], None]:
    qids, docs = dev_subset(data, cfg)
    qrels = {q: data.split(cfg.data.dev_split)[q] for q in qids}
    ids = [data.corpus.ids[i] for i in docs]
    texts = [data.corpus.texts[i] for i in docs]
    main = distributed.is_main()
    if main:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)

    def point(step: int, model: Any) -> None:
        was_training = model.training
        model.eval()
        d = encode_sharded(model, texts, cfg, False)
        q = encode_sharded(model, [data.queries[i] for i in qids], cfg, False)
        if main:
            hits = Index.build(d, ids).search_ids(q, TOP_K)
            run = {qid: dict(h) for qid, h in zip(qids, hits, strict=True)}
            score = metrics.ir_scores(run, qrels)["ndcg@10"]
            with path.open("a") as f:
                f.write(json.dumps({"step": step, "ndcg@10": score}) + "\n")
        if was_training:
            model.train()

    return point


def evaluate(run_dir: str | Path, *, progress: bool = True) -> dict[str, dict[str, float]]:
    """Score every arm on the evaluation split; write run files, metrics.json and report.md.

    Returns:
        arm -> metric -> value.
    """
    from .. import search_report

    run = Path(run_dir)
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise ValueError(f"{run} is not a training run (no config.yaml); run tripletkit train")
    cfg = from_dict(SearchConfig, yaml.safe_load(cfg_path.read_text()), where=str(cfg_path))
    data = load_data(cfg)
    qrels = data.split(cfg.data.eval_split)
    qids = sorted(qrels)
    write_text(
        run / f"qrels.{cfg.data.eval_split}.tsv",
        "query-id\tcorpus-id\tscore\n"
        + "".join(f"{q}\t{d}\t{s}\n" for q in qids for d, s in qrels[q].items()),
    )
    summary: dict[str, dict[str, float]] = {}
    for arm in cfg.arms:
        if arm == "bm25":
            ranking = bm25_run(data, qids)
        else:
            folder = None if arm == "base" else run / arm / "model"
            if folder is not None and not (folder / "modules.json").is_file():
                raise ValueError(f"arm {arm!r} has no trained model in {folder}; run train first")
            model = load_encoder(folder if folder else cfg.model.path, cfg.model.max_seq_length)
            vectors = corpus_vectors(
                model, data, cfg, run / ("base" if arm == "base" else arm) / "corpus.npz", progress
            )
            ranking = retrieve(model, data, qids, vectors, cfg, progress)
        write_text(run / f"{arm}.trec", metrics.trec_run(ranking, arm))
        summary[arm] = metrics.ir_scores(ranking, qrels)
        if progress:
            print(
                f"{arm}: " + ", ".join(f"{k} {v:.4f}" for k, v in summary[arm].items()), flush=True
            )
    write_json(run / "metrics.json", summary)
    diagnostics = mining_diagnostics(cfg, data, run, progress)
    search_report.search_report(run, cfg, summary, diagnostics)
    return summary


def mining_diagnostics(
    cfg: SearchConfig, data: Retrieval, run: Path, progress: bool
) -> dict[str, Any]:
    """Mine the training queries with the zero-shot encoder, unfiltered and filtered: how many
    unfiltered negatives the qrels judge relevant, what each filter removes, and the score
    distributions of positives, kept negatives and removed candidates."""
    qrels = data.split(cfg.data.train_split)
    base = load_encoder(cfg.model.path, cfg.model.max_seq_length)
    vectors = corpus_vectors(base, data, cfg, run / "base" / "corpus.npz", progress)
    qids = sorted(qrels)
    q = encode_sharded(base, [data.queries[i] for i in qids], cfg, progress)
    index = Index.build(vectors, data.corpus.ids, cfg.index)
    naive, miner = mining_config(cfg, "mined_unfiltered"), mining_config(cfg, "mined_filtered")
    assert naive is not None and miner is not None
    unfiltered = mine_negatives(qids, q, data.corpus.ids, vectors, qrels, naive, index)
    filtered = mine_negatives(qids, q, data.corpus.ids, vectors, qrels, miner, index)
    kept_scores = [s for v in filtered.scores.values() for s in v]
    kept_pairs = {(qid, d) for qid, ds in filtered.negatives.items() for d in ds}
    removed_scores = [
        s
        for qid, ds in unfiltered.negatives.items()
        for d, s in zip(ds, unfiltered.scores[qid], strict=True)
        if (qid, d) not in kept_pairs
    ]
    multi = [qid for qid, docs in qrels.items() if sum(v > 0 for v in docs.values()) > 1]
    multi_kept = sum(len(unfiltered.negatives.get(qid, [])) for qid in multi)
    return {
        "multi_queries": len(multi),
        "multi_kept": multi_kept,
        "unfiltered_relevant_share": unfiltered.relevant_kept / max(1, unfiltered.kept),
        "unfiltered_kept": unfiltered.kept,
        "unfiltered_relevant": unfiltered.relevant_kept,
        "filtered": {
            "candidates": filtered.candidates,
            "removed": filtered.removed,
            "kept": filtered.kept,
            "config": asdict(miner),
        },
        "positive_scores": list(filtered.positive_score.values()),
        "kept_scores": kept_scores,
        "removed_scores": removed_scores,
    }
