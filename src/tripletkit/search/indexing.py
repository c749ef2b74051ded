"""Index folders of a corpus for ``tripletkit index`` and the service: the corpus encoded
(sharded over the ranks under torchrun) into a FAISS index, in memory or with its inverted
lists on disk, saved with its ids, titles, texts and encoder.

``encoder.json`` names the encoder (its path, None for the default one, the sequence length
and the runtime that encoded the corpus, which then encodes the queries too) and records its
fingerprint (:func:`~tripletkit.search.encodings.model_fingerprint`: its module layout,
sequence length, every weight and the runtime). :func:`folder_encoder` loads the encoder
and refuses it when its fingerprint is not the recorded one: a model retrained at the same path
would otherwise encode queries against vectors of the old model, silently.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import distributed
from .._onnx import RUNTIMES
from .config import SearchConfig
from .data import Retrieval
from .encoder import dimension, load_encoder
from .encodings import encode_sharded, model_fingerprint
from .index import Index, default_nlist, training_sample

Progress = Callable[[int, int], None]  # (documents encoded, documents in all)


def index_on_disk(
    model: Any,
    data: Retrieval,
    cfg: SearchConfig,
    folder: Path,
    extra: dict[str, str],
    progress: bool,
    chunk: int = 16384,
    on_progress: Progress | None = None,
) -> None:
    """An IVF-PQ (HNSW quantizer) of the corpus with its lists on disk, for corpora larger than
    memory: the corpus is encoded ``chunk`` texts at a time (sharded over the ranks) into a
    memory-mapped .npy beside ``folder``, which then feeds the training sample and the chunked
    build; rank 0 writes. The ``extra`` files (name -> text) are written into the index's
    temporary folder, so the folder appears complete with them or not at all. Memory holds a
    chunk, the sample and the ids. ``on_progress(done, total)`` is called after each chunk."""

    texts, main = data.corpus.texts, distributed.is_main()
    scratch = folder.with_name(f".{folder.name}.vectors.npy")
    dim = dimension(model)
    store = (
        np.lib.format.open_memmap(scratch, "w+", np.float32, (len(texts), dim)) if main else None
    )
    try:
        for start in range(0, len(texts), chunk):
            part = encode_sharded(model, texts[start : start + chunk], cfg, False)
            if store is not None:
                store[start : start + len(part)] = part
            done = min(start + chunk, len(texts))
            if progress and main:
                print(f"encoded {done}/{len(texts)}", flush=True)
            if on_progress is not None:
                on_progress(done, len(texts))
        if store is None:
            return
        store.flush()
        nlist = default_nlist(len(texts))
        pieces = (store[i : i + chunk] for i in range(0, len(texts), chunk))
        Index.build_on_disk(
            pieces,
            data.corpus.ids,
            folder,
            trained_on=training_sample(store, nlist),
            nlist=nlist,
            quantizer="hnsw",
            extra=extra,  # published with the index, in the same rename
        )
    finally:
        del store
        if main:
            scratch.unlink(missing_ok=True)


ENCODER_FILE = "encoder.json"
PROGRESS_CHUNK = 512  # documents encoded between two progress reports


def index_corpus(
    model: Any,
    data: Retrieval,
    cfg: SearchConfig,
    folder: Path,
    *,
    kind: str = "flat",
    on_disk: bool = False,
    encoder_path: str | None = None,
    progress: bool = True,
    on_progress: Progress | None = None,
) -> None:
    """Encode every document of ``data`` with ``model`` and save an index folder (under
    torchrun each rank encodes a shard; rank 0 writes): the FAISS index and its ids, with
    ``encoder.json`` (``encoder_path``, None: the default encoder, the sequence length and the
    model's fingerprint), ``titles.json`` and ``texts.json`` (for the service), published in one
    rename.

    ``on_disk``: for corpora larger than memory, an IVF-PQ whose lists stay on disk
    (:func:`index_on_disk`); otherwise a ``kind`` index in memory. ``on_progress(done,
    total)``: called as the corpus is encoded (then in chunks of :data:`PROGRESS_CHUNK`
    documents), e.g. by the service to show how far a build is.
    """
    encoder = {
        "path": encoder_path,
        "max_seq_length": cfg.model.max_seq_length,
        "runtime": getattr(model, "runtime", "torch"),
        "fingerprint": model_fingerprint(model),
    }
    extra = {
        ENCODER_FILE: json.dumps(encoder),
        "titles.json": json.dumps(dict(zip(data.corpus.ids, data.corpus.titles, strict=True))),
        "texts.json": json.dumps(dict(zip(data.corpus.ids, data.corpus.texts, strict=True))),
    }
    if on_disk:
        index_on_disk(model, data, cfg, folder, extra, progress, on_progress=on_progress)
        return
    vectors = _encode_corpus(model, data.corpus.texts, cfg, progress, on_progress)
    if distributed.is_main():
        Index.build(vectors, data.corpus.ids, kind).save(folder, extra)


def _encode_corpus(
    model: Any, texts: list[str], cfg: SearchConfig, progress: bool, on_progress: Progress | None
) -> np.ndarray:
    """(N, d) unit vectors of ``texts``: in one call, or in chunks reported to
    ``on_progress``."""
    if on_progress is None:
        return encode_sharded(model, texts, cfg, progress, "corpus")
    parts = [np.zeros((0, dimension(model)), np.float32)]
    on_progress(0, len(texts))
    for start in range(0, len(texts), PROGRESS_CHUNK):
        parts.append(encode_sharded(model, texts[start : start + PROGRESS_CHUNK], cfg, False))
        on_progress(min(start + PROGRESS_CHUNK, len(texts)), len(texts))
    return np.concatenate(parts)


def folder_encoder(folder: Path) -> Any:
    """The encoder an index folder's ``encoder.json`` names, loaded and checked against the
    fingerprint recorded there.

    A folder written before fingerprints were recorded loads with a warning (nothing to
    check it against).

    Raises:
        ValueError: naming the file: missing, without ``path`` and ``max_seq_length``, or
            recording another fingerprint than the encoder's at that path now (it changed
            since the index was built: rebuild the index).
    """
    meta = Path(folder) / ENCODER_FILE
    if not meta.is_file():
        raise ValueError(f"{folder} has no {ENCODER_FILE}; build it with tripletkit index")
    try:
        spec = json.loads(meta.read_text(encoding="utf-8"))
        path, max_len = spec["path"], int(spec["max_seq_length"])
        runtime, recorded = spec.get("runtime", "torch"), spec.get("fingerprint")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{meta}: expected {{path, max_seq_length}} ({err})") from None
    if path is not None and not isinstance(path, str):
        raise ValueError(f"{meta}: path must be a folder name or null, got {path!r}")
    if runtime not in RUNTIMES:
        raise ValueError(f"{meta}: runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    model = load_encoder(path, max_len, runtime)
    if recorded is None:
        warnings.warn(
            f"{meta} records no encoder fingerprint (an index built before they were "
            "recorded): whether its encoder changed since cannot be checked; rebuild it with "
            "tripletkit index",
            UserWarning,
            stacklevel=2,
        )
        return model
    current = model_fingerprint(model)
    if current != recorded:
        where = path if path is not None else "the default encoder (all-MiniLM-L6-v2)"
        raise ValueError(
            f"{meta}: the encoder {where} changed since this index was built (fingerprint "
            f"{current}, the index was built with {recorded}); its queries would not match "
            f"the stored vectors: rebuild the index with tripletkit index --out {folder}"
        )
    return model
