"""FAISS index kinds side by side on clustered synthetic unit vectors: build time, memory,
recall@10 against exact search, single-query latency and batch throughput, for flat, HNSW,
IVF-PQ with a flat or an HNSW coarse quantizer, and the IVF-PQ with its lists on disk.

Each index is built and searched in a fresh process, so memory peaks do not mix.
Usage: python benchmarks/bench_index.py --n 1000000 --d 384 --out benchmarks/index_cpu.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tripletkit._io import write_text
from tripletkit.search.index import Index, default_nlist, training_sample

KINDS = {
    "flat": "flat (exact)",
    "hnsw": "HNSW",
    "ivfpq": "IVF-PQ, flat quantizer",
    "ivfpq-hnsw": "IVF-PQ, HNSW quantizer",
    "ivfpq-disk": "IVF-PQ, HNSW quantizer, lists on disk",
}
HNSW_M, EF_SEARCH, K = 32, 128, 10


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_data(folder: Path, args: argparse.Namespace) -> None:
    """``docs.npy`` (n, d), ``queries.npy`` and the exact top-10 ``truth.npy``.

    Vectors are a Gaussian mixture: a centre drawn uniformly from ``args.centres`` random unit
    centres plus noise of expected norm ``args.noise`` whose variance decays as 1/k over the
    k-th axis of a random rotation (a low intrinsic dimension, as real embeddings have), then
    normalised. Queries are drawn the same way.
    """
    import faiss

    n, d = args.n, args.d
    rng = np.random.default_rng(args.seed)
    centres = unit(rng.standard_normal((args.centres, d)))
    rotation = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
    scale = np.arange(1, d + 1) ** -0.5
    scale = (scale * args.noise / np.linalg.norm(scale)).astype(np.float32)

    def draw(m: int) -> np.ndarray:
        noise = (rng.standard_normal((m, d), dtype=np.float32) * scale) @ rotation
        return unit(centres[rng.integers(0, len(centres), m)] + noise)

    docs = np.lib.format.open_memmap(folder / "docs.npy", "w+", np.float32, (n, d))
    for start in range(0, n, args.chunk):
        docs[start : start + args.chunk] = draw(min(args.chunk, n - start))
    docs.flush()
    queries = draw(args.queries)
    np.save(folder / "queries.npy", queries)
    _, truth = faiss.knn(queries, docs, K, metric=faiss.METRIC_INNER_PRODUCT)
    np.save(folder / "truth.npy", truth)


class PeakMemory:
    """Peak resident memory of this process above its level at the start, sampled every 2 ms
    from /proc/self/status: all of it (VmRSS) and the anonymous part (RssAnon), which leaves
    out file pages mapped in (memory-mapped vectors and lists) that the kernel can drop.
    ``mark()`` starts a second phase whose anonymous peak is kept apart."""

    def __init__(self) -> None:
        self.start = self._read()
        self.peak = dict(self.start)
        self.phase_start: dict[str, int] | None = None
        self.marked_at = 0.0
        self.phase_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _read() -> dict[str, int]:
        fields = {}
        with open("/proc/self/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "RssAnon"):
                    fields[name] = int(value.split()[0]) * 1024
        return fields

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            now = self._read()
            self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}
            if self.phase_start is not None:
                self.phase_peak = max(self.phase_peak, now["RssAnon"])

    def mark(self) -> None:
        self.marked_at = time.perf_counter()
        self.phase_start = self._read()
        self.phase_peak = self.phase_start["RssAnon"]

    def stop(self) -> dict[str, float]:
        """Growth in MB: "rss_mb", "anon_mb" and, after mark(), "phase_anon_mb"."""
        self._stop.set()
        self._thread.join()
        mb = {k: (self.peak[k] - self.start[k]) / 2**20 for k in ("VmRSS", "RssAnon")}
        out = {"rss_mb": mb["VmRSS"], "anon_mb": mb["RssAnon"]}
        if self.phase_start is not None:
            out["phase_anon_mb"] = (self.phase_peak - self.phase_start["RssAnon"]) / 2**20
        return out


def chunks(docs: np.ndarray, size: int, memory: PeakMemory) -> Iterator[np.ndarray]:
    """Consecutive row blocks of the memory-mapped ``docs``; the first one marks the end of
    the training (the builder asks for it only then)."""
    memory.mark()
    for start in range(0, len(docs), size):
        log(f"  adding rows {start:,}..")
        yield docs[start : start + size]


def build(kind: str, folder: Path, args: argparse.Namespace) -> tuple[Index, float, dict]:
    """Build one index, timed and with its memory peaks."""
    mapped = np.load(folder / "docs.npy", mmap_mode="r")
    ids = [str(i) for i in range(len(mapped))]
    nlist = args.nlist or default_nlist(len(mapped))
    options = {"nlist": nlist, "pq_m": args.pq_m, "nprobe": args.nprobe, "hnsw_m": HNSW_M}
    options |= {"ef_search": EF_SEARCH, "quantizer": "flat" if kind == "ivfpq" else "hnsw"}
    # the in-memory kinds get the vectors in memory before the baseline: they are the caller's
    docs = mapped if kind == "ivfpq-disk" else np.load(folder / "docs.npy")
    memory = PeakMemory()
    start = time.perf_counter()
    if kind == "ivfpq-disk":
        index = Index.build_on_disk(
            chunks(mapped, args.chunk, memory),
            ids,
            folder / "disk-index",
            trained_on=training_sample(mapped, nlist, args.seed),
            **options,
        )
    else:
        index = Index.build(docs, ids, kind.split("-")[0], seed=args.seed, **options)
    seconds = time.perf_counter() - start
    peaks = memory.stop()
    if kind == "ivfpq-disk":
        peaks["train_s"] = memory.marked_at - start
    return index, seconds, peaks


def faiss_bytes(index: Index, kind: str, folder: Path) -> int:
    """Bytes of the serialised FAISS index (with the lists file on disk; ids left out)."""
    import faiss

    if kind == "ivfpq-disk":
        return sum(
            (folder / "disk-index" / f).stat().st_size for f in ("index.faiss", "lists.ivfdata")
        )
    return int(faiss.serialize_index(index.faiss_index).nbytes)


def latency(index: Index, queries: np.ndarray) -> tuple[float, float]:
    """p50 and p99 in ms of the top-10 search of each query alone, on one thread."""
    import faiss

    faiss.omp_set_num_threads(1)
    times = []
    for q in queries:
        start = time.perf_counter()
        index.search(q[None], K)
        times.append(time.perf_counter() - start)
    p50, p99 = np.percentile(times, [50, 99]) * 1000
    return float(p50), float(p99)


def run_one(kind: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Build, measure and search one kind, in this process."""
    import faiss

    faiss.omp_set_num_threads(args.threads)
    log(f"[{kind}] building on {args.threads} thread(s)")
    index, seconds, memory = build(kind, folder, args)
    log(f"[{kind}] built in {seconds:.1f} s; searching")
    queries, truth = np.load(folder / "queries.npy"), np.load(folder / "truth.npy")
    index.search(queries[:10], K)  # warm-up
    start = time.perf_counter()
    _, rows = index.search(queries, K)
    qps = len(queries) / (time.perf_counter() - start)
    recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(rows, truth, strict=True)])
    p50, p99 = latency(index, queries)
    out: dict[str, Any] = {
        "build_s": seconds,
        "bytes": faiss_bytes(index, kind, folder),
        "recall": recall,
    }
    out |= {"p50_ms": p50, "p99_ms": p99, "qps": qps} | memory
    out["params"] = index.params
    if kind == "ivfpq-disk":  # FAISS reads the probed lists ahead on 32 threads by default
        lists: Any = faiss.downcast_InvertedLists(index.faiss_index.invlists)
        lists.prefetch_nthread = 0
        out["p50_ms_no_prefetch"], out["p99_ms_no_prefetch"] = latency(index, queries)
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return platform.machine()


