"""Corpus-level hard-negative mining, encoding excluded: tripletkit's miner beside
sentence-transformers' ``mine_hard_negatives`` on the wiki training queries (same embeddings,
same settings), and beside a bare exact top-k search on a 1M-vector synthetic corpus.

Each cell runs in a fresh process; times are wall-clock, memory the peak extra resident set.
Usage: python benchmarks/bench_mining.py --out benchmarks/mining_cpu.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tripletkit._io import write_text

CACHE = Path("runs/bench-mining")
SETTINGS = {"num_negatives": 1, "range_max": 50, "relative_margin": 0.05}
SYNTHETIC = {"docs": 1_000_000, "queries": 1_000, "dim": 384}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def wiki_embeddings() -> Path:
    """Encode the wiki corpus and training queries once with the zero-shot encoder (64 tokens)."""
    path = CACHE / "wiki.npz"
    if path.is_file():
        return path
    from tripletkit.cli.settings import load_config
    from tripletkit.search.data import load_data
    from tripletkit.search.encoder import encode, load_encoder

    cfg = load_config("configs/wiki.yaml", [f"data.cache={CACHE}"])
    data = load_data(cfg)
    qrels = data.split("train")
    qids = sorted(qrels)
    model = load_encoder(None, cfg.model.max_seq_length)
    docs = encode(model, data.corpus.texts, 64, True)
    queries = encode(model, [data.queries[q] for q in qids], 64, True)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        docs=docs,
        queries=queries,
        qids=np.array(qids),
        doc_ids=np.array(data.corpus.ids),
        doc_texts=np.array(data.corpus.texts, dtype=object),
        query_texts=np.array([data.queries[q] for q in qids], dtype=object),
        qrels=json.dumps(qrels),
    )
    return path


def _precomputed(texts: list[str], vectors: np.ndarray) -> object:
    """The real zero-shot SentenceTransformer with its encoders replaced by a lookup of the
    vectors computed beforehand, so the miner is timed without encoding."""
    import torch

    from tripletkit.search.encoder import load_encoder

    model = load_encoder(None, 64)
    table = {t: v for t, v in zip(texts, vectors, strict=True)}

    def lookup(sentences: list[str], **kwargs: object) -> object:
        out = np.stack([table[s] for s in sentences]).astype(np.float32)
        return torch.from_numpy(out) if kwargs.get("convert_to_tensor") else out

    model.encode = model.encode_query = model.encode_document = lookup
    return model


def _import_libraries(method: str) -> None:
    """Load the libraries before the memory baseline: their code is not the mining's cost."""
    import faiss  # noqa: F401
    import torch  # noqa: F401

    import tripletkit.search.negatives  # noqa: F401

    if method.startswith("st"):
        import datasets  # noqa: F401
        import sentence_transformers.util  # noqa: F401


def run_one(method: str) -> dict[str, float]:
    """One cell, timed in this process."""
    if method.startswith("synthetic"):
        return _synthetic(method)
    loaded = np.load(wiki_embeddings(), allow_pickle=True)
    saved = {k: loaded[k] for k in loaded.files}
    qrels = json.loads(str(saved["qrels"]))
    qids = saved["qids"].tolist()
    _import_libraries(method)
    if method.startswith("st"):
        texts, qtexts = saved["doc_texts"].tolist(), saved["query_texts"].tolist()
        model = _precomputed(texts + qtexts, np.concatenate([saved["docs"], saved["queries"]]))
    before = _rss_mb()
    start = time.perf_counter()
    if method == "tripletkit":
        from tripletkit.search.negatives import MiningConfig, mine_negatives

        config = MiningConfig(
            n=SETTINGS["num_negatives"],
            r_max=SETTINGS["range_max"],
            relative_margin=SETTINGS["relative_margin"],
        )
        mined = mine_negatives(
            qids, saved["queries"], saved["doc_ids"].tolist(), saved["docs"], qrels, config
        )
        count = mined.kept
    else:
        from datasets import Dataset
        from sentence_transformers.util import mine_hard_negatives

        position = {d: i for i, d in enumerate(saved["doc_ids"].tolist())}
        anchors, positives = [], []
        for q, text in zip(qids, qtexts, strict=True):
            for d in qrels[q]:
                anchors.append(text)
                positives.append(texts[position[d]])
        dataset = Dataset.from_dict({"query": anchors, "positive": positives})
        out = mine_hard_negatives(
            dataset,
            model,
            corpus=texts,
            range_max=SETTINGS["range_max"],
            relative_margin=SETTINGS["relative_margin"],
            num_negatives=SETTINGS["num_negatives"],
            use_faiss=method.endswith("faiss"),
            verbose=False,
        )
        count = len(out)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mb": max(0.0, peak - before), "negatives": count}


