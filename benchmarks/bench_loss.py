"""Loss + in-batch mining, forward + backward: tripletkit beside pytorch-metric-learning,
sentence-transformers and the bare B x B matrix product.

Every (method, batch size) runs in a fresh process; the table gives the median time per step,
its ratio to the bare product (E @ E.T forward + backward, which any miner pays), and the peak
extra resident memory of the process. Usage:

    python benchmarks/bench_loss.py --out benchmarks/loss_cpu.md
    python benchmarks/bench_loss.py --sizes 1800 --methods bare,tripletkit-hard   # a subset
    python benchmarks/bench_loss.py --collapse --out benchmarks/loss_cpu.md   # collapse rows only

``--collapse`` times tripletkit alone on ordinary and on collapsed embeddings (all within a ball
of radius 1e-3), at B = 1800 and 8192 (or ``--sizes``), and rewrites only the "Collapsed
embeddings" section of the table (a few minutes); a full run keeps that section as it was.
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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tripletkit._io import write_text

SIZES = {128: (32, 4), 512: (128, 4), 1800: (45, 40), 4096: (1024, 4), 8192: (2048, 4)}
DIM = 128
# Fresh processes per cell for the bare product and tripletkit (the bare product alone moves
# by up to 30% between processes on this machine); one for the slow libraries.
ROUNDS = 3
MARGIN = 0.2
# Collapsed embeddings: a ball of this radius around one unit vector.
COLLAPSE_RADIUS = 1e-3
COLLAPSE_SIZES = (1800, 8192)
COLLAPSE_TARGET = 1.5
COLLAPSE_HEADING = "## Collapsed embeddings"
METHODS = {
    "bare": "bare B x B product (E @ E.T, forward + backward)",
    "tripletkit-all": "tripletkit mining='all'",
    "tripletkit-hard": "tripletkit mining='hard'",
    "tripletkit-semi-hard": "tripletkit mining='semi-hard'",
    "pml-semihard": "pytorch-metric-learning TripletMarginMiner('semihard') + TripletMarginLoss",
    "pml-hard": "pytorch-metric-learning TripletMarginMiner('hard') + TripletMarginLoss",
    "pml-all": "pytorch-metric-learning TripletMarginMiner('all') + TripletMarginLoss",
    "pml-batchhard": "pytorch-metric-learning BatchHardMiner + TripletMarginLoss",
    "st-semi-hard": "sentence-transformers BatchSemiHardTripletLoss",
    "st-hard": "sentence-transformers BatchHardTripletLoss",
    "st-all": "sentence-transformers BatchAllTripletLoss",
}


def _step_function(method: str, labels: Any) -> Callable[[Any], None]:
    """The function that computes one loss (with backward) for ``method``."""
    import torch

    if method == "bare":
        return lambda e: (e @ e.T).backward(torch.ones(len(e), len(e)))
    if method.startswith("tripletkit-"):
        from tripletkit import triplet_loss

        mining = method.removeprefix("tripletkit-")
        return lambda e: triplet_loss(e, labels, margin=MARGIN, mining=mining)[0].backward()
    if method.startswith("pml-"):
        from pytorch_metric_learning import losses, miners

        loss = losses.TripletMarginLoss(margin=MARGIN)
        kind = method.removeprefix("pml-")
        miner = (
            miners.BatchHardMiner()
            if kind == "batchhard"
            else miners.TripletMarginMiner(margin=MARGIN, type_of_triplets=kind)
        )
        return lambda e: loss(e, labels, miner(e, labels)).backward()
    from sentence_transformers.sentence_transformer import losses as st

    kind = method.removeprefix("st-")
    cls = {
        "semi-hard": st.BatchSemiHardTripletLoss,
        "hard": st.BatchHardTripletLoss,
        "all": st.BatchAllTripletLoss,
    }[kind]
    module = cls(model=None, margin=MARGIN)  # type: ignore[arg-type]
    fn = {
        "semi-hard": "batch_semi_hard_triplet_loss",
        "hard": "batch_hard_triplet_loss",
        "all": "batch_all_triplet_loss",
    }[kind]
    return lambda e: getattr(module, fn)(labels, e).backward()


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def embeddings_of(kind: str, size: int) -> Any:
    """(size, DIM) embeddings: "ordinary" random unit vectors, or "collapsed" ones, uniform in
    a ball of radius COLLAPSE_RADIUS around one unit vector (early in a bad run)."""
    import torch

    base = torch.nn.functional.normalize(torch.randn(size, DIM), dim=1)
    if kind == "ordinary":
        return base
    centre = torch.nn.functional.normalize(torch.randn(1, DIM), dim=1)
    radius = COLLAPSE_RADIUS * torch.rand(size, 1) ** (1 / DIM)
    return centre + radius * base


def run_one(method: str, size: int, kind: str = "ordinary") -> dict[str, float]:
    """Time one configuration in this process (call it in a fresh one)."""
    import torch

    torch.manual_seed(0)
    p, k = SIZES[size]
    labels = torch.arange(p).repeat_interleave(k)
    base = embeddings_of(kind, size)
    step: Callable = _step_function(method, labels)
    embeddings = base.clone().requires_grad_()
    warm = torch.randn(64, 64, requires_grad=True)  # thread pools and BLAS buffers
    (warm @ warm.T).sum().backward()
    before = _rss_mb()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 4 or (time.perf_counter() - start < 2.0 and len(times) < 30):
        embeddings.grad = None
        t0 = time.perf_counter()
        step(embeddings)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    timed = sorted(times[1:])  # the first call warms the allocator up
    return {
        "ms": 1000 * timed[len(timed) // 2],
        "best_ms": 1000 * timed[0],
        "peak_mb": max(0.0, peak - before),
    }


def _combine(cells: list[dict | str]) -> dict | str:
    """One cell from several processes: the median of their median times, the largest peak."""
    good = [c for c in cells if isinstance(c, dict)]
    if len(good) < len(cells):
        return next(c for c in cells if isinstance(c, str))
    times = sorted(c["ms"] for c in good)
    return {"ms": times[len(times) // 2], "peak_mb": max(c["peak_mb"] for c in good)}


def run_fresh(
    method: str, size: int, timeout: float, kind: str = "ordinary"
) -> dict[str, float] | str:
    """run_one in a new interpreter; an error string on failure."""
    cmd = [sys.executable, __file__, "--one", method, str(size), kind]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return f"timeout > {timeout:.0f} s"
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"failed: {tail[:80]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def agreement() -> list[str]:
    """Same batch, same definitions: our options that reproduce the other libraries' losses."""
    import torch

    from tripletkit import triplet_loss

    torch.manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(24, 16), dim=1)
    y = torch.arange(6).repeat_interleave(4)
    rows = []
    try:
        from sentence_transformers.sentence_transformer import losses as st

        pairs = [
            (
                "BatchSemiHardTripletLoss",
                "batch_semi_hard_triplet_loss",
                st.BatchSemiHardTripletLoss,
                dict(mining="semi-hard", fallback="easiest"),
            ),
            (
                "BatchHardTripletLoss",
                "batch_hard_triplet_loss",
                st.BatchHardTripletLoss,
                dict(mining="hard"),
            ),
            (
                "BatchAllTripletLoss",
                "batch_all_triplet_loss",
                st.BatchAllTripletLoss,
                dict(mining="all", reduction="mean_active"),
            ),
        ]
        for name, fn, cls, options in pairs:
            theirs = getattr(cls(model=None, margin=MARGIN), fn)(y, e).item()
            ours = triplet_loss(e, y, margin=MARGIN, distance="euclidean", **options)[0].item()
            opts = ", ".join(f"{k}={v!r}" for k, v in options.items())
            rows.append(
                f"| sentence-transformers {name} | {theirs:.6f} | "
                f"`{opts}, distance='euclidean'` | {ours:.6f} |"
            )
    except ImportError:
        rows.append("| sentence-transformers | not installed | | |")
    try:
        from pytorch_metric_learning import losses, miners

        miner = miners.TripletMarginMiner(margin=MARGIN, type_of_triplets="semihard")
        theirs = losses.TripletMarginLoss(margin=MARGIN)(e, y, miner(e, y)).item()
        ours = triplet_loss(e, y, margin=MARGIN, distance="euclidean")[0].item()
        rows.append(
            f"| pytorch-metric-learning TripletMarginMiner('semihard') | {theirs:.6f} | "
            f"`mining='semi-hard', distance='euclidean'` (another definition) | "
            f"{ours:.6f} |"
        )
    except ImportError:
        rows.append("| pytorch-metric-learning | not installed | | |")
    return rows


