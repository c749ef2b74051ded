"""A tiny BEIR dataset and a tiny sentence-transformers encoder, for smoke tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from tripletkit.search.data import Corpus, write_beir
from tripletkit.search.encoder import default_model_path

TOPICS = [
    "river",
    "mountain",
    "violin",
    "planet",
    "bird",
    "engine",
    "poem",
    "bridge",
    "tea",
    "glacier",
    "market",
    "comet",
]
TINY_SEARCH = [
    "model.max_seq_length=32",
    "model.batch_size=16",
    "train.batch_size=4",
    "train.max_steps=3",
    "train.warmup_steps=1",
    "train.epochs=1",
    "negatives.n=1",
    "negatives.r_max=10",
    "train.threads=1",
]


def make_beir(root: Path, seed: int = 0) -> Path:
    """12 topics x 3 documents; a query per document pair of words; the first query of each
    topic is answered by two documents (as a description shared by two articles)."""
    rng = np.random.default_rng(seed)
    ids, titles, texts = [], [], []
    for t, topic in enumerate(TOPICS):
        for j in range(3):
            filler = " ".join(rng.choice(TOPICS, 3))
            ids.append(f"d{t}-{j}")
            titles.append(f"{topic} {j}")
            texts.append(f"the {topic} number {j} is described here with {filler}")
    queries, qrels = {}, {"train": {}, "dev": {}, "test": {}}
    for t, topic in enumerate(TOPICS):
        for j in range(2):
            qid = f"q{t}-{j}"
            queries[qid] = f"{topic} number {j}"
            split = "train" if t < 8 else ("dev" if t < 10 else "test")
            qrels[split][qid] = {f"d{t}-{j}": 1}
            if j == 0:
                qrels[split][qid][f"d{t}-2"] = 1
    corpus = Corpus(ids, titles, texts, {d: i for i, d in enumerate(ids)})
    return write_beir(root, corpus, queries, qrels)


def tiny_encoder(root: Path) -> Path:
    """A 1-layer, 32-wide BERT with MiniLM's tokenizer, mean pooling, saved in
    sentence-transformers format."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    hf = root / "hf"
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertModel(config).save_pretrained(hf)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(default_model_path() / name, hf / name)
    model = SentenceTransformer(
        modules=[Transformer(str(hf), max_seq_length=32), Pooling(32)], device="cpu"
    )
    out = root / "tiny-encoder"
    model.save(str(out))
    return out
