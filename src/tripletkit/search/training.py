"""Fine-tuning a sentence encoder for semantic search with the triplet loss: the batches
(queries, one relevant document each, their mined negatives; relevance judged over the whole
batch, so a document relevant to several queries is a negative of none), and the training of
every configured arm at every seed.

A run folder holds ``config.yaml``; ``base/`` (the zero-shot encoder's corpus and training-query
embeddings, shared by its evaluation and by the miner); one folder per fine-tuned arm and seed
(``mined_filtered/``, ``mined_filtered-seed1/`` ...; :mod:`tripletkit.search.arms`) with
``model/`` (sentence-transformers format), the training log, mined negatives and the dev curve;
and after :func:`tripletkit.search.evaluation.evaluate` ``metrics.json``, ``report.md``, TREC
run files and the qrels they were scored against. A resumed run keeps the models it has, so
it refuses a config whose settings would train other ones (:func:`check_resume`).

Where things live: the data (:mod:`~tripletkit.search.data`), the arms and what each knows
(:mod:`~tripletkit.search.arms`), mining shared across arms
(:mod:`~tripletkit.search.corpus_mining`, :mod:`~tripletkit.search.negatives`), corpus-encoding
caches (:mod:`~tripletkit.search.encodings`), retrieval (:mod:`~tripletkit.search.retrieval`),
evaluation and the tables (:mod:`~tripletkit.search.evaluation`,
:mod:`~tripletkit.search.stats`), BM25 (:mod:`~tripletkit.search.bm25`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import distributed
from ..checkpoint import RUN_ONLY_KEYS, flatten
from ..config import read_config, to_dict, write_config
from ..losses import TripletStats
from ..sampling import ShuffledBatches
from ..train import Evaluation, StepLoss, curriculum_from_config, fit, loss_from_config
from . import metrics
from .arms import (
    TRAINED,
    all_seeds,
    arm_folder,
    check_config,
    mining_config,
    seeds_of,
    training_view,
)
from .config import SearchConfig
from .corpus_mining import ZeroShotMiner, remine_with, write_mined
from .data import Retrieval, load_data
from .encoder import embed, load_encoder, save_encoder
from .encodings import encode_sharded
from .index import Index
from .retrieval import TOP_K, dev_subset

# SearchConfig keys that do not change what a run's models are: the arms and seeds that run
# (each arm and seed has its own folder; the first seed's is checked apart, see
# check_resume), where the wiki data is cached, what evaluation scores and with which index,
# where and how training runs.
FREE_KEYS = (
    "name",
    "arms",
    "seeds",
    "one_seed",
    "data.cache",
    "data.eval_split",
    "index",
    *(f"train.{k}" for k in RUN_ONLY_KEYS),
)


class SearchBatches:
    """Batches of training queries, each with one of its relevant documents (drawn per step)
    and its mined negatives; the loss mines again inside the batch, where relevance comes
    from the qrels, so a document relevant to several queries is a negative for none.
    ``qrels`` is what the arm may read: the naive arm passes each query's first listed
    positive alone (:func:`~tripletkit.search.arms.training_view`), so its positive is
    always that document and every other document of the batch is its negative.

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
        loss_fn: StepLoss,
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


def train(
    cfg: SearchConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True
) -> list[Path]:
    """Fine-tune the configured arms, each at each of its seeds; return their model folders.

    The negatives of every arm are mined once with the zero-shot encoder (:class:`ZeroShotMiner`)
    and shared by its seeds; the zero-shot encodings are cached in ``<run>/base``.

    Raises:
        ValueError: an unknown arm or a repeated seed (naming the config key); with
            ``resume``, a run trained under other settings (:func:`check_resume`).
    """
    check_config(cfg)
    run = Path(run_dir)
    distributed.check_same(to_dict(cfg))
    if resume:  # rank 0 reads the run's config.yaml; every rank refuses with it
        refused = None
        if distributed.is_main():
            try:
                check_resume(run, cfg)
            except ValueError as err:
                refused = str(err)
        refused = distributed.broadcast(refused, "resume check")
        if refused is not None:
            raise ValueError(refused)
    # rank 0 loads (and for "wiki" builds) the data once, and sends it to the others
    data = distributed.broadcast(load_data(cfg) if distributed.is_main() else None, "data")
    assert data is not None
    if distributed.is_main():
        write_config(run / "config.yaml", cfg)
    miner = ZeroShotMiner(data, data.split(cfg.data.train_split), cfg, run / "base", progress)
    done = []
    for arm in (a for a in cfg.arms if a in TRAINED):
        for seed in seeds_of(cfg, arm):
            folder = arm_folder(run, cfg, arm, seed)
            trained = resume and (folder / "model" / "modules.json").is_file()
            if not distributed.broadcast(trained, "resume plan"):
                seeded = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
                train_arm(seeded, data, folder, arm, miner, resume=resume, progress=progress)
            done.append(folder / "model")
    return done


