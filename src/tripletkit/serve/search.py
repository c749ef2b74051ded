"""Search for the service: an index folder written by ``tripletkit index``, loaded once, and
the text encoder, with the queries of concurrent requests encoded together.

Snippets come from ``texts.json`` (document id -> text) in the index folder when it is there;
otherwise they are None and :attr:`SearchService.snippet_note` says what is missing.

An index folder that does not exist yet can be built by the service itself (:class:`IndexBuild`,
``tripletkit serve --build-index wiki``), in the background, reporting how far it is: what
``tripletkit index`` would write, published atomically, then loaded as any other.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..search.config import EncoderConfig, SearchConfig, TextDataConfig
from ..search.data import load_data
from ..search.encoder import encode, load_encoder
from ..search.index import Index
from ..search.indexing import folder_encoder, index_corpus

SNIPPET_CHARS = 240
TEXTS_FILE = "texts.json"
Encode = Callable[[list[str]], np.ndarray]  # texts -> (n, d) unit float32
Report = Callable[[str, int | None, int | None], None]  # (what is being done, done, total)


@dataclass(frozen=True)
class IndexBuild:
    """What to build into the index folder when it holds no index yet (as ``tripletkit index
    --data DATA --model ENCODER --out FOLDER`` would).

    Attributes:
        data: "wiki" (built from the Wikipedia summaries into ``cache`` on first use) or a
            BEIR folder.
        encoder: a sentence-transformers folder; None: all-MiniLM-L6-v2.
        cache: where "wiki" is built.
    """

    data: str = "wiki"
    encoder: str | None = None
    cache: str = "runs/data"


def has_index(folder: Path) -> bool:
    """Whether ``folder`` holds an index (its ``meta.json``, written last by ``Index.save``
    into a folder published whole)."""
    return (Path(folder) / "meta.json").is_file()


def build_index(folder: Path, spec: IndexBuild, report: Report) -> None:
    """Build the index folder ``spec`` describes at ``folder``, telling ``report`` what it is
    doing: ("preparing the corpus", None, None), ("loading the encoder", ...), then
    ("encoding the corpus", done, total) as documents are encoded."""
    cfg = SearchConfig(
        data=TextDataConfig(source=spec.data, cache=spec.cache),
        model=EncoderConfig(path=spec.encoder),
    )
    report("preparing the corpus", None, None)
    data = load_data(cfg)
    report("loading the encoder", None, None)
    model = load_encoder(cfg.model.path, cfg.model.max_seq_length, cfg.model.runtime)
    index_corpus(
        model,
        data,
        cfg,
        Path(folder),
        encoder_path=str(Path(spec.encoder).resolve()) if spec.encoder else None,
        progress=False,
        on_progress=lambda done, total: report("encoding the corpus", done, total),
    )


@dataclass(frozen=True)
class Hit:
    """One result: document id, title ("" when unknown), inner-product score, snippet."""

    id: str
    title: str
    score: float
    snippet: str | None


class Batcher:
    """Runs ``fn`` on the lists of texts submitted from many threads, joined into one call.

    A worker thread takes every request waiting (up to ``max_batch`` texts), calls ``fn`` once
    on them all and hands each caller its rows: under concurrent load the encoder sees one
    batch instead of many single queries.
    """

    def __init__(self, fn: Encode, max_batch: int = 64) -> None:
        self._fn = fn
        self._max = max_batch
        self._queue: queue.Queue[tuple[list[str], Future[np.ndarray]] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="search-batcher", daemon=True)
        self._thread.start()

    def __call__(self, texts: list[str]) -> np.ndarray:
        """(n, d) rows of ``fn(texts)``; raises what ``fn`` raised, or RuntimeError once
        closed (instead of waiting forever for a worker that has stopped)."""
        future: Future[np.ndarray] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the search encoder has been closed")
            self._queue.put((texts, future))
        return future.result()

    def close(self) -> None:
        """Stop the worker after the requests already queued."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = [first], False
            size = len(first[0])
            while size < self._max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
                size += len(item[0])
            self._answer(batch)
            if stop:
                return

    def _answer(self, batch: list[tuple[list[str], Future[np.ndarray]]]) -> None:
        """One call for the whole batch; if it fails, one call per request, so that a request
        the encoder cannot take fails alone."""
        texts = [t for item, _ in batch for t in item]
        try:
            vectors = self._fn(texts)
        except Exception as err:
            if len(batch) > 1:
                for one in batch:
                    self._answer([one])
            else:
                batch[0][1].set_exception(err)
            return
        start = 0
        for item, future in batch:
            future.set_result(vectors[start : start + len(item)])
            start += len(item)


class SearchService:
    """An index, its titles and texts, and the query encoder.

    Args:
        index: the loaded index.
        encode: texts -> (n, d) unit embeddings (batched across threads here).
        titles: document id -> title.
        texts: document id -> text, for snippets; None when the folder has none.
    """

    def __init__(
        self,
        index: Index,
        encode: Encode,
        titles: dict[str, str],
        texts: dict[str, str] | None = None,
        max_batch: int = 64,
    ) -> None:
        self.index = index
        self.titles = titles
        self.texts = texts
        self._batcher = Batcher(encode, max_batch)
        self.snippet_note = (
            None
            if texts is not None
            else f"the index folder has no {TEXTS_FILE} (document id -> text), so results have "
            "no snippets"
        )

    @classmethod
    def from_folder(cls, folder: str | Path, encode: Encode | None = None) -> SearchService:
        """Load an index folder written by ``tripletkit index`` and its encoder.

        Args:
            folder: the index folder (``index.faiss``, ``meta.json``, ``encoder.json``,
                ``titles.json``, optionally ``texts.json``).
            encode: a query encoder to use instead of the one ``encoder.json`` names.

        Raises:
            ValueError: naming the folder or file that is missing or malformed.
        """
        folder = Path(folder)
        index = Index.load(folder)
        if encode is None:
            encode = _folder_encoder(folder)
        titles = _json_map(folder / "titles.json") or {}
        return cls(index, encode, titles, _json_map(folder / TEXTS_FILE))

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        """The top ``k`` documents of each query, best first."""
        vectors = self._batcher(queries)
        hits = self.index.search_ids(vectors, k)
        return [[self._hit(doc, score) for doc, score in row] for row in hits]

    def close(self) -> None:
        self._batcher.close()

    def _hit(self, doc: str, score: float) -> Hit:
        text = self.texts.get(doc) if self.texts is not None else None
        return Hit(doc, self.titles.get(doc, ""), score, snippet(text) if text else None)


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    """The start of ``text``, whitespace collapsed, cut at a word boundary, with "…" when cut."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat[:limit].rsplit(" ", 1)[0] or flat[:limit]
    return cut + "…"


def _folder_encoder(folder: Path) -> Encode:
    """The encoder ``encoder.json`` names, as an :data:`Encode`."""
    model = folder_encoder(folder)
    return lambda texts: encode(model, texts, progress=False)


def _json_map(path: Path) -> dict[str, str] | None:
    """A JSON object of strings, or None when the file is absent."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of id -> text")
    return {str(k): str(v) for k, v in data.items()}
