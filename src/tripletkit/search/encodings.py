"""Corpus encodings for search: computed sharded over the ranks under torchrun, and cached.

A cache file (``.npz``) holds the (N, d) vectors and the key they were computed under: a hash of
the encoder (its module layout, every weight, and its max sequence length) and of the corpus
(every id and text, in order). Query encodings (:func:`text_vectors`) are cached the same way,
keyed on the model and the query ids and texts. A cache whose key differs from the current one
(another model in the same folder, the same model fine-tuned, another length, an edited
corpus) or which cannot be read is recomputed and replaced, never reused.
"""

from __future__ import annotations

import hashlib
import typing
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import distributed
from .._io import atomic_write
from .config import SearchConfig
from .data import Corpus, Retrieval
from .encoder import encode
from .runtime import OnnxTextEncoder


def unwrap(model: Any) -> Any:
    """The model inside a DistributedDataParallel wrapper (``model`` itself otherwise): the
    wrapper has no ``encode``."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def encode_sharded(
    model: Any, texts: list[str], cfg: SearchConfig, progress: bool, desc: str = "encode"
) -> np.ndarray:
    """:func:`tripletkit.search.encoder.encode` split over the ranks under torchrun, merged in
    order on every rank: (len(texts), d) unit vectors. ``model`` may be wrapped in
    DistributedDataParallel."""
    inner = unwrap(model)
    show = progress and distributed.is_main()
    return distributed.sharded(
        lambda part: encode(inner, part, cfg.model.batch_size, show, desc), texts
    )


def model_fingerprint(model: Any) -> str:
    """A hash of what the encodings depend on in ``model``: its module layout (repr), its max
    sequence length, and every tensor of its state dict (name, dtype, shape and bytes); for an
    ONNX encoder, those of the model it was exported from and its runtime (int8 vectors are
    not fp32 ones)."""
    inner = unwrap(model)
    h = hashlib.blake2b(digest_size=16)
    if isinstance(inner, OnnxTextEncoder):
        h.update(f"{model_fingerprint(inner.model)} runtime={inner.runtime}".encode())
        return h.hexdigest()
    h.update(repr(inner).encode())
    h.update(f"max_seq_length={getattr(inner, 'max_seq_length', None)}".encode())
    for name, tensor in inner.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def corpus_fingerprint(corpus: Corpus) -> str:
    """A hash of the corpus's ids and texts, in order (each length-prefixed, so no two corpora
    share a byte stream)."""
    return texts_fingerprint(corpus.ids, corpus.texts)


def texts_fingerprint(ids: list[str], texts: list[str]) -> str:
    """A hash of ids and texts, in order (each length-prefixed)."""
    h = hashlib.blake2b(digest_size=16)
    for item in (*ids, *texts):
        data = item.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def cache_key(model: Any, corpus: Corpus) -> str:
    """The key a cache of ``corpus`` encoded by ``model`` is stored under."""
    return f"model {model_fingerprint(model)} corpus {corpus_fingerprint(corpus)} n {len(corpus)}"


def read_cache(path: Path, key: str) -> np.ndarray | None:
    """The vectors cached in ``path`` under ``key``; None when there is no file, it cannot be
    read, or it was written under another key."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            if str(saved["key"]) != key:
                return None
            return np.asarray(saved["vectors"], dtype=np.float32)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def write_cache(path: Path, key: str, vectors: np.ndarray) -> None:
    """Store ``vectors`` (N, d) under ``key`` in ``path``, atomically."""

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.savez(f, key=np.array(key), vectors=vectors)

    atomic_write(path, write)


def corpus_vectors(
    model: Any, data: Retrieval, cfg: SearchConfig, cache: Path, progress: bool
) -> np.ndarray:
    """The corpus encoded by ``model``: (N, d) unit vectors, read from the cache file ``cache``
    (.npz) when it was written for this model and corpus (see the module docstring), else
    computed and cached. Under torchrun each rank encodes its shard; rank 0 checks, reads and
    writes the cache."""
    key = cache_key(model, data.corpus) if distributed.is_main() else ""
    return _cached(model, data.corpus.texts, key, cfg, cache, progress, "corpus")


def text_vectors(
    model: Any, ids: list[str], texts: list[str], cfg: SearchConfig, cache: Path, progress: bool
) -> np.ndarray:
    """Texts (queries) encoded by ``model``: (len(texts), d) unit vectors, cached in ``cache``
    like :func:`corpus_vectors`, keyed on the model and the ids and texts."""
    key = ""
    if distributed.is_main():
        key = f"model {model_fingerprint(model)} texts {texts_fingerprint(ids, texts)}"
    return _cached(model, texts, key, cfg, cache, progress, "queries")


def _cached(
    model: Any,
    texts: list[str],
    key: str,
    cfg: SearchConfig,
    cache: Path,
    progress: bool,
    desc: str,
) -> np.ndarray:
    main = distributed.is_main()
    cached = read_cache(cache, key) if main else None
    if distributed.broadcast(cached is not None, "cache check"):
        return typing.cast(np.ndarray, distributed.broadcast(cached, f"{desc} vectors"))
    vectors = encode_sharded(model, texts, cfg, progress, desc)
    if main:
        write_cache(cache, key, vectors)
    return vectors
