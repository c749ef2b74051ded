"""Evaluation of a search run: every arm at every seed on the evaluation split, twice.

1. ``metrics.json``: arm -> metric -> {"mean", "std", "values"} (one value per seed, in the
   order of ``seeds``; std 0 for a deterministic arm), from the rankings of the whole corpus;
   the run files are ``<arm>.trec`` (deterministic arms) and ``<arm>.seed<s>.trec``.
2. ``metrics_untouched.json``, the same table on the documents no training query touched:
   every document judged relevant to a training query is removed from the corpus before the
   search (and from the evaluation qrels; a query left without a relevant document is not
   scored). Fine-tuning can pull a training positive towards its training query, which
   neither BM25 nor the zero-shot encoder can; this table shows how much of the gain holds
   without those documents.

``significance.json`` holds the paired tests (:func:`tripletkit.search.stats.paired_test`, on
nDCG@10, each arm's per-query score averaged over its seeds) of the comparisons in
:data:`COMPARISONS` and of every encoder arm against the strongest BM25 row of the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._io import write_json, write_text
from ..config import read_config
from . import metrics, report
from .arms import (
    BM25_ARMS,
    TRAINED,
    arm_folder,
    check_config,
    known_positives,
    mining_config,
    seeds_of,
)
from .bm25 import bm25_run
from .config import SearchConfig
from .corpus_mining import ZeroShotMiner
from .data import Retrieval, load_data
from .encoder import load_encoder
from .encodings import corpus_vectors
from .retrieval import retrieve_without
from .stats import drop_judgments, paired_test, per_query_scores, seed_summary, training_positives

COMPARISONS = (
    ("mined_filtered", "mined_unfiltered"),
    ("mined_filtered", "mined_naive"),
    ("mined_unfiltered", "mined_naive"),
    ("mined_filtered", "in_batch"),
    ("mined_qrels_only", "mined_unfiltered"),
    ("mined_margin_only", "mined_unfiltered"),
)
TABLES = ("all", "untouched")
TEST_METRIC = "ndcg@10"
Scores = dict[str, dict[str, list[dict[str, dict[str, float]]]]]  # table -> arm -> per seed


def run_config(run: Path) -> SearchConfig:
    """The config a run was trained with.

    Raises:
        ValueError: the folder has no config.yaml, or it is not a valid search config.
    """
    cfg = read_config(SearchConfig, run / "config.yaml")
    check_config(cfg)
    return cfg


def run_tag(cfg: SearchConfig, arm: str, seed: int) -> str:
    """The name of an arm's run file at one seed: the arm, plus ``.seed<s>`` if trained."""
    return f"{arm}.seed{seed}" if arm in TRAINED else arm


def evaluate(run_dir: str | Path, *, progress: bool = True) -> dict[str, dict[str, float]]:
    """Score every arm and seed; write the run files, both tables, the paired tests, the
    mining diagnostics and report.md (module docstring).

    Returns:
        arm -> metric -> mean over the arm's seeds (the whole-corpus table).

    Raises:
        ValueError: not a run folder, or a trained arm without its model.
    """
    run = Path(run_dir)
    cfg = run_config(run)
    data = load_data(cfg)
    qrels = data.split(cfg.data.eval_split)
    qids = sorted(qrels)
    removed = training_positives(data.split(cfg.data.train_split))
    untouched = drop_judgments(qrels, removed)
    write_qrels(run / f"qrels.{cfg.data.eval_split}.tsv", qrels)
    write_qrels(run / f"qrels.{cfg.data.eval_split}.untouched.tsv", untouched)
    scores: Scores = {t: {} for t in TABLES}
    for arm in cfg.arms:
        for seed in seeds_of(cfg, arm):
            full, rest = arm_rankings(cfg, data, run, arm, seed, qids, removed, progress)
            tag = run_tag(cfg, arm, seed)
            write_text(run / f"{tag}.trec", metrics.trec_run(full, tag))
            write_text(run / f"{tag}.untouched.trec", metrics.trec_run(rest, tag))
            scores["all"].setdefault(arm, []).append(per_query_scores(full, qrels))
            scores["untouched"].setdefault(arm, []).append(per_query_scores(rest, untouched))
        if progress:
            means = {m: v["mean"] for m, v in summarise(scores["all"])[arm].items()}
            print(f"{arm}: " + ", ".join(f"{k} {v:.4f}" for k, v in means.items()), flush=True)
    tables = {t: summarise(scores[t]) for t in TABLES}
    write_json(run / "metrics.json", tables["all"])
    write_json(run / "metrics_untouched.json", tables["untouched"])
    tests = {t: significance(scores[t], tables[t]) for t in TABLES}
    write_json(run / "significance.json", tests)
    diagnostics = mining_diagnostics(cfg, data, run, progress)
    counts = ("queries", "multi_queries", "miners")
    write_json(run / "mining_diagnostics.json", {k: diagnostics[k] for k in counts})
    report.search_report(run, cfg, tables, tests, diagnostics)
    return {
        arm: {m: float(v["mean"]) for m, v in row.items()} for arm, row in tables["all"].items()
    }


def write_qrels(path: Path, qrels: dict[str, dict[str, int]]) -> None:
    """Qrels as a BEIR TSV (with its header line), queries in sorted order."""
    rows = "".join(f"{q}\t{d}\t{g}\n" for q in sorted(qrels) for d, g in qrels[q].items())
    write_text(path, "query-id\tcorpus-id\tscore\n" + rows)


