"""Inference on the CPU side by side, in one run: the text encoder (all-MiniLM-L6-v2) through
sentence-transformers' own torch encode, ONNX Runtime fp32 and int8; dlib's face descriptor
through dlib's own C++ (``compute_face_descriptor``), the PyTorch port, ONNX Runtime fp32 and
int8. Speed, peak memory, agreement with the reference and retrieval / verification quality,
so that the cost of int8 is a number.

Text: every document of the wiki corpus at the demo's 64 tokens (documents/s over the whole
corpus, then nDCG@10 on the dev split, which chooses the default runtime, and on the test
split, with a bootstrap interval over queries of the paired difference to torch), and a
1000-document sample at 128 tokens. Faces: the 400 aligned ORL chips (faces/s), cosine to the
port and to dlib, and EER / VAL@1e-3 over all pairs of the 400.

Each measurement runs in a fresh process (so peak memories do not mix) after one warm-up
batch; exports are built into a temporary folder first and their build time reported.
Usage: python benchmarks/bench_inference.py --out benchmarks/inference_cpu.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from tripletkit._io import write_text

TEXT_RUNTIMES = {
    "torch": "sentence-transformers encode (torch fp32)",
    "onnx": "ONNX Runtime fp32",
    "onnx-int8": "ONNX Runtime int8 (dynamic)",
}
FACE_RUNTIMES = {
    "dlib": "dlib's C++ compute_face_descriptor",
    "torch": "PyTorch port (fp32)",
    "onnx": "ONNX Runtime fp32",
    "onnx-int8": "ONNX Runtime int8 (static, ORL-calibrated)",
}
TOLERANCE = 0.005  # nDCG@10 on the dev split a faster text runtime may lose
BATCH = 64


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- workers: one measurement each, in a fresh process ------------------------------------


def text_worker(runtime: str, length: int, texts_file: Path, out: Path) -> dict[str, Any]:
    from tripletkit.search.encoder import encode, load_encoder

    texts = json.loads(texts_file.read_text(encoding="utf-8"))
    began = time.perf_counter()
    model = load_encoder(None, length, runtime)
    loaded = time.perf_counter() - began
    encode(model, texts[:BATCH], BATCH, progress=False)  # warm-up
    began = time.perf_counter()
    vectors = encode(model, texts, BATCH, progress=False)
    seconds = time.perf_counter() - began
    np.save(out, vectors)
    return {"load_s": loaded, "per_s": len(texts) / seconds, "peak_mb": peak_mb()}


def face_worker(runtime: str, exports: Path, out: Path) -> dict[str, Any]:
    import torch

    from tripletkit.faces.chips import load_chips
    from tripletkit.faces.models import embed_chips
    from tripletkit.faces.pretrained import MODEL_FILE, load_dlib_resnet, package_file
    from tripletkit.faces.runtime import load_onnx

    chips = load_chips("orl", progress=False).images
    began = time.perf_counter()
    if runtime == "dlib":
        import dlib

        net = dlib.face_recognition_model_v1(str(package_file(MODEL_FILE)))
        rows = [np.ascontiguousarray(c.permute(1, 2, 0).numpy()) for c in chips]

        def run(part: slice) -> np.ndarray:
            return np.array(net.compute_face_descriptor(rows[part]), dtype=np.float32)

    else:
        port = load_dlib_resnet()
        torch.set_num_threads(len(os.sched_getaffinity(0)))
        if runtime == "torch":

            def run(part: slice) -> np.ndarray:
                return embed_chips(port, chips[part], BATCH)

        else:
            session = load_onnx(port, runtime, exports)

            def run(part: slice) -> np.ndarray:
                return session.embed(chips[part], BATCH)

    loaded = time.perf_counter() - began
    run(slice(0, 16))  # warm-up
    began = time.perf_counter()
    vectors = run(slice(0, len(chips)))
    seconds = time.perf_counter() - began
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    np.save(out, vectors)
    return {"load_s": loaded, "per_s": len(chips) / seconds, "peak_mb": peak_mb()}


def spawn(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"worker {args} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# ---- the parent: data, measurements, scores, the report -----------------------------------


def ndcg_per_query(
    docs: np.ndarray, ids: list[str], queries: np.ndarray, qids: list[str], qrels: dict
) -> np.ndarray:
    import pytrec_eval

    from tripletkit.search.index import Index

    hits = Index.build(docs, ids, "flat").search_ids(queries, 10)
    run = {q: {d: float(s) for d, s in h} for q, h in zip(qids, hits, strict=True)}
    scored = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
    return np.array([scored.get(q, {}).get("ndcg_cut_10", 0.0) for q in qids])


def bootstrap(diff: np.ndarray, seed: int = 0, n: int = 2000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (n, len(diff)))].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def bench_text(tmp: Path, sample: int) -> tuple[list[str], str]:
    from tripletkit.search.config import SearchConfig, TextDataConfig
    from tripletkit.search.data import load_data

    data = load_data(SearchConfig(data=TextDataConfig(source="wiki")))
    texts = data.corpus.texts
    splits = {s: data.split(s) for s in ("dev", "test")}
    qids = {
        s: sorted(q for q, d in r.items() if any(v > 0 for v in d.values()))
        for s, r in splits.items()
    }
    files = {"corpus": tmp / "corpus.json"}
    files["corpus"].write_text(json.dumps(texts), encoding="utf-8")
    for split, ids in qids.items():
        files[split] = tmp / f"{split}.json"
        files[split].write_text(json.dumps([data.queries[q] for q in ids]), encoding="utf-8")
    pick = np.random.default_rng(0).choice(len(texts), size=min(sample, len(texts)), replace=False)
    files["sample"] = tmp / "sample.json"
    files["sample"].write_text(json.dumps([texts[i] for i in sorted(pick)]), encoding="utf-8")
    env = {"TRIPLETKIT_CACHE": str(tmp / "cache")}

    results: dict[str, dict[str, Any]] = {}
    for runtime in TEXT_RUNTIMES:
        row: dict[str, Any] = {}
        for name in ("corpus", "dev", "test"):
            log(f"text {runtime}: {name} at 64 tokens")
            got = spawn(
                ["text", runtime, "64", str(files[name]), str(tmp / f"t-{runtime}-{name}.npy")], env
            )
            row.setdefault("load_s", got["load_s"])
            if name == "corpus":
                row.update(per_s=got["per_s"], peak_mb=got["peak_mb"])
        log(f"text {runtime}: {sample} documents at 128 tokens")
        got = spawn(
            ["text", runtime, "128", str(files["sample"]), str(tmp / f"t-{runtime}-128.npy")], env
        )
        row["per_s_128"] = got["per_s"]
        docs = np.load(tmp / f"t-{runtime}-corpus.npy")
        row["docs"] = docs
        for split in ("dev", "test"):
            queries = np.load(tmp / f"t-{runtime}-{split}.npy")
            row[split] = ndcg_per_query(docs, data.corpus.ids, queries, qids[split], splits[split])
        results[runtime] = row

    base = results["torch"]
    lines = [
        "## Text: all-MiniLM-L6-v2 on the wiki corpus",
        "",
        f"{len(texts)} documents at 64 tokens (the demo's length); documents/s at 128 tokens on "
        f"a {len(pick)}-document sample; nDCG@10 of exact search, queries encoded by the same "
        f"runtime (dev: {len(qids['dev'])} queries, test: {len(qids['test'])}); the test "
        "difference to torch with a 95% bootstrap interval over queries.",
        "",
        "| runtime | docs/s at 64 | x torch | docs/s at 128 | x torch "
        "| cosine to torch (min / mean) "
        "| nDCG@10 dev | nDCG@10 test | test minus torch [95% CI] | peak RSS MB | first load s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for runtime, row in results.items():
        cosine = (row["docs"] * base["docs"]).sum(1)
        low, high = bootstrap(row["test"] - base["test"])
        lines.append(
            f"| {TEXT_RUNTIMES[runtime]} | {row['per_s']:.0f} | {row['per_s'] / base['per_s']:.2f} "
            f"| {row['per_s_128']:.0f} | {row['per_s_128'] / base['per_s_128']:.2f} "
            f"| {cosine.min():.4f} / {cosine.mean():.5f} | {row['dev'].mean():.4f} "
            f"| {row['test'].mean():.4f} | {(row['test'] - base['test']).mean():+.4f} "
            f"[{low:+.4f}, {high:+.4f}] | {row['peak_mb']:.0f} | {row['load_s']:.1f} |"
        )
    allowed = [
        r for r, row in results.items() if row["dev"].mean() >= base["dev"].mean() - TOLERANCE
    ]
    choice = max(allowed, key=lambda r: results[r]["per_s"])
    lines += [
        "",
        f"Default (`model.runtime`): the fastest at 64 tokens whose dev nDCG@10 is within "
        f"{TOLERANCE} of torch's: **{choice}**.",
        "",
    ]
    return lines, choice


def bench_faces(tmp: Path) -> list[str]:
    from tripletkit.faces.chips import load_chips
    from tripletkit.faces.metrics import all_pairs, distance_matrix, equal_error_rate, val_at_far

    labels = load_chips("orl", progress=True).labels.numpy()
    results: dict[str, dict[str, Any]] = {}
    for runtime in FACE_RUNTIMES:
        log(f"faces {runtime}")
        row = spawn(["faces", runtime, str(tmp / "exports"), str(tmp / f"f-{runtime}.npy")], {})
        row["vectors"] = np.load(tmp / f"f-{runtime}.npy")
        d, same = all_pairs(distance_matrix(row["vectors"]), labels)
        row["eer"], row["val"] = equal_error_rate(d, same), val_at_far(d, same, 1e-3)
        results[runtime] = row
    port, dlib = results["torch"], results["dlib"]
    lines = [
        "## Faces: dlib's ResNet on the 400 aligned ORL chips",
        "",
        "Faces/s over the 400 chips (150 x 150, aligned as `tripletkit embed` aligns), cosine to "
        "the port and to dlib, EER and VAL@1e-3 over all pairs of the 400 (ORL is the data "
        "the demo tests on: these columns say what int8 costs, they chose nothing).",
        "",
        "| runtime | faces/s | x dlib | cosine to the port (min) | cosine to dlib (min) | EER "
        "| VAL@1e-3 | peak RSS MB | first load s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for runtime, row in results.items():
        to_port = (row["vectors"] * port["vectors"]).sum(1).min()
        to_dlib = (row["vectors"] * dlib["vectors"]).sum(1).min()
        lines.append(
            f"| {FACE_RUNTIMES[runtime]} | {row['per_s']:.1f} | {row['per_s'] / dlib['per_s']:.1f} "
            f"| {to_port:.6f} | {to_dlib:.6f} | {row['eer']:.4f} | {row['val']:.4f} "
            f"| {row['peak_mb']:.0f} | {row['load_s']:.1f} |"
        )
    lines += [""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/inference_cpu.md"))
    parser.add_argument("--sample", type=int, default=1000)
    parser.add_argument("--only", choices=["text", "faces"], default=None)
    args = parser.parse_args()
    if args.worker:
        kind, runtime, *rest = args.worker
        if kind == "text":
            got = text_worker(runtime, int(rest[0]), Path(rest[1]), Path(rest[2]))
        else:
            got = face_worker(runtime, Path(rest[0]), Path(rest[1]))
        print(json.dumps(got))
        return
    began = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as folder:
        tmp = Path(folder)
        lines = [
            "# Inference on the CPU: text and face encoders side by side",
            "",
            f"Written by `benchmarks/bench_inference.py` (`make bench-inference`) on "
            f"{datetime.date.today()}: {platform.processor() or platform.machine()}, "
            f"{len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}.",
            "",
        ]
        if args.only != "faces":
            text_lines, _ = bench_text(tmp, args.sample)
            lines += text_lines
        if args.only != "text":
            lines += bench_faces(tmp)
    lines.append(f"Whole run: {time.time() - began:.0f} s.")
    write_text(args.out, "\n".join(lines) + "\n")
    log(f"-> {args.out}")


if __name__ == "__main__":
    main()
