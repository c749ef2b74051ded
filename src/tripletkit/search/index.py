"""A FAISS index over L2-normalised embeddings, searched by inner product (= cosine), with the
mapping from FAISS rows to document ids, saved to and loaded from a folder atomically.

Kinds: "flat" (exact, the default), "hnsw" (graph, approximate), "ivfpq" (inverted lists with
product quantisation, trained on a sample of the vectors; compact, approximate). An IVF-PQ
assigns vectors to its lists with a coarse quantizer: "flat" (exact over the list centroids) or
"hnsw" (a graph over the centroids, which keeps assignment fast with tens of thousands of
lists). :meth:`Index.build_on_disk` builds an IVF-PQ whose lists stay in a file, for corpora
larger than memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_folder

INDEX_KINDS = ("flat", "hnsw", "ivfpq")
QUANTIZERS = ("flat", "hnsw")
LISTS_FILE = "lists.ivfdata"  # the inverted lists of an on-disk IVF-PQ, beside index.faiss


def faiss_module() -> Any:
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ValueError("the index needs FAISS: pip install faiss-cpu") from err
    return faiss


def default_nlist(n: int) -> int:
    """IVF lists for ``n`` vectors: about 4 sqrt(n), keeping at least 39 vectors per list."""
    return max(1, min(n // 39, int(4 * np.sqrt(n))))


def training_sample(
    vectors: np.ndarray, nlist: int, seed: int = 0, *, per_list: int = 64
) -> np.ndarray:
    """The seeded sample an IVF-PQ with ``nlist`` lists trains on: min(N, per_list * nlist)
    rows of ``vectors`` (N, d) drawn without replacement, as (S, d) float32. ``vectors`` may be
    a memory-mapped array; only the sampled rows are read. FAISS's k-means warns below 39 points
    per list and subsamples above 256; 64 trains 4x faster than 256 (k-means costs
    S x nlist x d per iteration)."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), size=min(len(vectors), per_list * nlist), replace=False)
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