def _synthetic(method: str) -> dict[str, float]:
    rng = np.random.default_rng(0)
    n, q, d = SYNTHETIC["docs"], SYNTHETIC["queries"], SYNTHETIC["dim"]
    docs = rng.standard_normal((n, d), dtype=np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    queries = docs[rng.choice(n, q, replace=False)] + 0.5 * rng.standard_normal(
        (q, d), dtype=np.float32
    )
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = [f"d{i}" for i in range(n)]
    qids = [f"q{i}" for i in range(q)]
    qrels = {qid: {ids[int(j)]: 1 for j in rng.choice(n, 2, replace=False)} for qid in qids}
    _import_libraries(method)
    before = _rss_mb()
    start = time.perf_counter()
    if method == "synthetic-tripletkit":
        from tripletkit.search.negatives import MiningConfig, mine_negatives

        mined = mine_negatives(
            qids, queries, ids, docs, qrels, MiningConfig(n=1, r_max=50, relative_margin=0.05)
        )
        count = mined.kept
    else:  # a bare exact top-50 with torch: the floor any exact miner pays
        import torch

        top = [
            torch.topk(torch.from_numpy(queries[i : i + 256]) @ torch.from_numpy(docs).T, 50)
            for i in range(0, q, 256)
        ]
        count = sum(len(t.indices) for t in top)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mb": max(0.0, peak - before), "negatives": count}


METHODS = {
    "tripletkit": "tripletkit mine_negatives (FAISS flat, filters)",
    "st": "sentence-transformers mine_hard_negatives (torch search)",
    "st-faiss": "sentence-transformers mine_hard_negatives (use_faiss=True)",
    "synthetic-tripletkit": "tripletkit mine_negatives, 1M x 384 synthetic",
    "synthetic-exact": "bare exact top-50 (torch matmul + topk), 1M x 384 synthetic",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one)))
        return
    wiki_embeddings()
    results = {}
    for method in METHODS:
        done = subprocess.run(
            [sys.executable, __file__, "--one", method],
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        if done.returncode:
            results[method] = done.stderr.strip().splitlines()[-1][:100]
        else:
            results[method] = json.loads(done.stdout.strip().splitlines()[-1])
        print(method, results[method], flush=True)
    lines = [
        "# Hard-negative mining, encoding excluded (CPU)",
        "",
        f"Regenerate: `python benchmarks/bench_mining.py --out benchmarks/mining_cpu.md` "
        f"({datetime.date.today()}, {os.cpu_count()} cores). Each row is a fresh process.",
        "",
        f"Wiki: the {len(json.loads(str(np.load(wiki_embeddings(), allow_pickle=True)['qrels'])))}"
        " training queries against the 10,033 documents, embeddings of the zero-shot encoder "
        f"(64 tokens) computed beforehand; settings {SETTINGS}. Synthetic: "
        f"{SYNTHETIC['queries']} queries against {SYNTHETIC['docs']:,} random unit vectors of "
        f"dimension {SYNTHETIC['dim']}.",
        "",
        "| method | time | peak extra memory | ratio to tripletkit (time) |",
        "|---|---|---|---|",
    ]
    for method, label in METHODS.items():
        cell = results[method]
        base = results["synthetic-tripletkit" if method.startswith("synthetic") else "tripletkit"]
        if isinstance(cell, dict):
            ratio = f"{cell['seconds'] / base['seconds']:.2f}x" if isinstance(base, dict) else "-"
            lines.append(
                f"| {label} | {cell['seconds']:.2f} s | {cell['peak_mb']:.0f} MB | {ratio} |"
            )
        else:
            lines.append(f"| {label} | failed: {cell} | | |")
    text = "\n".join(lines) + "\n"
    if args.out:
        write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