def arm_rankings(
    cfg: SearchConfig,
    data: Retrieval,
    run: Path,
    arm: str,
    seed: int,
    qids: list[str],
    removed: set[str],
    progress: bool,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """An arm's top-100 per query over the whole corpus and over the corpus without
    ``removed``.

    Raises:
        ValueError: a trained arm whose model folder is missing.
    """
    if arm in BM25_ARMS:
        return bm25_run(data, qids, arm), bm25_run(data, qids, arm, exclude=removed)
    folder = None if arm == "base" else arm_folder(run, cfg, arm, seed)
    if folder is not None and not (folder / "model" / "modules.json").is_file():
        raise ValueError(
            f"arm {arm!r} (seed {seed}) has no trained model in {folder / 'model'}; run train first"
        )
    path = folder / "model" if folder is not None else cfg.model.path
    model = load_encoder(path, cfg.model.max_seq_length, cfg.model.runtime)
    cache = (folder if folder is not None else run / "base") / "corpus.npz"
    vectors = corpus_vectors(model, data, cfg, cache, progress)
    return retrieve_without(model, data, qids, vectors, cfg, progress, removed)


def summarise(
    scores: dict[str, list[dict[str, dict[str, float]]]],
) -> dict[str, dict[str, dict[str, Any]]]:
    """arm -> metric -> {"mean", "std", "values"} from each seed's per-query scores (a seed's
    value is its mean over queries)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for arm, seeds in scores.items():
        out[arm] = {
            m: seed_summary([float(np.mean(list(s[m].values()))) for s in seeds]) for m in seeds[0]
        }
    return out


def seed_mean(seeds: list[dict[str, dict[str, float]]], metric: str) -> dict[str, float]:
    """query id -> the metric averaged over the seeds."""
    return {q: float(np.mean([s[metric][q] for s in seeds])) for q in seeds[0][metric]}


def significance(
    scores: dict[str, list[dict[str, dict[str, float]]]],
    table: dict[str, dict[str, dict[str, Any]]],
) -> dict[str, Any]:
    """The paired tests of one table on nDCG@10: :data:`COMPARISONS` where both arms ran, and
    every encoder arm against the strongest BM25 row (the highest mean nDCG@10 of this
    table)."""
    bm25 = [a for a in BM25_ARMS if a in table]
    strongest = max(bm25, key=lambda a: table[a][TEST_METRIC]["mean"]) if bm25 else None
    pairs = [(a, b) for a, b in COMPARISONS if a in scores and b in scores]
    if strongest is not None:
        pairs += [(a, strongest) for a in scores if a not in BM25_ARMS]
    tests = []
    for a, b in pairs:
        sa, sb = seed_mean(scores[a], TEST_METRIC), seed_mean(scores[b], TEST_METRIC)
        queries = sorted(sa)
        result = paired_test(np.array([sa[q] for q in queries]), np.array([sb[q] for q in queries]))
        tests.append({"a": a, "b": b, **result.as_dict()})
    return {"metric": TEST_METRIC, "strongest_bm25": strongest, "tests": tests}


def mining_diagnostics(
    cfg: SearchConfig, data: Retrieval, run: Path, progress: bool
) -> dict[str, Any]:
    """What the zero-shot miner gives the training queries under each miner: the naive one
    (first listed positive removed, nothing else known), each filter alone and both: how
    many candidates each filter removes and how many kept negatives the qrels judge relevant,
    overall and on the queries with several relevant documents; and the score distributions
    of positives, kept negatives and removed candidates (filtered against naive)."""
    qrels = data.split(cfg.data.train_split)
    miner = ZeroShotMiner(data, qrels, cfg, run / "base", progress)
    multi = {q for q, docs in qrels.items() if sum(g > 0 for g in docs.values()) > 1}
    out: dict[str, Any] = {"queries": len(qrels), "multi_queries": len(multi), "miners": {}}
    mined = {}
    for arm in ("mined_naive", "mined_qrels_only", "mined_margin_only", "mined_filtered"):
        config = mining_config(cfg, arm)
        assert config is not None
        view = known_positives(qrels) if arm == "mined_naive" else None
        mined[arm] = miner.mine(config, view)
        out["miners"][arm] = miner_counts(mined[arm], qrels, multi)
    naive, filtered = mined["mined_naive"], mined["mined_filtered"]
    kept = {(q, d) for q, ds in filtered.negatives.items() for d in ds}
    out["positive_scores"] = list(filtered.positive_score.values())
    out["kept_scores"] = [s for v in filtered.scores.values() for s in v]
    out["removed_scores"] = [
        s
        for q, ds in naive.negatives.items()
        for d, s in zip(ds, naive.scores[q], strict=True)
        if (q, d) not in kept
    ]
    return out


def miner_counts(mined: Any, qrels: dict[str, dict[str, int]], multi: set[str]) -> dict[str, Any]:
    """Candidates, removals per filter, kept negatives, and kept negatives that ``qrels``
    judge relevant (overall and on the ``multi`` queries) of one mining result."""
    relevant = multi_relevant = multi_kept = 0
    for q, ds in mined.negatives.items():
        hits = sum(qrels.get(q, {}).get(d, 0) > 0 for d in ds)
        relevant += hits
        if q in multi:
            multi_relevant += hits
            multi_kept += len(ds)
    return {
        "candidates": mined.candidates,
        "removed": dict(mined.removed),
        "kept": mined.kept,
        "relevant_kept": relevant,
        "multi_kept": multi_kept,
        "multi_relevant_kept": multi_relevant,
    }
