"""The configuration of a search run: data, encoder, corpus negatives, and the whole run."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import LossConfig, TrainConfig


@dataclass(frozen=True)
class TextDataConfig:
    """A BEIR folder, or "wiki" (built from the Wikipedia summaries into ``cache``)."""

    source: str = "wiki"
    seed: int = 0
    cache: str = "runs/data"
    train_split: str = "train"
    eval_split: str = "test"
    dev_split: str = "dev"


@dataclass(frozen=True)
class EncoderConfig:
    """The sentence-transformers encoder: a folder (None: all-MiniLM-L6-v2), tokens per text,
    encoding batch size, and what runs it where no gradient is needed (indexing, corpus
    encoding for mining and evaluation, the service): "torch", "onnx" or "onnx-int8" (ONNX
    Runtime, see :mod:`tripletkit.search.runtime`; the default was chosen on the wiki dev split
    by benchmarks/bench_inference.py). Training runs the SentenceTransformer whatever it says."""

    path: str | None = None
    max_seq_length: int = 128
    batch_size: int = 64
    runtime: str = "onnx-int8"


@dataclass(frozen=True)
class NegativesConfig:
    """Corpus-level negatives per training query (see :mod:`tripletkit.search.negatives`)."""

    n: int = 1
    r_min: int = 0
    r_max: int = 50
    max_score: float | None = None
    relative_margin: float | None = 0.05
    absolute_margin: float | None = None
    remine_every: int = 0


@dataclass(frozen=True)
class SearchConfig:
    """A semantic-search run: data, encoder, negatives, loss, training, and the arms.

    Arms (:mod:`tripletkit.search.arms`): "bm25", "bm25_standard", "base" (zero-shot),
    "in_batch" (no mined negatives), "mined_naive", "mined_unfiltered", "mined_qrels_only",
    "mined_margin_only", "mined_filtered". Each trained arm runs once per seed of ``seeds``
    (empty: ``train.seed`` alone), an arm listed in ``one_seed`` with the first seed only.
    """

    name: str = "search-demo"
    task: str = "search"
    data: TextDataConfig = field(default_factory=TextDataConfig)
    model: EncoderConfig = field(default_factory=EncoderConfig)
    negatives: NegativesConfig = field(default_factory=NegativesConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    index: str = "flat"
    arms: tuple[str, ...] = ("bm25", "base", "mined_filtered")
    eval_every: int = 0
    seeds: tuple[int, ...] = ()
    one_seed: tuple[str, ...] = ()
