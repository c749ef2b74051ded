"""Retrieval metrics with trec_eval semantics (pytrec_eval), and TREC run files."""

from __future__ import annotations

import numpy as np

IR_METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@100", "map")


def ir_scores(
    run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]
) -> dict[str, float]:
    """nDCG@10, MRR@10, Recall@10, Recall@100 and MAP with trec_eval semantics (pytrec_eval),
    averaged over the judged queries; a judged query missing from ``run`` scores 0.

    Args:
        run: query id -> document id -> score (higher is better).
        qrels: query id -> document id -> relevance grade.
    """
    import pytrec_eval

    judged = {q: docs for q, docs in qrels.items() if any(v > 0 for v in docs.values())}
    if not judged:
        raise ValueError("no judged query has a relevant document")
    full = {q: {d: float(s) for d, s in run.get(q, {}).items()} for q in judged}
    top10 = {q: dict(sorted(docs.items(), key=lambda kv: -kv[1])[:10]) for q, docs in full.items()}
    measures = {"ndcg_cut.10", "recall.10", "recall.100", "map"}
    per_query = pytrec_eval.RelevanceEvaluator(judged, measures).evaluate(full)
    rr = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(top10)
    names = {
        "ndcg@10": "ndcg_cut_10",
        "recall@10": "recall_10",
        "recall@100": "recall_100",
        "map": "map",
    }
    out = {
        name: float(np.mean([per_query.get(q, {}).get(key, 0.0) for q in judged]))
        for name, key in names.items()
    }
    out["mrr@10"] = float(np.mean([rr.get(q, {}).get("recip_rank", 0.0) for q in judged]))
    return {k: out[k] for k in IR_METRICS}


def trec_run(run: dict[str, dict[str, float]], tag: str) -> str:
    """A TREC run file: ``qid Q0 docid rank score tag`` lines, best first."""
    lines = []
    for q, docs in run.items():
        ranked = sorted(docs.items(), key=lambda kv: -kv[1])
        lines += [f"{q} Q0 {d} {i} {s:.6f} {tag}" for i, (d, s) in enumerate(ranked, 1)]
    return "\n".join(lines) + "\n"
