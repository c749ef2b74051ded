"""The search recipe's settings, chosen on the dev split: each setting is configs/wiki.yaml's
mined_filtered arm with one change (or a few combined), trained and scored on dev (the test
split is never read).
Writes docs/search_dev_sweep.md.

    python experiments/search_dev_sweep.py                       # the recipe's steps, full dev
    python experiments/search_dev_sweep.py --steps 60 --docs 3000  # reduced: fewer steps, and
                                                                 # the dev queries against their
                                                                 # relevant documents + 3,000
                                                                 # random others

Each finished setting is kept in ``<runs>/results.jsonl``, so a rerun continues where an
interrupted one stopped (delete the file to start over). The zero-shot encodings are shared by
every setting of one sequence length.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path
from typing import Any

from tripletkit._io import write_text
from tripletkit.cli.settings import load_config
from tripletkit.search import metrics
from tripletkit.search import training as search
from tripletkit.search.config import SearchConfig
from tripletkit.search.corpus_mining import ZeroShotMiner
from tripletkit.search.data import load_data
from tripletkit.search.encoder import load_encoder
from tripletkit.search.encodings import encode_sharded
from tripletkit.search.index import Index
from tripletkit.search.retrieval import TOP_K, dev_subset

SETTINGS = {  # the settings the first round (relative margin 0.05) left unrun go first
    "recipe (configs/wiki.yaml)": [],
    "recipe, seed 1": ["train.seed=1"],  # the spread a setting has to beat
    "128 tokens": ["model.max_seq_length=128"],
    "lr 1e-5": ["train.lr=1e-5"],
    "margin 0.1": ["loss.margin=0.1"],
    "margin 0.3": ["loss.margin=0.3"],
    "rank window [5, 50)": ["negatives.r_min=5"],
    "rank window [0, 20)": ["negatives.r_max=20"],
    "re-mining halfway": ["__remine_half"],
    "relative margin 0.05 (the first recipe)": ["negatives.relative_margin=0.05"],
    "4 mined negatives": ["negatives.n=4"],
    "2x steps": ["__steps_x2"],
    "relative margin 0.10": ["negatives.relative_margin=0.1"],
    "lr 6e-5": ["train.lr=6e-5"],
    # third round: the in-batch selection and batch, and the best settings together
    "batch-all in the batch": ["loss.mining=all"],
    "batch-hard in the batch": ["loss.mining=hard"],
    "no curriculum": ["loss.curriculum=none"],
    "growing margin 0.2 -> 0.4": ["loss.margin_end=0.4"],
    "batches of 64 queries": ["train.batch_size=64"],
    "2x steps + 4 mined negatives": ["__steps_x2", "negatives.n=4"],
    "batch-hard, seed 1": ["loss.mining=hard", "train.seed=1"],
    "2x steps + 4 mined negatives, seed 1": ["__steps_x2", "negatives.n=4", "train.seed=1"],
    "batch-hard + 2x steps + 4 mined negatives": [
        "loss.mining=hard",
        "__steps_x2",
        "negatives.n=4",
    ],
}


RECIPE_ROWS = ("recipe (configs/wiki.yaml)", "recipe, seed 1")


def dev_score(model: Any, data: Any, cfg: SearchConfig, docs: int | None) -> dict[str, float]:
    """IR metrics of ``model`` on the dev split: against the whole corpus (``docs`` None), or
    against the dev queries' relevant documents and ``docs`` random others."""
    qrels = data.split(cfg.data.dev_split)
    if docs is None:
        qids, rows = sorted(qrels), list(range(len(data.corpus)))
    else:
        qids, rows = dev_subset(data, cfg, queries=len(qrels), extra_docs=docs)
    ids = [data.corpus.ids[i] for i in rows]
    d = encode_sharded(model, [data.corpus.texts[i] for i in rows], cfg, False)
    q = encode_sharded(model, [data.queries[i] for i in qids], cfg, False)
    hits = Index.build(d, ids).search_ids(q, TOP_K)
    run = {qid: dict(h) for qid, h in zip(qids, hits, strict=True)}
    return metrics.ir_scores(run, {q: qrels[q] for q in qids})


