"""The arms of the search table: what each one knows about relevance, and where it is stored.

| arm | training positive | in-batch relevance | mined negatives: window minus |
|---|---|---|---|
| bm25, bm25_standard | - (no training; :mod:`tripletkit.search.bm25`) | | |
| base | - (the zero-shot encoder) | | |
| in_batch | any relevant document | qrels | (none mined) |
| mined_naive | the first listed one | that pair only | that positive |
| mined_unfiltered | any relevant document | qrels | the first listed positive |
| mined_qrels_only | any relevant document | qrels | every relevant document |
| mined_margin_only | any relevant document | qrels | first positive, p - m abs(p) |
| mined_filtered | any relevant document | qrels | every relevant doc, p - m abs(p) |

``mined_naive`` is the seed's naive setting and uses no relevance judgment beyond one (query,
document) pair per training query: its batches and its miner see the qrels reduced to each
query's first listed positive (:func:`known_positives`), so in the batch every other query's
document is a negative, and the miner drops only that one positive from the rank window.
The other trained arms share the qrels-aware batch (a document relevant to two queries of the
batch is a negative of neither); the one-filter rows change the miner alone.

A trained arm's folder is ``<run>/<arm>`` for the first seed of ``seeds`` and
``<run>/<arm>-seed<s>`` for each further seed s.
"""

from __future__ import annotations

from pathlib import Path

from .config import NegativesConfig, SearchConfig
from .negatives import MiningConfig

BM25_ARMS = ("bm25", "bm25_standard")
TRAINED = (
    "in_batch",
    "mined_naive",
    "mined_unfiltered",
    "mined_qrels_only",
    "mined_margin_only",
    "mined_filtered",
)
ARMS = (*BM25_ARMS, "base", *TRAINED)
NAIVE = ("mined_naive",)


def check_arms(arms: tuple[str, ...] | list[str], where: str = "arms") -> None:
    """Raises ValueError naming the first arm of ``arms`` that is not in :data:`ARMS`."""
    for arm in arms:
        if arm not in ARMS:
            raise ValueError(f"{where}: unknown arm {arm!r}; arms: {', '.join(ARMS)}")


def mining_config(cfg: SearchConfig | NegativesConfig, arm: str) -> MiningConfig | None:
    """The corpus miner of an arm (see the module table); None for an arm without mined
    negatives.

    Raises:
        ValueError: an unknown arm.
    """
    check_arms([arm])
    neg = cfg.negatives if isinstance(cfg, SearchConfig) else cfg
    if arm not in TRAINED or arm == "in_batch":
        return None
    qrels_filter = arm in ("mined_qrels_only", "mined_filtered")
    margin_filter = arm in ("mined_margin_only", "mined_filtered")
    return MiningConfig(
        n=neg.n,
        r_min=neg.r_min,
        r_max=neg.r_max,
        exclude="relevant" if qrels_filter else "positive",
        max_score=neg.max_score if margin_filter else None,
        relative_margin=neg.relative_margin if margin_filter else None,
        absolute_margin=neg.absolute_margin if margin_filter else None,
    )


def known_positives(qrels: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """What the naive setting knows: each query with its first listed relevant document alone
    (queries without one are left out)."""
    out = {}
    for q, docs in qrels.items():
        first = next((d for d, g in docs.items() if g > 0), None)
        if first is not None:
            out[q] = {first: 1}
    return out


def training_view(arm: str, qrels: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The judgments an arm's batches and miner may read: :func:`known_positives` for the naive
    arm, the full training qrels otherwise."""
    return known_positives(qrels) if arm in NAIVE else qrels


def all_seeds(cfg: SearchConfig) -> tuple[int, ...]:
    """``cfg.seeds``, or (``train.seed``,) when it is empty."""
    return cfg.seeds or (cfg.train.seed,)


def seeds_of(cfg: SearchConfig, arm: str) -> tuple[int, ...]:
    """The seeds an arm runs with: (0,) for a deterministic arm (BM25, base); the first seed
    (:func:`all_seeds`) for an arm in ``cfg.one_seed``; every seed otherwise."""
    if arm not in TRAINED:
        return (0,)
    seeds = all_seeds(cfg)
    return seeds[:1] if arm in cfg.one_seed else seeds


def arm_folder(run: Path, cfg: SearchConfig, arm: str, seed: int) -> Path:
    """The folder of a trained arm at one seed (module docstring)."""
    return run / arm if seed == all_seeds(cfg)[0] else run / f"{arm}-seed{seed}"


def check_config(cfg: SearchConfig) -> None:
    """The arm and seed settings a search run needs.

    Raises:
        ValueError: naming the key: an unknown arm in ``arms`` or ``one_seed``, no arm, or a
            seed listed twice in ``seeds``.
    """
    if not cfg.arms:
        raise ValueError("arms: no arm to run; arms: " + ", ".join(ARMS))
    check_arms(cfg.arms, "arms")
    check_arms(cfg.one_seed, "one_seed")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ValueError(f"seeds: a seed is listed twice in {list(cfg.seeds)}")
