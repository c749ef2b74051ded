"""The loss at two commits side by side, in one run: did a change cost speed?

Each commit is checked out into a temporary git worktree; every (commit, strategy, batch size)
cell is timed in a fresh process that imports tripletkit from that worktree's ``src`` and
measures the strategy and the bare B x B product (E @ E.T forward + backward) alternately, so
the ratio strategy / bare cancels the process-to-process drift of the machine. Rounds
interleave the commits. The table gives each commit's median ratio and the change between
them. Usage:

    python benchmarks/bench_commits.py BASE HEAD --out benchmarks/refactor_cpu.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tripletkit._io import write_text

SIZES = {128: (32, 4), 512: (128, 4), 1800: (45, 40), 8192: (2048, 4)}
STRATEGIES = ("all", "hard", "semi-hard")
DIM = 128
MARGIN = 0.2
ROUNDS = 5
# each process times both functions alternately for at least this long, this many times
SECONDS_PER_CELL = 3.0
MIN_REPEATS = 10
TOLERANCE = 0.05  # the accepted change of a ratio


def time_cell(strategy: str, size: int) -> dict[str, float]:
    """In this process: median seconds per step of ``strategy`` and of the bare product,
    measured alternately after a warm-up."""
    import torch

    from tripletkit import triplet_loss

    torch.set_num_threads(2)
    p, k = SIZES[size]
    labels = torch.arange(p).repeat_interleave(k)
    gen = torch.Generator().manual_seed(0)
    base = torch.nn.functional.normalize(torch.randn(size, DIM, generator=gen), dim=1)

    def bare() -> None:
        e = base.clone().requires_grad_()
        (e @ e.T).backward(torch.ones(size, size))

    def loss() -> None:
        e = base.clone().requires_grad_()
        triplet_loss(e, labels, margin=MARGIN, mining=strategy)[0].backward()

    times: dict[str, list[float]] = {"bare": [], "loss": []}
    for fn in (bare, loss, bare, loss):  # warm-up: page faults, buffers, thread pools
        fn()
    began = time.perf_counter()
    while len(times["loss"]) < MIN_REPEATS or time.perf_counter() - began < SECONDS_PER_CELL:
        for name, fn in (("bare", bare), ("loss", loss)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def worktree(repo: Path, rev: str, into: Path) -> tuple[Path, str]:
    """A detached worktree of ``rev`` under ``into``, and the commit's short hash."""
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", rev],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    path = into / commit
    subprocess.run(
        ["git", "-C", str(repo), "worktree", "add", "--detach", str(path), rev],
        capture_output=True,
        check=True,
    )
    return path, commit


def run_cell(tree: Path, strategy: str, size: int) -> dict[str, float]:
    """:func:`time_cell` in a fresh process importing tripletkit from ``tree``."""
    code = (
        f"import sys, json; sys.path.insert(0, {str(tree / 'src')!r}); "
        f"sys.path.insert(1, {str(Path(__file__).parent)!r}); "
        "import tripletkit, bench_commits; "
        f"assert tripletkit.__file__.startswith({str(tree)!r}), tripletkit.__file__; "
        f"print(json.dumps(bench_commits.time_cell({strategy!r}, {size})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("head")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    args = parser.parse_args()
    repo = Path(__file__).resolve().parents[1]
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        trees = [worktree(repo, rev, Path(tmp)) for rev in (args.base, args.head)]
        try:
            cells: dict[tuple[str, str, int], list[dict[str, float]]] = {}
            for r in range(args.rounds):
                for strategy in STRATEGIES:
                    for size in sizes:
                        order = trees if r % 2 == 0 else trees[::-1]
                        for tree, commit in order:
                            got = run_cell(tree, strategy, size)
                            cells.setdefault((commit, strategy, size), []).append(got)
                            ratio = got["loss"] / got["bare"]
                            print(
                                f"round {r} {commit} {strategy} B={size}: {ratio:.2f}x", flush=True
                            )
        finally:
            for tree, _ in trees:
                subprocess.run(
                    ["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)],
                    capture_output=True,
                )
    text = report(cells, [c for _, c in trees], sizes, args.rounds)
    print(text)
    if args.out:
        write_text(args.out, text)


def report(
    cells: dict[tuple[str, str, int], list[dict[str, float]]],
    commits: list[str],
    sizes: list[int],
    rounds: int,
) -> str:
    base, head = commits
    import torch

    lines = [
        f"# The loss before and after: {base} against {head} (CPU)",
        "",
        f"Regenerate: `python benchmarks/bench_commits.py {base} {head} --out "
        f"benchmarks/refactor_cpu.md` ({datetime.date.today()}, {platform.machine()}, 2 cores; "
        f"torch {torch.__version__}, 2 threads).",
        "",
        "Forward + backward, d = 128, margin 0.2, random unit-norm embeddings, P x K labels. "
        f"Each cell: {rounds} fresh processes per commit, interleaved; in each, the strategy "
        "and the bare B x B product are timed alternately and the cell is the median over "
        "processes of their ratio (median time per step in brackets, ms).",
        "",
        f"| strategy | B | {base} | {head} | change |",
        "|---|---|---|---|---|",
    ]
    worst = 0.0
    for strategy in STRATEGIES:
        for size in sizes:
            row: list[Any] = []
            ratios = []
            for commit in commits:
                runs = cells[(commit, strategy, size)]
                ratio = statistics.median(r["loss"] / r["bare"] for r in runs)
                ms = statistics.median(r["loss"] for r in runs) * 1e3
                ratios.append(ratio)
                row.append(f"{ratio:.2f}x ({ms:.1f})")
            change = ratios[1] / ratios[0] - 1
            worst = max(worst, change)
            lines.append(f"| {strategy} | {size} | {row[0]} | {row[1]} | {change:+.1%} |")
    verdict = "met" if worst <= TOLERANCE else "MISSED"
    lines += [
        "",
        f"Largest slow-down: {worst:+.1%} (target: every ratio within {TOLERANCE:.0%}: {verdict}).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