def _pq_bits(n_train: int) -> int:
    """Bits per PQ sub-quantiser: 8, fewer when ``n_train`` vectors cannot train 2^bits
    centroids with about 39 points each (4 at least)."""
    return int(max(4, min(8, np.floor(np.log2(max(n_train // 39, 16))))))


def _ivfpq_params(
    d: int,
    *,
    nlist: int,
    pq_m: int | None,
    pq_bits: int,
    nprobe: int,
    quantizer: str,
    hnsw_m: int,
    ef_search: int,
) -> dict[str, int | str]:
    """The saved parameters of an IVF-PQ over dimension ``d``, checked."""
    pq_m = pq_m or max(1, d // 8)
    if d % pq_m:
        raise ValueError(f"pq_m={pq_m} must divide the dimension {d}")
    if quantizer not in QUANTIZERS:
        raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {quantizer!r}")
    params: dict[str, int | str] = {
        "nlist": nlist,
        "pq_m": pq_m,
        "pq_bits": pq_bits,
        "nprobe": nprobe,
        "quantizer": quantizer,
    }
    if quantizer == "hnsw":
        params |= {"hnsw_m": hnsw_m, "ef_search": ef_search}
    return params


def _trained_ivfpq(sample: np.ndarray, params: dict[str, Any]) -> Any:
    """An empty IVF-PQ trained on ``sample`` (S, d): spherical k-means for the list centroids
    (assigning with the coarse quantizer itself, as FAISS does: an HNSW quantizer is rebuilt
    over the centroids each iteration), then the PQ codebooks on the residuals."""
    faiss = faiss_module()
    d = sample.shape[1]
    if params["quantizer"] == "hnsw":
        coarse = faiss.IndexHNSWFlat(d, params["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
        # k-means assigns with the search breadth: FAISS's default of 16 builds faster but
        # cost 0.05 of recall@10 in benchmarks/bench_index.py at 100k
        coarse.hnsw.efSearch = params["ef_search"]
    else:
        coarse = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFPQ(
        coarse, d, params["nlist"], params["pq_m"], params["pq_bits"], faiss.METRIC_INNER_PRODUCT
    )
    index.train(sample)
    return index


def _set_search_params(index: Any, kind: str, params: dict[str, Any]) -> None:
    """Search breadth from ``params``: efSearch of an HNSW (or of an HNSW coarse quantizer),
    nprobe of an IVF."""
    if kind == "hnsw":
        index.hnsw.efSearch = params["ef_search"]
    elif kind == "ivfpq":
        index.nprobe = params["nprobe"]
        if params.get("quantizer") == "hnsw":
            faiss_module().downcast_index(index.quantizer).hnsw.efSearch = params["ef_search"]


def _add_chunks(index: Any, chunks: Iterable[np.ndarray], n_ids: int) -> None:
    """Add each (n_i, d) chunk in order.

    Raises:
        ValueError: naming the chunk whose shape is not (n_i, d) or which brings more vectors
            than ``n_ids``; or when the chunks end with fewer than ``n_ids`` vectors.
    """
    for i, chunk in enumerate(chunks):
        x = np.ascontiguousarray(chunk, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != index.d:
            raise ValueError(f"chunk {i} must be (n, {index.d}), got shape {x.shape}")
        if index.ntotal + len(x) > n_ids:
            raise ValueError(
                f"chunk {i} brings the vectors to {index.ntotal + len(x)}, more than the "
                f"{n_ids} ids"
            )
        index.add(x)
    if index.ntotal != n_ids:
        raise ValueError(f"the chunks hold {index.ntotal} vectors but there are {n_ids} ids")


def _add_on_disk(index: Any, chunks: Iterable[np.ndarray], n_ids: int, folder: Path) -> None:
    """Add ``chunks`` to the trained, empty IVF ``index`` with its lists in files of ``folder``:
    appended to a growing file (each list doubling its space when full), then copied list after
    list into a compact ``LISTS_FILE``, which the index keeps."""
    faiss = faiss_module()
    growing_path = folder / "adding.ivfdata"
    growing = faiss.OnDiskInvertedLists(index.nlist, index.code_size, str(growing_path))
    index.replace_invlists(growing, True)
    growing.this.disown()  # owned by the index now
    _add_chunks(index, chunks, n_ids)
    compact = faiss.OnDiskInvertedLists(index.nlist, index.code_size, str(folder / LISTS_FILE))
    sources = faiss.InvertedListsPtrVector()
    sources.push_back(index.invlists)
    compact.merge_from_multiple(sources.data(), sources.size())
    index.replace_invlists(compact, True)  # frees the growing lists
    compact.this.disown()
    growing_path.unlink()


@dataclass
class Index:
    """Search ``vectors`` by inner product; results come back as document ids.

    Attributes:
        faiss_index: the FAISS index.
        ids: document id of each FAISS row.
        kind: "flat", "hnsw" or "ivfpq".
        params: build and search parameters (saved with the index); an IVF-PQ's include
            "quantizer" ("flat" or "hnsw") and, when its lists are on disk, "on_disk": 1.
    """

    faiss_index: Any
    ids: list[str]
    kind: str
    params: dict[str, int | str]

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
        quantizer: str = "flat",
        seed: int = 0,
    ) -> Index:
        """Build an index of ``vectors`` (N, d), row i being document ``ids[i]``.

        Args:
            kind: "flat", "hnsw" or "ivfpq".
            hnsw_m: HNSW neighbours per node (of the "hnsw" index, or of an HNSW quantizer).
            ef_search: HNSW search breadth (likewise).
            nlist: IVF lists (default about 4 sqrt(N), see :func:`default_nlist`).
            pq_m: PQ sub-quantisers (default d / 8); must divide d. Each takes 8 bits, fewer
                on corpora too small to train 256 centroids.
            nprobe: IVF lists visited per query.
            quantizer: IVF coarse quantizer, "flat" or "hnsw".
            seed: seed of the IVF-PQ training sample (:func:`training_sample`).
        """
        faiss = faiss_module()
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or len(x) != len(ids):
            raise ValueError(
                f"vectors must be (N, d) with N = len(ids) = {len(ids)}, got {x.shape}"
            )
        if kind not in INDEX_KINDS:
            raise ValueError(f"index kind must be one of {INDEX_KINDS}, got {kind!r}")
        n, d = x.shape
        params: dict[str, int | str] = {}
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 2 * ef_search
            params = {"hnsw_m": hnsw_m, "ef_search": ef_search}
        else:
            nlist = nlist or default_nlist(n)
            sample = training_sample(x, nlist, seed)
            params = _ivfpq_params(
                d,
                nlist=nlist,
                pq_m=pq_m,
                pq_bits=_pq_bits(len(sample)),
                nprobe=nprobe,
                quantizer=quantizer,
                hnsw_m=hnsw_m,
                ef_search=ef_search,
            )
            index = _trained_ivfpq(sample, params)
        _set_search_params(index, kind, params)
        index.add(x)
        return cls(index, list(ids), kind, params)

    @classmethod
    def build_on_disk(
        cls,
        chunks: Iterable[np.ndarray],
        ids: list[str],
        folder: str | Path,
        *,
        trained_on: np.ndarray,
        nlist: int | None = None,
        pq_m: int | None = None,
        pq_bits: int | None = None,
        nprobe: int = 16,
        quantizer: str = "flat",
        hnsw_m: int = 32,
        ef_search: int = 128,
        extra: dict[str, str] | None = None,
    ) -> Index:
        """Build an IVF-PQ in ``folder`` whose inverted lists stay on disk, for corpora larger
        than memory, and return it loaded from there.

        Trains on ``trained_on`` (S, d), held in memory (e.g. :func:`training_sample` of a
        memory-mapped array), then adds ``chunks``, each (n_i, d), in order: row j of their
        concatenation is document ``ids[j]``. The codes (pq_m bytes and an 8-byte row number
        per vector at 8 bits) go to FAISS ``OnDiskInvertedLists`` in ``folder/lists.ivfdata``,
        so memory holds about one chunk, the coarse quantizer and the PQ codebooks (plus
        ``ids`` and ``trained_on``). The folder is written like :meth:`save` (a temporary
        folder swapped into place, ``extra`` files included; nothing is left behind on
        failure), and :meth:`load` memory-maps the lists. Given
        ``training_sample(vectors, nlist, seed)`` and the same options, the result equals
        ``Index.build(vectors, ids, "ivfpq", ...)``.

        Args:
            nlist: IVF lists (default from len(ids), see :func:`default_nlist`).
            pq_bits: bits per PQ sub-quantiser (default 8, fewer when ``trained_on`` is small).
            extra: further files (name -> text) published in the folder with the index.
            Others: as in :meth:`build`.

        Raises:
            ValueError: naming the argument or the chunk: ``trained_on`` not (S, d) with
                S >= nlist, a chunk not (n_i, d), or chunks holding more or fewer vectors than
                ``ids``.
        """
        train = np.ascontiguousarray(trained_on, dtype=np.float32)
        nlist = nlist or default_nlist(len(ids))
        if train.ndim != 2 or len(train) < nlist:
            raise ValueError(
                f"trained_on must be (S, d) with S >= nlist = {nlist}, got {train.shape}"
            )
        params = _ivfpq_params(
            train.shape[1],
            nlist=nlist,
            pq_m=pq_m,
            pq_bits=pq_bits or _pq_bits(len(train)),
            nprobe=nprobe,
            quantizer=quantizer,
            hnsw_m=hnsw_m,
            ef_search=ef_search,
        ) | {"on_disk": 1}
        index = _trained_ivfpq(train, params)
        _set_search_params(index, "ivfpq", params)
        with atomic_folder(folder) as tmp:
            _add_on_disk(index, chunks, len(ids), tmp)
            _write_files(tmp, index, {"kind": "ivfpq", "params": params, "ids": list(ids)}, extra)
            del index  # unmaps the lists before the folder moves
        return cls.load(folder)

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
        temporary folder and swap it into place (:func:`tripletkit._io.atomic_folder`), so a
        reader finds the complete old or the complete new index, never half of one. An index
        with its lists on disk copies its ``lists.ivfdata`` too (from its memory map, which
        stays the lists it was loaded with even when its folder has been replaced since)."""
        with atomic_folder(folder) as tmp:
            if self.params.get("on_disk"):
                lists = faiss_module().downcast_InvertedLists(self.faiss_index.invlists)
                faiss_module().rev_swig_ptr(lists.ptr, lists.totsize).tofile(tmp / LISTS_FILE)
            meta = {"kind": self.kind, "params": self.params, "ids": self.ids}
            _write_files(tmp, self.faiss_index, meta, extra)
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path) -> Index:
        """An index written by :meth:`save` or :meth:`build_on_disk` (whose lists are then
        memory-mapped from ``lists.ivfdata``, not read into memory). Its files come from one
        version of the folder: when the folder is replaced while they are read, they are read
        again.

        Raises:
            ValueError: naming the folder when a file is missing or does not match.
        """
        folder = Path(folder).resolve()
        for _ in range(_LOAD_TRIES - 1):
            before = _identity(folder)
            index = _read(folder)
            if _identity(folder) == before:
                break
        else:
            index = _read(folder)  # replaced on every try: a last one, whatever comes
        return cls(*index)


_LOAD_TRIES = 5


def _identity(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of ``folder``: another value once it has been replaced."""
    try:
        stat = folder.stat()
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def _write_files(tmp: Path, index: Any, meta: dict[str, Any], extra: dict[str, str] | None) -> None:
    """``index.faiss``, ``meta.json`` and the ``extra`` files (name -> text) into ``tmp``."""
    faiss_module().write_index(index, str(tmp / "index.faiss"))
    (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    for name, text in (extra or {}).items():
        if Path(name).name != name or name in ("index.faiss", "meta.json", LISTS_FILE):
            raise ValueError(f"extra file name {name!r} must be a plain name, not an index file")
        (tmp / name).write_text(text, encoding="utf-8")


def _read(folder: Path) -> tuple[Any, list[str], str, dict[str, Any]]:
    """(FAISS index, ids, kind, params) from the files of ``folder``.

    Raises:
        ValueError: naming the file: missing; ``meta.json`` not JSON or without a valid
            ``kind``, ``params`` or ``ids``; ``index.faiss`` not a FAISS index, another kind of
            index than ``meta.json`` says, or holding another number of vectors than ids.
    """
    faiss = faiss_module()
    meta_path, index_path = folder / "meta.json", folder / "index.faiss"
    if not meta_path.is_file() or not index_path.is_file():
        raise ValueError(f"no index in {folder} (expected index.faiss and meta.json)")
    kind, params, ids = _read_meta(meta_path)
    flags = 0
    if params.get("on_disk"):
        if not (folder / LISTS_FILE).is_file():
            raise ValueError(f"{folder}: the index keeps its lists in {LISTS_FILE}, missing")
        flags = faiss.IO_FLAG_ONDISK_SAME_DIR
    try:
        index = faiss.read_index(str(index_path), flags)
    except RuntimeError as err:  # FAISS reports a damaged file as a C++ exception
        reason = str(err).strip().splitlines()[-1][-200:] if str(err).strip() else "unreadable"
        raise ValueError(
            f"{index_path}: not a readable FAISS index ({reason}); rebuild it with tripletkit index"
        ) from None
    expected = {"flat": faiss.IndexFlat, "hnsw": faiss.IndexHNSW, "ivfpq": faiss.IndexIVFPQ}[kind]
    if not isinstance(index, expected):
        raise ValueError(
            f"{index_path}: a FAISS {type(index).__name__}, not the {kind!r} index "
            f"{meta_path.name} names"
        )
    if index.ntotal != len(ids):
        raise ValueError(
            f"{folder}: index has {index.ntotal} vectors but {len(ids)} ids "
            f"({index_path.name} and {meta_path.name} do not match)"
        )
    _set_search_params(index, kind, params)
    return index, ids, kind, params


# the search parameters each kind reads from meta.json's "params" (integers)
_SEARCH_PARAMS = {"flat": (), "hnsw": ("ef_search",), "ivfpq": ("nprobe",)}


def _read_meta(path: Path) -> tuple[str, dict[str, Any], list[str]]:
    """(kind, params, ids) of ``meta.json``, checked.

    Raises:
        ValueError: naming ``path`` and the key at fault.
    """
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:  # not JSON, or not UTF-8
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object with kind, params and ids")
    missing = [key for key in ("kind", "params", "ids") if key not in meta]
    if missing:
        raise ValueError(f"{path}: no {', '.join(map(repr, missing))} (expected kind, params, ids)")
    kind, params, ids = meta["kind"], meta["params"], meta["ids"]
    if kind not in INDEX_KINDS:
        raise ValueError(f"{path}: 'kind' must be one of {INDEX_KINDS}, got {kind!r}")
    if not isinstance(params, dict):
        raise ValueError(f"{path}: 'params' must be an object, got {params!r}")
    needed = list(_SEARCH_PARAMS[kind])
    if kind == "ivfpq" and params.get("quantizer") == "hnsw":
        needed.append("ef_search")
    for key in needed:
        value = params.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"{path}: a {kind!r} index needs params.{key}, an integer >= 1, got {value!r}"
            )
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValueError(f"{path}: 'ids' must be a list of document id strings")
    return kind, params, ids
