"""Faces training throughput with 1 and 2 CPU processes (torchrun, gloo), and what the
all-gather of the embeddings costs per step. Rewrites a Markdown table.

    python benchmarks/bench_ddp.py --out benchmarks/ddp_cpu.md

Each configuration is a fresh ``tripletkit train`` on ORL (the ``make demo`` network and a
global batch of 30 identities x 5 images), fold 0, for ``--steps`` steps; throughput is taken
from the training log's per-step clock after ``--skip`` warm-up steps. The gather cost is timed
separately in 2 processes: forward (all-gather of the row counts and the rows) and backward.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tripletkit._io import write_text

ROOT = Path(__file__).resolve().parents[1]


def train(processes: int, threads: int, steps: int, runs: Path) -> list[dict]:
    """One training run; its log records."""
    name = f"p{processes}-t{threads}"
    args = ["-m", "tripletkit", "train", "--config", str(ROOT / "configs/orl.yaml"), "--quiet"]
    args += ["--name", name, "--runs", str(runs)]
    for item in (f"train.max_steps={steps}", "data.fold=0", f"train.threads={threads}"):
        args += ["--set", item]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node"]
        cmd = [*launcher, str(processes), "--master-port", "29517", *args]
    else:
        cmd = [sys.executable, *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    log = runs / name / "fold0" / "train_log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()]


def throughput(records: list[dict], skip: int, images: int) -> tuple[float, float]:
    """(seconds per step, images per second) over the steps after ``skip``."""
    first, last = records[skip - 1]["seconds"], records[-1]["seconds"]
    per_step = (last - first) / (len(records) - skip)
    return per_step, images / per_step


def gather_worker(rows: int, repeats: int) -> None:
    """Under torchrun: time gather forward + backward of (rows, 128) embeddings."""
    import torch

    from tripletkit import distributed

    torch.set_num_threads(1)
    with distributed.session(timeout=120, backend="gloo"):
        x = torch.randn(rows, 128, requires_grad=True)
        for _ in range(5):
            distributed.gather(x).sum().backward()
        distributed.barrier()
        start = time.perf_counter()
        for _ in range(repeats):
            distributed.gather(x).sum().backward()
        seconds = (time.perf_counter() - start) / repeats
        if distributed.is_main():
            print(json.dumps({"rows": rows, "ms": 1000 * seconds}))


def gather_cost(rows: int) -> float:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    cmd += ["--master-port", "29518", __file__, "--gather-rows", str(rows)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    line = [x for x in done.stdout.splitlines() if x.startswith("{")][-1]
    return float(json.loads(line)["ms"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="benchmarks/ddp_cpu.md")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--skip", type=int, default=10)
    parser.add_argument("--gather-rows", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gather_rows:
        gather_worker(args.gather_rows, 200)
        return
    batch = 30 * 5
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for processes, threads in ((1, 2), (1, 1), (2, 1)):
            print(f"training: {processes} process(es) x {threads} thread(s)", flush=True)
            per_step, rate = throughput(
                train(processes, threads, args.steps, Path(tmp)), args.skip, batch
            )
            rows.append((processes, threads, per_step, rate))
    base = rows[0][3]
    gathers = {r: gather_cost(r) for r in (75, 900)}
    two = rows[2][2]
    lines = [
        "# DDP on CPU: faces training throughput and the all-gather cost",
        "",
        f"Regenerate: `python benchmarks/bench_ddp.py --out {args.out}` "
        f"({datetime.date.today()}, {os.cpu_count()} cores, gloo). ORL, the `make demo` network "
        f"(56 x 46 input, 128-d), global batch 30 identities x 5 images = {batch}, semi-hard "
        f"mining over the gathered batch; {args.steps} steps, the first {args.skip} not timed.",
        "",
        "| processes x threads | s / step | images / s | vs 1 x 2 |",
        "|---|---|---|---|",
    ]
    lines += [f"| {p} x {t} | {s:.3f} | {r:.0f} | {r / base:.2f}x |" for p, t, s, r in rows]
    lines += [
        "",
        "All-gather with gradient, 2 processes x 1 thread (forward: row counts and rows; "
        "backward: the rank's slice):",
        "",
        "| rows per rank (x 128 floats) | ms per step | share of a 2 x 1 training step |",
        "|---|---|---|",
    ]
    lines += [f"| {r} | {ms:.3f} | {ms / 1000 / two:.1%} |" for r, ms in gathers.items()]
    lines += [
        "",
        "On one machine the ranks share its cores, so two processes cannot beat one process "
        "using both cores by much: the table shows the cost of the distributed machinery "
        "(gather, gradient all-reduce, per-rank batches half the size) rather than a speed-up. "
        "Across machines each rank brings its own cores or GPU, and the global batch grows "
        "with the world size at the same per-rank cost.",
    ]
    write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
