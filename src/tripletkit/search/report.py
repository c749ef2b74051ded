"""The Markdown report and figures of a search run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .._io import legend, save_figure, write_text

SEARCH_METRICS = [
    ("ndcg@10", "nDCG@10"),
    ("mrr@10", "MRR@10"),
    ("recall@10", "Recall@10"),
    ("recall@100", "Recall@100"),
    ("map", "MAP"),
]


def search_report(
    run: Path,
    cfg: Any,
    tables: dict[str, dict[str, dict[str, dict[str, Any]]]],
    tests: dict[str, dict[str, Any]],
    diagnostics: dict[str, Any],
) -> Path:
    """Figures and ``report.md`` of a search run.

    Args:
        run: the run folder.
        cfg: its SearchConfig.
        tables: "all" and "untouched" -> arm -> metric -> {"mean", "std", "values"}.
        tests: the same tables -> :func:`tripletkit.search.evaluation.significance`.
        diagnostics: :func:`tripletkit.search.evaluation.mining_diagnostics`.
    """
    figures = _figures(run, cfg, diagnostics)
    seeds = ", ".join(map(str, cfg.seeds or (cfg.train.seed,)))
    one = ", ".join(a for a in cfg.one_seed if a in tables["all"])
    one_note = f" ({one}: the first seed only)" if one else ""
    text = f"""# {cfg.name}: semantic search with the triplet loss

**Data**: {cfg.data.source}, evaluated on the {cfg.data.eval_split} split (pytrec_eval, trec_eval
semantics; the run files `<arm>.trec`, `<arm>.seed<s>.trec` and the qrels
`qrels.{cfg.data.eval_split}.tsv` are beside this report).
**Encoder**: {cfg.model.path or "all-MiniLM-L6-v2"}, {cfg.model.max_seq_length} tokens.
**Loss**: {cfg.loss.mining} mining in the batch, margin {cfg.loss.margin},
{cfg.loss.distance} distance. **Training**: batches of {cfg.train.batch_size} queries,
{cfg.train.max_steps or "all"} steps, {cfg.train.optimizer} lr {cfg.train.lr};
{cfg.negatives.n} mined negative(s) per query from ranks [{cfg.negatives.r_min},
{cfg.negatives.r_max}), relative margin {cfg.negatives.relative_margin}, re-mining every
{cfg.negatives.remine_every or "never"}. **Seeds** of each trained arm: {seeds}{one_note}; a
cell is the mean over seeds +- the sample standard deviation (0 for one value).

{_table(tables["all"])}

Arms: bm25 (bm25s, k1 1.5, b 0.75, stop words, no stemming, text only); bm25_standard (Anserini's
BEIR setting: k1 0.9, b 0.4, Porter stemming, stop words, title + text); base (zero-shot
encoder); in_batch (the batch's documents only); mined_naive (no relevance knowledge: one
positive per query, every other document of the batch a negative, mined negatives = the rank
window minus that positive); mined_unfiltered (the same miner, relevance-aware batch);
mined_qrels_only and mined_margin_only (one filter each); mined_filtered (both filters).

## Paired tests

{_tests(tests["all"])}

## Documents no training query touched

The same arms with every document judged relevant to a training query removed from the corpus
(and from the qrels; a query left without a relevant document is not scored) before the
search:

{_table(tables["untouched"])}

{_tests(tests["untouched"])}

## False negatives

{_false_negatives(diagnostics)}

