"""The loss at two commits side by side, in one run: did a change cost speed?

Each commit is checked out into a temporary git worktree. Every (strategy, batch size) cell is
timed in fresh processes, each of which imports tripletkit from BOTH worktrees (the first copy
renamed away in ``sys.modules`` before the second is imported) and times, step after step in
rotating order, the bare B x B product (E @ E.T forward + backward) and the strategy at each
commit: both commits then see the same machine at the same moments, and the ratio
strategy / bare cancels what drift is left. The table gives each commit's median ratio and
the change between them. Usage:

    python benchmarks/bench_commits.py BASE HEAD --out benchmarks/refactor_cpu.md
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIZES = {128: (32, 4), 512: (128, 4), 1800: (45, 40), 8192: (2048, 4)}
STRATEGIES = ("all", "hard", "semi-hard")
DIM = 128
MARGIN = 0.2
ROUNDS = 3
# each process times the three functions in turn for at least this long, this many times
SECONDS_PER_CELL = 4.0
MIN_REPEATS = 12
TOLERANCE = 0.05  # the accepted change of a ratio


def load_versions(trees: list[str]) -> list[Any]:
    """tripletkit's ``triplet_loss`` from each source tree, in one process."""
    versions = []
    for tree in trees:
        sys.path.insert(0, str(Path(tree) / "src"))
        module = importlib.import_module("tripletkit")
        assert module.__file__ and module.__file__.startswith(tree), module.__file__
        versions.append(module.triplet_loss)
        for name in [n for n in sys.modules if n == "tripletkit" or n.startswith("tripletkit.")]:
            sys.modules[f"_v{len(versions)}_{name}"] = sys.modules.pop(name)
        sys.path.pop(0)
    return versions


def time_cell(trees: list[str], strategy: str, size: int) -> list[dict[str, float]]:
    """In this process: per tree, median seconds per step of ``strategy`` and of the bare
    product, all timed in rotating order after a warm-up."""
    import torch

    losses = load_versions(trees)
    torch.set_num_threads(2)
    p, k = SIZES[size]
    labels = torch.arange(p).repeat_interleave(k)
    gen = torch.Generator().manual_seed(0)
    base = torch.nn.functional.normalize(torch.randn(size, DIM, generator=gen), dim=1)

    def bare() -> None:
        e = base.clone().requires_grad_()
        (e @ e.T).backward(torch.ones(size, size))

    def loss_of(fn: Any) -> Any:
        def run() -> None:
            e = base.clone().requires_grad_()
            fn(e, labels, margin=MARGIN, mining=strategy)[0].backward()

        return run

    fns = [bare, *map(loss_of, losses)]
    times: list[list[float]] = [[] for _ in fns]
    for fn in fns * 2:  # warm-up: page faults, buffers, thread pools
        fn()
    began, turn = time.perf_counter(), 0
    while len(times[0]) < MIN_REPEATS or time.perf_counter() - began < SECONDS_PER_CELL:
        order = list(range(len(fns)))
        order = order[turn % len(order) :] + order[: turn % len(order)]
        turn += 1
        for i in order:
            start = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - start)
    bare_time = statistics.median(times[0])
    return [{"bare": bare_time, "loss": statistics.median(t)} for t in times[1:]]


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


def run_cell(trees: list[Path], strategy: str, size: int) -> list[dict[str, float]]:
    """:func:`time_cell` in a fresh process."""
    code = (
        f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        "import bench_commits; "
        f"print(json.dumps(bench_commits.time_cell({[str(t) for t in trees]!r}, "
        f"{strategy!r}, {size})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"the cell {strategy} B={size} failed:\n{out.stderr}")
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
                        got = run_cell([t for t, _ in trees], strategy, size)
                        for (_, commit), cell in zip(trees, got, strict=True):
                            cells.setdefault((commit, strategy, size), []).append(cell)
                        ratios = " ".join(f"{c['loss'] / c['bare']:.2f}x" for c in got)
                        print(f"round {r} {strategy} B={size}: {ratios}", flush=True)
        finally:
            for tree, _ in trees:
                subprocess.run(
                    ["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)],
                    capture_output=True,
                )
    text = report(cells, [c for _, c in trees], sizes, args.rounds)
    print(text)
    if args.out:
        from tripletkit._io import write_text  # not at the top: cells import both commits'

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
        f"Each cell: {rounds} fresh processes, each importing both commits' tripletkit and "
        "timing the bare B x B product and each commit's strategy in rotating order; the "
        "cell is the median over processes of the ratio strategy / bare (median time per "
        "step in brackets, ms).",
        "",
        f"| strategy | B | {base} | {head} | change |",
        "|---|---|---|---|---|",
    ]
    worst = -1.0
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
        f"Largest change towards slower: {worst:+.1%} (target: no ratio more than "
        f"{TOLERANCE:.0%} slower: {verdict}).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