def settings_config(base: str, overrides: list[str], steps: int | None) -> SearchConfig:
    """configs/wiki.yaml with the setting's overrides (and the sweep's step count)."""
    sets = [o for o in overrides if not o.startswith("__")]
    cfg = load_config(base, sets, task="search")
    total = (steps or cfg.train.max_steps) * (2 if "__steps_x2" in overrides else 1)
    if "__remine_half" in overrides:  # mine again with the model being trained, once, halfway
        sets.append(f"negatives.remine_every={total // 2}")
    return load_config(base, [*sets, f"train.max_steps={total}", "eval_every=0"], task="search")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/wiki.yaml")
    parser.add_argument("--runs", default="runs/search-dev-sweep", help="where the runs go")
    parser.add_argument("--out", default="docs/search_dev_sweep.md", help="the Markdown table")
    parser.add_argument("--steps", type=int, help="training steps (default: the config's)")
    parser.add_argument("--docs", type=int, help="score against a dev subset with N random docs")
    parser.add_argument("--only", nargs="*", help="run only these settings (names)")
    parser.add_argument(
        "--table-only", action="store_true", help="rewrite the table from the results so far"
    )
    args = parser.parse_args()
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    done_file = runs / "results.jsonl"
    done = {}
    if done_file.is_file():
        done = {r["name"]: r for r in map(json.loads, done_file.read_text().splitlines())}
    miners: dict[int, ZeroShotMiner] = {}
    for i, (name, overrides) in enumerate(SETTINGS.items()):
        if args.table_only or name in done or (args.only and name not in args.only):
            continue
        cfg = settings_config(args.config, overrides, args.steps)
        data = load_data(cfg)
        length = cfg.model.max_seq_length
        if length not in miners:
            qrels = data.split(cfg.data.train_split)
            miners[length] = ZeroShotMiner(data, qrels, cfg, runs / f"base-{length}", True)
            zero_name = f"zero-shot, {length} tokens"
            if zero_name not in done:
                zero = dev_score(load_encoder(cfg.model.path, length), data, cfg, args.docs)
                _append(done_file, {"name": zero_name, "scores": zero, "s": 0})
        start = time.time()
        out = runs / f"setting{i}"
        search.train_arm(
            cfg, data, out, "mined_filtered", miners[length], resume=False, progress=True
        )
        scores = dev_score(load_encoder(out / "model", length), data, cfg, args.docs)
        record = {"name": name, "scores": scores, "s": time.time() - start}
        record["steps"] = cfg.train.max_steps
        _append(done_file, record)
        print(f"{name}: dev nDCG@10 {scores['ndcg@10']:.4f} ({record['s']:.0f} s)", flush=True)
    by_name = {r["name"]: r for r in map(json.loads, done_file.read_text().splitlines())}
    results = list(by_name.values())
    write_text(Path(args.out), _markdown(results, args))


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    scope = (
        "the 929 dev queries against the whole corpus"
        if args.docs is None
        else f"the dev queries against their relevant documents and {args.docs} random others "
        "(a reduced corpus: absolute numbers are higher than on the whole corpus; only the "
        "order of the settings is evidence)"
    )
    steps = f"{args.steps} steps" if args.steps else "the config's steps"
    recipe = [r["scores"]["ndcg@10"] for r in results if r["name"] in RECIPE_ROWS]
    base = sum(recipe) / len(recipe) if recipe else None

    def delta(r: dict[str, Any]) -> str:
        return "-" if base is None else f"{r['scores']['ndcg@10'] - base:+.4f}"

    rows = "\n".join(
        f"| {r['name']} | {r.get('steps', '-')} | {r['scores']['ndcg@10']:.4f} | {delta(r)} | "
        f"{r['scores']['recall@10']:.4f} | {r['s']:.0f} |"
        for r in results
    )
    missing = [n for n in SETTINGS if n not in {r["name"] for r in results}]
    todo = (
        "\n**Not run yet** (the sweep was stopped; rerun the script to continue): "
        + "; ".join(missing)
        + ".\n"
        if missing
        else ""
    )
    return f"""# Search recipe: the dev sweep

Written by `python experiments/search_dev_sweep.py` on {datetime.date.today()} ({steps}; scored
on {scope}). Each row is the mined_filtered arm of configs/wiki.yaml with one setting changed
(the last rows: settings combined), seed 0 unless the name says otherwise (the recipe, and
settings that led, also at seed 1); the test split is not read. "vs recipe": the difference
from the mean of the recipe's two seeds. A setting enters configs/wiki.yaml only if it beats
the recipe by more than the recipe's two seeds differ, at both of its own seeds, and fits the
time budgets (make search-ablation 2 hours, make search-demo 25 minutes on 2 cores).
Seconds are wall time, on whatever else the machine was running.

| setting | steps | dev nDCG@10 | vs recipe | dev Recall@10 | seconds |
|---|---|---|---|---|---|
{rows}
{todo}"""


if __name__ == "__main__":
    main()