def _versions() -> str:
    import torch

    parts = [f"torch {torch.__version__}", f"{torch.get_num_threads()} threads"]
    for name in ("pytorch_metric_learning", "sentence_transformers"):
        try:
            module = __import__(name)
            parts.append(f"{name.replace('_', '-')} {module.__version__}")
        except ImportError:
            parts.append(f"{name.replace('_', '-')} not installed")
    return ", ".join(parts)


def render(results: dict[str, dict[int, dict | str]], sizes: list[int]) -> str:
    """The Markdown report."""
    head = "| method | " + " | ".join(f"B={s} ({SIZES[s][0]}x{SIZES[s][1]})" for s in sizes) + " |"
    lines = [
        "# Loss + in-batch mining: time per step and peak memory (CPU)",
        "",
        f"Regenerate: `make bench` ({datetime.date.today().isoformat()}, {platform.machine()}, "
        f"{os.cpu_count()} cores; {_versions()}).",
        "",
        f"Forward + backward, d = {DIM}, margin {MARGIN}, random unit-norm embeddings, P x K "
        f"labels; each cell is a fresh process ({ROUNDS} of them, interleaved, for the bare "
        "product and tripletkit: the median of their medians): median time per step / peak "
        "extra resident memory, and in brackets the time as a multiple of the bare B x B "
        "product.",
        "",
        head,
        "|---" * (len(sizes) + 1) + "|",
    ]
    for method, label in METHODS.items():
        if method not in results:
            continue
        cells = []
        for s in sizes:
            cell = results[method].get(s)
            bare = results.get("bare", {}).get(s)
            if isinstance(cell, dict):
                text = f"{_fmt_ms(cell['ms'])} / {cell['peak_mb']:.0f} MB"
                if isinstance(bare, dict) and method != "bare":
                    text += f" ({cell['ms'] / bare['ms']:.1f}x)"
                cells.append(text)
            else:
                cells.append(cell or "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        *_targets(results, sizes),
        "",
        "## Same batch, same definition",
        "",
        "A 6 x 4 batch of 16-d unit vectors, margin 0.2: the tripletkit options that give "
        "each library's loss.",
        "",
        "| library loss | value | tripletkit options | value |",
        "|---|---|---|---|",
        *agreement(),
        "",
    ]
    return "\n".join(lines)