## Figures
""" + "".join(f"\n![{name}]({name})\n\n{caption}\n" for name, caption in figures)
    return write_text(run / "report.md", text)


def _figures(run: Path, cfg: Any, diagnostics: dict[str, Any]) -> list[tuple[str, str]]:
    """The dev curve and the score histogram; (file name, caption) of each drawn."""
    curves = {
        arm: run / arm / "dev_curve.jsonl"
        for arm in cfg.arms
        if (run / arm / "dev_curve.jsonl").is_file()
    }
    figures = []
    if curves:
        fig = Figure(figsize=(6, 3.8))
        ax = fig.subplots(1, 1)
        for arm, path in curves.items():
            rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            ax.plot([r["step"] for r in rows], [r["ndcg@10"] for r in rows], marker="o", label=arm)
        ax.set_xlabel("training step")
        ax.set_ylabel("nDCG@10 (dev subset)")
        ax.set_title("Dev nDCG@10 during training")
        ax.grid(alpha=0.3)
        legend(ax, fontsize=8)
        save_figure(fig, run / "dev_curve.png")
        figures.append(
            (
                "dev_curve.png",
                "nDCG@10 on a fixed dev subset (200 dev queries, their "
                "relevant documents and 1,000 random others) as training goes.",
            )
        )
    fig = Figure(figsize=(6, 3.8))
    ax = fig.subplots(1, 1)
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
    legend(ax, fontsize=8)
    save_figure(fig, run / "scores.png")
    figures.append(
        (
            "scores.png",
            "Cosine similarity to the query, zero-shot encoder: each training query's "
            "lowest-scoring positive, the negatives the filtered miner keeps, and the naive "
            "miner's negatives that the filters reject (judged relevant, or above p - "
            f"{cfg.negatives.relative_margin:g} |p|, p the positive's score).",
        )
    )
    return figures


def _cell(v: dict[str, Any]) -> str:
    return f"{v['mean']:.4f} +- {v['std']:.4f}" if len(v["values"]) > 1 else f"{v['mean']:.4f}"


def _table(table: dict[str, dict[str, dict[str, Any]]]) -> str:
    """A Markdown table: arm, seeds, then each metric's mean (+- std over seeds)."""
    header = " | ".join(label for _, label in SEARCH_METRICS)
    rows = [f"| arm | seeds | {header} |", "|---|---" + "|---" * len(SEARCH_METRICS) + "|"]
    for arm, row in table.items():
        n = len(next(iter(row.values()))["values"])
        rows.append(
            f"| {arm} | {n} | " + " | ".join(_cell(row[k]) for k, _ in SEARCH_METRICS) + " |"
        )
    return "\n".join(rows)


def _tests(tests: dict[str, Any]) -> str:
    """The paired tests as a Markdown table."""
    if not tests["tests"]:
        return "(no pair of arms to compare)"
    level = int(round(100 * tests["tests"][0]["level"]))
    rows = [
        f"Paired over queries on {tests['metric']} (each arm's per-query score averaged over "
        f"its seeds): the mean difference A - B, its {level}% percentile bootstrap interval, "
        "and the two-sided p-value of a sign-flip randomisation test. Strongest BM25 row: "
        f"{tests['strongest_bm25'] or 'none run'}.",
        "",
        "| A | B | A - B | CI | p |",
        "|---|---|---|---|---|",
    ]
    for t in tests["tests"]:
        rows.append(
            f"| {t['a']} | {t['b']} | {t['diff']:+.4f} | [{t['low']:+.4f}, {t['high']:+.4f}] | "
            f"{t['p_value']:.4f} |"
        )
    return "\n".join(rows)


def _false_negatives(diagnostics: dict[str, Any]) -> str:
    """Share of the naive negatives the qrels judge relevant, beside what each miner removes."""
    miners = diagnostics["miners"]
    naive = miners["mined_naive"]
    share = naive["relevant_kept"] / max(1, naive["kept"])
    multi_share = naive["multi_relevant_kept"] / max(1, naive["multi_kept"])
    rows = [
        f"The naive miner (the zero-shot encoder's rank window minus the one positive it knows) "
        f"gives the {diagnostics['queries']} training queries {naive['kept']} negatives; the "
        f"qrels judge {naive['relevant_kept']} of them relevant ({100 * share:.1f}%), and "
        f"{naive['multi_relevant_kept']} of the {naive['multi_kept']} negatives of the "
        f"{diagnostics['multi_queries']} queries with several relevant documents "
        f"({100 * multi_share:.1f}%). Each miner on the same candidates:",
        "",
        "| miner | candidates | removed | kept | kept judged relevant | on multi-relevant "
        "queries |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in miners.items():
        removed = ", ".join(f"{k} {v}" for k, v in m["removed"].items()) or "none"
        rows.append(
            f"| {name} | {m['candidates']} | {removed} | {m['kept']} | {m['relevant_kept']} | "
            f"{m['multi_relevant_kept']} of {m['multi_kept']} |"
        )
    rows.append(
        '\n("positive" is the one known positive; "relevant" every judged-relevant '
        'document; "relative" candidates above p - m |p|. A relevant document the qrels do '
        "not list is what the score filter is for.)"
    )
    return "\n".join(rows)
