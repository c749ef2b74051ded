"""The Markdown report and figures of a search run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ._io import write_text
from .report import save_figure, subplots

SEARCH_METRICS = [
    ("ndcg@10", "nDCG@10"),
    ("mrr@10", "MRR@10"),
    ("recall@10", "Recall@10"),
    ("recall@100", "Recall@100"),
    ("map", "MAP"),
]


def search_report(
    run: Path, cfg: Any, summary: dict[str, dict[str, float]], diagnostics: dict[str, Any]
) -> Path:
    """Figures and ``report.md`` of a search run."""
    curves = {
        arm: run / arm / "dev_curve.jsonl"
        for arm in cfg.arms
        if (run / arm / "dev_curve.jsonl").is_file()
    }
    figures = []
    if curves:
        fig, ax = subplots(1, 1, figsize=(6, 3.8))
        for arm, path in curves.items():
            rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            ax.plot([r["step"] for r in rows], [r["ndcg@10"] for r in rows], marker="o", label=arm)
        ax.set_xlabel("training step")
        ax.set_ylabel("nDCG@10 (dev subset)")
        ax.set_title("Dev nDCG@10 during training")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save_figure(fig, run / "dev_curve.png")
        figures.append(
            (
                "dev_curve.png",
                "nDCG@10 on a fixed dev subset (200 dev queries, their "
                "relevant documents and 1,000 random others) as training goes.",
            )
        )
    fig, ax = subplots(1, 1, figsize=(6, 3.8))
    bins = np.linspace(-0.2, 1.0, 61).tolist()
    for key, label in (
        ("positive_scores", "positives (lowest per query)"),
        ("kept_scores", "kept negatives"),
        ("removed_scores", "removed candidates"),
    ):
        if diagnostics[key]:
            ax.hist(diagnostics[key], bins=bins, alpha=0.55, density=True, label=label)
    ax.set_xlabel("cosine similarity to the query (zero-shot encoder)")
    ax.set_ylabel("density")
    ax.set_title("Mined negatives: what the filters keep and remove")
    ax.legend(fontsize=8)
    save_figure(fig, run / "scores.png")
    figures.append(
        (
            "scores.png",
            "Cosine similarity to the query, zero-shot encoder: each training query's "
            "lowest-scoring positive, the negatives the filtered miner keeps, and the naive "
            "miner's negatives that the filters reject (judged relevant, or above 95% of the "
            "positive's score).",
        )
    )
    filt = diagnostics["filtered"]
    removed = ", ".join(f"{k}: {v}" for k, v in filt["removed"].items()) or "none"
    header = " | ".join(label for _, label in SEARCH_METRICS)
    table = "\n".join(
        f"| {arm} | " + " | ".join(f"{summary[arm][k]:.4f}" for k, _ in SEARCH_METRICS) + " |"
        for arm in summary
    )
    text = f"""# {cfg.name}: semantic search with the triplet loss

**Data**: {cfg.data.source}, evaluated on the {cfg.data.eval_split} split (pytrec_eval, trec_eval
semantics; the run files `<arm>.trec` and the qrels `qrels.{cfg.data.eval_split}.tsv` are
beside this report). **Encoder**: {cfg.model.path or "all-MiniLM-L6-v2"}, {cfg.model.max_seq_length}
tokens. **Loss**: {cfg.loss.mining} mining in the batch, margin {cfg.loss.margin},
{cfg.loss.distance} distance. **Training**: batches of {cfg.train.batch_size} queries,
{cfg.train.max_steps or "all"} steps, {cfg.train.optimizer} lr {cfg.train.lr};
{cfg.negatives.n} mined negative(s) per query from ranks [{cfg.negatives.r_min},
{cfg.negatives.r_max}).

| arm | {header} |
|---{"|---" * len(SEARCH_METRICS)}|
{table}

Arms: bm25 (bm25s, k1 = 1.5, b = 0.75); base (zero-shot encoder); in_batch (fine-tuned with the
batch's documents only); mined_unfiltered (plus mined negatives from the rank window, no filter);
mined_filtered (plus mined negatives after the false-negative filters).

## False negatives

A naive miner (the zero-shot encoder's ranks {cfg.negatives.r_min} to {cfg.negatives.r_max},
minus the one positive it knows per query) gives the {len(diagnostics["positive_scores"])}
training queries {diagnostics["unfiltered_kept"]} negatives, of which
{diagnostics["unfiltered_relevant"]} ({100 * diagnostics["unfiltered_relevant_share"]:.1f}%) the
qrels judge relevant: false negatives, all among the {diagnostics["multi_queries"]} queries with
several relevant documents ({
        100
        * diagnostics["unfiltered_relevant"]
        / max(
            1, diagnostics["multi_kept"]
        ):.0f}% of their negatives). (In the batch the qrels make them positives again; a
relevant document the qrels do not list would stay a negative, which is what the score filters
are for.) The filtered miner examined {filt["candidates"]} candidates and removed {removed}; it
kept {filt["kept"]}.

## Figures
""" + "".join(f"\n![{name}]({name})\n\n{caption}\n" for name, caption in figures)
    return write_text(run / "report.md", text)