def shaping_settings(cfg: SearchConfig) -> dict[str, Any]:
    """The config as a flat dict of dotted keys, less :data:`FREE_KEYS`."""
    return {k: v for k, v in flatten(to_dict(cfg)).items() if k not in FREE_KEYS}


def check_resume(run: Path, cfg: SearchConfig) -> None:
    """Refuse to resume ``run`` under ``cfg`` when its ``config.yaml`` (written when it
    started) has other settings that shape its models: the models trained before would be
    kept, and evaluated under settings they were not trained with. A run without
    ``config.yaml`` has nothing to check.

    Raises:
        ValueError: naming each setting that differs (``key old -> new``), the first seed
            when it changed (its models are in the arms' own folders, ``mined_filtered/``), or
            an unreadable ``config.yaml``.
    """
    path = run / "config.yaml"
    if not path.is_file():
        return
    old = read_config(SearchConfig, path)
    a, b = shaping_settings(old), shaping_settings(cfg)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, "(unset)") != b.get(k, "(unset)"))
    problems = [f"{k} {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in keys]
    first, now = all_seeds(old)[0], all_seeds(cfg)[0]
    if first != now:
        problems.append(
            f"first seed {first} -> {now} (seeds: the arms' own folders hold seed {first}'s models)"
        )
    if problems:
        raise ValueError(
            f"cannot resume {run}: it was trained with other config settings: "
            + ", ".join(problems)
            + "; start a new run (another --name) or train it again without --resume"
        )


def train_arm(
    cfg: SearchConfig,
    data: Retrieval,
    out: Path,
    arm: str,
    miner: ZeroShotMiner,
    *,
    resume: bool,
    progress: bool,
) -> None:
    """Mine negatives for one arm with the zero-shot encoder (through ``miner``, shared across
    arms), fine-tune at ``cfg.train.seed``, save the model in ``out/model``. The naive arm's
    batches and miner see only each query's first listed positive
    (:func:`~tripletkit.search.arms.training_view`)."""
    qrels = training_view(arm, data.split(cfg.data.train_split))
    mining = mining_config(cfg, arm)
    negatives: dict[str, list[str]] = {}
    if mining is not None:
        mined = miner.mine(mining, None if qrels is miner.qrels else qrels)
        if distributed.is_main():
            write_mined(out / "negatives.jsonl", out / "mining.json", mined, mining)
        negatives = mined.negatives
    model = load_encoder(cfg.model.path, cfg.model.max_seq_length)
    torch.manual_seed(cfg.train.seed)  # dropout: the same arm and seed train the same anywhere
    remine = None
    if mining is not None and cfg.negatives.remine_every:
        remine = remine_with(data, qrels, cfg, mining, progress)
    source = SearchBatches(data, qrels, negatives, cfg, remine)
    evaluation = None
    if cfg.eval_every:
        evaluation = Evaluation(dev_score(data, cfg), cfg.eval_every, "dev_curve.jsonl")
    fit(
        model,
        loss_from_config(cfg.loss),
        source,
        cfg.train,
        out,
        curriculum=curriculum_from_config(cfg.loss),
        evaluation=evaluation,
        resume=resume,
        progress=progress,
        desc=arm,
        settings={
            "arm": arm,
            "seed": cfg.train.seed,
            "loss": dataclasses.asdict(cfg.loss),
            "negatives": dataclasses.asdict(cfg.negatives),
            "model": dataclasses.asdict(cfg.model),
        },
    )
    if distributed.is_main():
        save_encoder(model, out / "model")


def dev_score(data: Retrieval, cfg: SearchConfig) -> Callable[[Any], dict[str, float]]:
    """The dev curve's score: nDCG@10 of a model on a fixed dev subset (:func:`dev_subset`),
    {"ndcg@10": value} on rank 0 ({} on the others, which encode their shards)."""
    qids, docs = dev_subset(data, cfg)
    qrels = {q: data.split(cfg.data.dev_split)[q] for q in qids}
    ids = [data.corpus.ids[i] for i in docs]
    texts = [data.corpus.texts[i] for i in docs]

    def score(model: Any) -> dict[str, float]:
        d = encode_sharded(model, texts, cfg, False)
        q = encode_sharded(model, [data.queries[i] for i in qids], cfg, False)
        if not distributed.is_main():
            return {}
        hits = Index.build(d, ids).search_ids(q, TOP_K)
        run = {qid: dict(h) for qid, h in zip(qids, hits, strict=True)}
        return {"ndcg@10": metrics.ir_scores(run, qrels)["ndcg@10"]}

    return score