def _fmt_ms(ms: float) -> str:
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.1f} ms"


def _targets(results: dict[str, dict[int, dict | str]], sizes: list[int]) -> list[str]:
    """Issue targets: within 3x of the bare product at B = 1800 and 8192, < 2 GB at 8192."""
    out = ["## Targets", ""]
    for method in ("tripletkit-all", "tripletkit-hard", "tripletkit-semi-hard"):
        notes = []
        for s in (1800, 8192):
            cell, bare = results.get(method, {}).get(s), results.get("bare", {}).get(s)
            if s in sizes and isinstance(cell, dict) and isinstance(bare, dict):
                ratio = cell["ms"] / bare["ms"]
                notes.append(f"B={s}: {ratio:.1f}x bare ({'met' if ratio <= 3 else 'MISSED'})")
                if s == 8192:
                    ok = cell["peak_mb"] < 2048
                    notes.append(f"peak {cell['peak_mb']:.0f} MB ({'met' if ok else 'MISSED'})")
        if notes:
            out.append(f"- {METHODS[method]}: " + "; ".join(notes))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    parser.add_argument(
        "--collapse", action="store_true", help="only the collapsed-embeddings comparison"
    )
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="batch sizes")
    parser.add_argument("--methods", default=",".join(METHODS), help="methods, comma-separated")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per configuration")
    parser.add_argument("--out", type=Path, help="write the Markdown table here")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), *args.one[2:])))
        return
    if args.collapse:
        sizes = list(COLLAPSE_SIZES) if "--sizes" not in sys.argv else _sizes(args.sizes)
        section = render_collapse(run_collapse(sizes, args.timeout))
        if args.out:
            old = args.out.read_text() if args.out.exists() else ""
            write_text(args.out, replace_section(old, COLLAPSE_HEADING, section))
            print(f"wrote {args.out}")
        else:
            print(section)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS] + [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(
            f"unknown methods or sizes: {unknown}; choose from {list(METHODS)} and {list(SIZES)}"
        )
    results: dict[str, dict[int, dict | str]] = {m: {} for m in methods}
    for size in sizes:
        runs: dict[str, list[dict | str]] = {m: [] for m in methods}
        for round_ in range(ROUNDS):  # rounds interleave the methods, so drift hits them all
            for method in methods:
                if round_ and not (method == "bare" or method.startswith("tripletkit-")):
                    continue
                runs[method].append(cell := run_fresh(method, size, args.timeout))
                shown = (
                    cell
                    if isinstance(cell, str)
                    else f"{_fmt_ms(cell['ms'])}, {cell['peak_mb']:.0f} MB"
                )
                print(f"B={size:5d} {method:22s} {shown}", flush=True)
        for method, cells in runs.items():
            results[method][size] = _combine(cells)
    report = render(results, sizes)
    if args.out:
        old = args.out.read_text() if args.out.exists() else ""
        kept = section_of(old, COLLAPSE_HEADING)
        write_text(args.out, replace_section(report, COLLAPSE_HEADING, kept) if kept else report)
        print(f"wrote {args.out}")
    else:
        print(report)


def _sizes(text: str) -> list[int]:
    sizes = [int(s) for s in text.split(",")]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        raise SystemExit(f"unknown sizes {unknown}; choose from {list(SIZES)}")
    return sizes


def run_collapse(sizes: list[int], timeout: float) -> dict[tuple[str, int, str], list[dict | str]]:
    """Every tripletkit strategy on ordinary and collapsed embeddings, ROUNDS fresh processes
    each, interleaved (ordinary and collapsed side by side, so load hits both). Returns the
    cells of each round, in order."""
    methods = [m for m in METHODS if m.startswith("tripletkit-")]
    runs: dict[tuple[str, int, str], list[dict | str]] = {}
    for size in sizes:
        for _ in range(ROUNDS):
            for method in methods:
                for kind in ("ordinary", "collapsed"):
                    cell = run_fresh(method, size, timeout, kind)
                    runs.setdefault((method, size, kind), []).append(cell)
                    shown = cell if isinstance(cell, str) else _fmt_ms(cell["best_ms"])
                    print(f"B={size:5d} {method:22s} {kind:9s} best step {shown}", flush=True)
    return runs


def render_collapse(results: dict[tuple[str, int, str], list[dict | str]]) -> str:
    """The "Collapsed embeddings" section: per round, the ratio of the best step on collapsed
    embeddings to the best step on ordinary ones (the pair ran back to back); the median of
    those ratios against the target, and the median best steps."""
    sizes = sorted({size for _, size, _ in results})
    lines = [
        COLLAPSE_HEADING,
        "",
        f"Regenerate: `python benchmarks/bench_loss.py --collapse --out benchmarks/loss_cpu.md` "
        f"({datetime.date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} cores; "
        f"{_versions()}).",
        "",
        "Early in a bad run the embeddings collapse: here they lie in a ball of radius "
        f"{COLLAPSE_RADIUS:g} around one unit vector (d = {DIM}, margin {MARGIN}, P x K labels as "
        f"above). Each round runs ordinary then collapsed, each in a fresh process, {ROUNDS} "
        "rounds interleaved over the strategies; a process reports its best step (the one "
        "least disturbed by other jobs: the machine was shared and loaded, so absolute times "
        "move between runs and only ratios within a run count). Each cell: median best step "
        "ordinary / collapsed, and the median over rounds of the collapsed / ordinary ratio. "
        f"Target: at most {COLLAPSE_TARGET}x.",
        "",
        "| method | "
        + " | ".join(f"B={s} ({SIZES[s][0]}x{SIZES[s][1]}): ordinary / collapsed" for s in sizes)
        + " |",
        "|---" * (len(sizes) + 1) + "|",
    ]
    for method in (m for m in METHODS if m.startswith("tripletkit-")):
        cells = []
        for size in sizes:
            pairs = zip(
                results.get((method, size, "ordinary"), []),
                results.get((method, size, "collapsed"), []),
                strict=True,
            )
            good = [(a, b) for a, b in pairs if isinstance(a, dict) and isinstance(b, dict)]
            if not good:
                cells.append("-")
                continue
            ratio = _median([b["best_ms"] / a["best_ms"] for a, b in good])
            plain, collapsed = (_median([pair[i]["best_ms"] for pair in good]) for i in (0, 1))
            verdict = "met" if ratio <= COLLAPSE_TARGET else "MISSED"
            cells.append(f"{_fmt_ms(plain)} / {_fmt_ms(collapsed)} ({ratio:.2f}x, {verdict})")
        lines.append(f"| {METHODS[method]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def section_of(text: str, heading: str) -> str:
    """The section of Markdown ``text`` under ``heading`` (up to the next "## "), or ""."""
    start = text.find(heading + "\n")
    if start < 0:
        return ""
    end = text.find("\n## ", start + len(heading))
    return text[start : end + 1 if end >= 0 else len(text)]


def replace_section(text: str, heading: str, section: str) -> str:
    """``text`` with its ``heading`` section replaced by ``section``; a missing section goes
    before "## Same batch, same definition" (or at the end)."""
    section = section.rstrip("\n") + "\n"
    old = section_of(text, heading)
    if old:
        return text.replace(old, section + ("\n" if not old.endswith("\n\n") else "\n"), 1)
    anchor = text.find("## Same batch, same definition")
    if anchor < 0:
        return text.rstrip("\n") + "\n\n" + section
    return text[:anchor] + section + "\n" + text[anchor:]


if __name__ == "__main__":
    main()
