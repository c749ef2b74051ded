"""A FAISS index over L2-normalised embeddings, searched by inner product (= cosine), with the
mapping from FAISS rows to document ids, saved to and loaded from a folder atomically.

Kinds: "flat" (exact, the default), "hnsw" (graph, approximate), "ivfpq" (inverted lists with
product quantisation, trained on the vectors; compact, approximate).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

INDEX_KINDS = ("flat", "hnsw", "ivfpq")


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ValueError("the index needs FAISS: pip install faiss-cpu") from err
    return faiss


@dataclass
class Index:
    """Search ``vectors`` by inner product; results come back as document ids.

    Attributes:
        faiss_index: the FAISS index.
        ids: document id of each FAISS row.
        kind: "flat", "hnsw" or "ivfpq".
        params: build and search parameters (saved with the index).
    """

    faiss_index: Any
    ids: list[str]
    kind: str
    params: dict[str, int]

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: list[str],
        kind: str = "flat",
        *,
        hnsw_m: int = 32,
        ef_search: int = 128,
        nlist: int | None = None,
        pq_m: int | None = None,
        nprobe: int = 16,
        seed: int = 0,
    ) -> Index:
        """Build an index of ``vectors`` (N, d), row i being document ``ids[i]``.

        Args:
            kind: "flat", "hnsw" or "ivfpq".
            hnsw_m: HNSW neighbours per node.
            ef_search: HNSW search breadth.
            nlist: IVF lists (default about 4 sqrt(N)).
            pq_m: PQ sub-quantisers (default d / 8); must divide d. Each takes 8 bits, fewer
                on corpora too small to train 256 centroids.
            nprobe: IVF lists visited per query.
            seed: seed of the IVF-PQ training.
        """
        faiss = _faiss()
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or len(x) != len(ids):
            raise ValueError(
                f"vectors must be (N, d) with N = len(ids) = {len(ids)}, got {x.shape}"
            )
        if kind not in INDEX_KINDS:
            raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {kind!r}")
        n, d = x.shape
        params: dict[str, int] = {}
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 2 * ef_search
            index.hnsw.efSearch = ef_search
            params = {"hnsw_m": hnsw_m, "ef_search": ef_search}
        else:
            nlist = nlist or max(1, min(n // 39, int(4 * np.sqrt(n))))
            pq_m = pq_m or max(1, d // 8)
            if d % pq_m:
                raise ValueError(f"pq_m={pq_m} must divide the dimension {d}")
            # 2^bits centroids per sub-quantiser need about 39 training points each
            bits = int(max(4, min(8, np.floor(np.log2(max(n // 39, 16))))))
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFPQ(quantizer, d, nlist, pq_m, bits, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)
            sample = x[rng.choice(n, size=min(n, 256 * nlist), replace=False)]
            index.train(sample)
            index.nprobe = nprobe
            params = {"nlist": nlist, "pq_m": pq_m, "pq_bits": bits, "nprobe": nprobe}
        index.add(x)
        return cls(index, list(ids), kind, params)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows per query: (Q, k) scores and (Q, k) row numbers (-1 past the end)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        scores, rows = self.faiss_index.search(q, min(k, len(self.ids)))
        return scores, rows

    def search_ids(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """Top-k (document id, score) per query."""
        scores, rows = self.search(queries, k)
        return [
            [(self.ids[r], float(s)) for r, s in zip(row, srow, strict=True) if r >= 0]
            for row, srow in zip(rows, scores, strict=True)
        ]

    def save(self, folder: str | Path, extra: dict[str, str] | None = None) -> Path:
        """Write ``index.faiss``, ``meta.json`` and the ``extra`` files (name -> text) to a
        temporary folder and rename it into place, so a reader never sees half an index."""
        faiss = _faiss()
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            faiss.write_index(self.faiss_index, str(tmp / "index.faiss"))
            meta = {"kind": self.kind, "params": self.params, "ids": self.ids}
            (tmp / "meta.json").write_text(json.dumps(meta))
            for name, text in (extra or {}).items():
                (tmp / name).write_text(text)
            if folder.exists():
                old = folder.with_name(f".{folder.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(folder, old)
                os.replace(tmp, folder)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Index:
        """An index written by :meth:`save`.

        Raises:
            ValueError: naming the folder when a file is missing or does not match.
        """
        faiss = _faiss()
        folder = Path(folder)
        meta_path, index_path = folder / "meta.json", folder / "index.faiss"
        if not meta_path.is_file() or not index_path.is_file():
            raise ValueError(f"no index in {folder} (expected index.faiss and meta.json)")
        meta = json.loads(meta_path.read_text())
        index = faiss.read_index(str(index_path))
        if index.ntotal != len(meta["ids"]):
            raise ValueError(
                f"{folder}: index has {index.ntotal} vectors but {len(meta['ids'])} ids"
            )
        if meta["kind"] == "hnsw":
            index.hnsw.efSearch = meta["params"]["ef_search"]
        elif meta["kind"] == "ivfpq":
            index.nprobe = meta["params"]["nprobe"]
        return cls(index, meta["ids"], meta["kind"], meta["params"])
