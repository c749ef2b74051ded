"""Index folders of a corpus for ``tripletkit index`` and the service: the corpus encoded
(sharded over the ranks under torchrun) into a FAISS index, in memory or with its inverted
lists on disk, saved with its ids, titles, texts and encoder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .. import distributed
from .config import SearchConfig
from .data import Retrieval
from .encoder import dimension, load_encoder
from .encodings import encode_sharded
from .index import Index, default_nlist, training_sample


def index_on_disk(
    model: Any,
    data: Retrieval,
    cfg: SearchConfig,
    folder: Path,
    extra: dict[str, str],
    progress: bool,
    chunk: int = 16384,
) -> None:
    """An IVF-PQ (HNSW quantizer) of the corpus with its lists on disk, for corpora larger than
    memory: the corpus is encoded ``chunk`` texts at a time (sharded over the ranks) into a
    memory-mapped .npy beside ``folder``, which then feeds the training sample and the chunked
    build; rank 0 writes. The ``extra`` files (name -> text) are written into the index's
    temporary folder, so the folder appears complete with them or not at all. Memory holds a
    chunk, the sample and the ids."""

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
            if progress and main:
                print(f"encoded {min(start + chunk, len(texts))}/{len(texts)}", flush=True)
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
) -> None:
    """Encode every document of ``data`` with ``model`` and save an index folder (under
    torchrun each rank encodes a shard; rank 0 writes): the FAISS index and its ids, with
    ``encoder.json`` (``encoder_path``, None: the default encoder, and the sequence length),
    ``titles.json`` and ``texts.json`` (for the service), published in one rename.

    ``on_disk``: for corpora larger than memory, an IVF-PQ whose lists stay on disk
    (:func:`index_on_disk`); otherwise a ``kind`` index in memory.
    """
    encoder = {"path": encoder_path, "max_seq_length": cfg.model.max_seq_length}
    extra = {
        ENCODER_FILE: json.dumps(encoder),
        "titles.json": json.dumps(dict(zip(data.corpus.ids, data.corpus.titles, strict=True))),
        "texts.json": json.dumps(dict(zip(data.corpus.ids, data.corpus.texts, strict=True))),
    }
    if on_disk:
        index_on_disk(model, data, cfg, folder, extra, progress)
        return
    vectors = encode_sharded(model, data.corpus.texts, cfg, progress, "corpus")
    if distributed.is_main():
        Index.build(vectors, data.corpus.ids, kind).save(folder, extra)


def folder_encoder(folder: Path) -> Any:
    """The encoder an index folder's ``encoder.json`` names, loaded.

    Raises:
        ValueError: naming the file: missing, or without ``path`` and ``max_seq_length``.
    """
    meta = Path(folder) / ENCODER_FILE
    if not meta.is_file():
        raise ValueError(f"{folder} has no {ENCODER_FILE}; build it with tripletkit index")
    try:
        spec = json.loads(meta.read_text(encoding="utf-8"))
        path, max_len = spec["path"], int(spec["max_seq_length"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{meta}: expected {{path, max_seq_length}} ({err})") from None
    return load_encoder(path, max_len)