def table(results: dict[str, dict | str], args: argparse.Namespace, params: dict) -> str:
    import faiss

    lines = [
        f"# FAISS indexes on {args.n:,} clustered synthetic {args.d}-d vectors (CPU)",
        "",
        f"Regenerate: `python benchmarks/bench_index.py --n {args.n} --d {args.d} --out "
        f"{args.out}` ({datetime.date.today()}, {os.cpu_count()} cores, {cpu_model()}, "
        f"faiss {faiss.__version__}). Each row is a fresh process.",
        "",
        f"Data: a Gaussian mixture of {args.centres} random unit centres, noise of norm "
        f"{args.noise} with a 1/k variance spectrum in a random basis, normalised; "
        f"{args.queries} queries drawn the same way (seed {args.seed}). Uniform random "
        f"{args.d}-d vectors would make every approximate index look bad (all neighbours "
        "nearly equidistant) and no real corpus looks like that.",
        "",
        f"Parameters: HNSW M={HNSW_M}, efConstruction={2 * EF_SEARCH}, efSearch={EF_SEARCH}; "
        f"IVF-PQ {json.dumps(params)} (the HNSW quantizer: M={HNSW_M}, efSearch={EF_SEARCH}); "
        f"the on-disk build adds chunks of {args.chunk:,} rows read from a memory-mapped .npy "
        "and trains on the same sample as the in-memory one.",
        "",
        f"Build and batch search run on {args.threads} thread(s); latency is one query at a time "
        "with faiss.omp_set_num_threads(1), warm page cache. Recall@10 is against exact "
        "search. Bytes: the serialised FAISS index (for the on-disk one, index.faiss plus "
        "lists.ivfdata), ids left out. Memory: peak growth of the resident set during the "
        "build (training included), all of it and the anonymous part (without mapped file "
        "pages, which the kernel can drop), sampled every 2 ms.",
        "",
        "| index | build | FAISS bytes | peak RSS growth | peak anon growth | recall@10 "
        "| p50 | p99 | batch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, cell in results.items():
        if isinstance(cell, str):
            lines.append(f"| {KINDS[kind]} | failed: {cell} | | | | | | | |")
            continue
        lines.append(
            f"| {KINDS[kind]} | {cell['build_s']:.1f} s | {cell['bytes'] / 1e6:,.1f} MB "
            f"| {cell['rss_mb']:,.0f} MB | {cell['anon_mb']:,.0f} MB | {cell['recall']:.3f} "
            f"| {cell['p50_ms']:.2f} ms | {cell['p99_ms']:.2f} ms | {cell['qps']:,.0f} q/s |"
        )
    disk = results.get("ivfpq-disk")
    if isinstance(disk, dict):
        lines += [
            "",
            f"On disk: training took {disk['train_s']:.1f} s of the build, adding the chunks "
            f"{disk['build_s'] - disk['train_s']:.1f} s (compaction and load included). While "
            f"the chunks were added the anonymous memory grew by "
            f"{disk['phase_anon_mb']:,.0f} MB above its level after training (the training "
            "sample and quantizer are in the peak above). Its latency includes FAISS's "
            "read-ahead of the probed lists on 32 threads, which pays off when the lists are "
            "not in the page cache; without it (prefetch_nthread = 0) p50 / p99 were "
            f"{disk['p50_ms_no_prefetch']:.2f} / {disk['p99_ms_no_prefetch']:.2f} ms here.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--centres", type=int, default=4096)
    parser.add_argument("--noise", type=float, default=0.6)
    parser.add_argument("--nlist", type=int, help="IVF lists (default about 4 sqrt(n))")
    parser.add_argument("--pq-m", type=int, default=48)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = run_one(args.one, args.data, args)
        (args.data / f"{args.one}.json").write_text(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        folder = Path(tmp)
        log(f"data: {args.n:,} x {args.d} in {folder}")
        make_data(folder, args)
        results: dict[str, dict | str] = {}
        for kind in args.kinds.split(","):
            argv = [sys.executable, __file__, *sys.argv[1:], "--one", kind, "--data", tmp]
            done = subprocess.run(argv)
            path = folder / f"{kind}.json"
            results[kind] = (
                json.loads(path.read_text()) if path.is_file() else f"rc {done.returncode}"
            )
            log(f"[{kind}] {results[kind]}")
    ivf = [r["params"] for r in results.values() if isinstance(r, dict) and "nlist" in r["params"]]
    params = {
        k: v for k, v in (ivf or [{}])[0].items() if k in ("nlist", "pq_m", "pq_bits", "nprobe")
    }
    text = table(results, args, params)
    if args.out:
        write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
