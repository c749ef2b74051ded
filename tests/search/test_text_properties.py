"""Property tests of the BEIR loader (issue 10): random valid folders load to what was written;
random damage (truncated lines, bad UTF-8, unknown ids, duplicates, missing fields, wrong types,
empty files) is a ValueError naming the file and the line."""

from __future__ import annotations

import json
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tripletkit.search.data import Corpus, load_beir, write_beir

# ids: any text a qrels row can hold (no tab or line break), surrogates excluded (not UTF-8)
ID_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r")
IDS = st.text(ID_CHARS, min_size=1, max_size=6)
TEXTS = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


@dataclass
class Dataset:
    corpus: Corpus
    queries: dict[str, str]
    qrels: dict[str, dict[str, dict[str, int]]]


@st.composite
def datasets(draw: st.DrawFn, ids: st.SearchStrategy[str] = IDS) -> Dataset:
    """A valid BEIR dataset: 1-6 documents, 1-4 queries, 1-3 splits of at least one judgment."""
    doc_ids = draw(st.lists(ids, min_size=1, max_size=6, unique=True))
    titles = draw(st.lists(TEXTS, min_size=len(doc_ids), max_size=len(doc_ids)))
    texts = draw(st.lists(TEXTS, min_size=len(doc_ids), max_size=len(doc_ids)))
    query_ids = draw(st.lists(ids, min_size=1, max_size=4, unique=True))
    queries = {q: draw(TEXTS) for q in query_ids}
    splits = draw(st.lists(st.sampled_from(["train", "dev", "test"]), min_size=1, unique=True))
    judgment = st.tuples(st.sampled_from(query_ids), st.sampled_from(doc_ids), st.integers(-2, 3))
    qrels: dict[str, dict[str, dict[str, int]]] = {}
    for split in splits:
        rows = draw(st.lists(judgment, min_size=1, max_size=6, unique_by=lambda r: r[:2]))
        for q, d, s in rows:
            qrels.setdefault(split, {}).setdefault(q, {})[d] = s
    corpus = Corpus(doc_ids, titles, texts, {d: i for i, d in enumerate(doc_ids)})
    return Dataset(corpus, queries, qrels)


def load_quietly(root: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # empty texts are reported, not errors
        return load_beir(root)


@settings(max_examples=80, deadline=None)
@given(data=datasets())
def test_valid_folders_load_to_what_was_written(data):
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_quietly(write_beir(Path(tmp) / "beir", data.corpus, data.queries, data.qrels))
    assert loaded.corpus.ids == data.corpus.ids
    assert loaded.corpus.titles == data.corpus.titles
    assert loaded.corpus.texts == data.corpus.texts
    assert loaded.corpus.index == data.corpus.index
    assert list(loaded.queries.items()) == list(data.queries.items())
    assert loaded.qrels == data.qrels


# ---- damage ---------------------------------------------------------------------------------

# plain ids keep the damaged rows easy to reason about; the texts stay arbitrary Unicode
PLAIN_IDS = st.text("abcxyz019-_", min_size=1, max_size=5)
# bytes that make any line invalid UTF-8 wherever they are inserted: a byte never valid, a lead
# byte whose sequence the next byte cannot continue, a continuation byte in excess
BAD_BYTES = [b"\xff", b"\xfe", b"\xc3", b"\xe2\x82", b"\x80"]
WRONG_ID = [1.5, True, None, [], ["a"], {"a": 1}, ""]
WRONG_TEXT = [3, 1.5, False, ["x"], {"t": "x"}]
JSONL_DAMAGE = ["truncate", "bad_utf8", "duplicate", "missing", "wrong_type", "not_object"]
QRELS_DAMAGE = [
    "truncate",
    "bad_utf8",
    "duplicate",
    "unknown_query",
    "unknown_doc",
    "bad_score",
    "columns",
]


@dataclass
class Damage:
    file: str  # relative to the folder
    line: int | None  # the line the error must name (None: the file as a whole)


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]  # every file ends with a newline


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def damage_jsonl(draw: st.DrawFn, path: Path) -> int:
    """Damage one record line of a JSONL file; return the line the error must name."""
    lines = lines_of(path)
    i = draw(st.integers(0, len(lines) - 1))
    kind = draw(st.sampled_from(JSONL_DAMAGE))
    line = lines[i]
    if kind == "truncate":  # the file ends inside the line: a crash mid-write
        cut = draw(st.integers(1, len(line) - 1))
        path.write_bytes(b"".join(x + b"\n" for x in lines[:i]) + line[:cut])
        return i + 1
    if kind == "bad_utf8":
        at = draw(st.integers(0, len(line)))
        lines[i] = line[:at] + draw(st.sampled_from(BAD_BYTES)) + line[at:]
    elif kind == "duplicate":
        lines.insert(i + 1, line)
        write_lines(path, lines)
        return i + 2
    elif kind == "missing":
        record = json.loads(line)
        del record[draw(st.sampled_from(["_id", "text"]))]
        lines[i] = json.dumps(record).encode()
    elif kind == "wrong_type":
        record = json.loads(line)
        key = draw(st.sampled_from(["_id", "text", "title"] if "title" in record else ["_id"]))
        record[key] = draw(st.sampled_from(WRONG_ID if key == "_id" else WRONG_TEXT))
        lines[i] = json.dumps(record).encode()
    else:
        lines[i] = draw(st.sampled_from([b"[1, 2]", b'"text"', b"3", b"null"]))
    write_lines(path, lines)
    return i + 1


def damage_qrels(draw: st.DrawFn, path: Path) -> int:
    """Damage one judgment row (line 2 on; line 1 is the header); return the line to name."""
    lines = lines_of(path)
    i = draw(st.integers(1, len(lines) - 1))
    kind = draw(st.sampled_from(QRELS_DAMAGE))
    line = lines[i]
    qid, doc, score = line.split(b"\t")
    if kind == "truncate":  # the file ends inside the row, before its last column
        cut = draw(st.integers(1, len(qid) + 1 + len(doc)))
        path.write_bytes(b"".join(x + b"\n" for x in lines[:i]) + line[:cut])
        return i + 1
    if kind == "bad_utf8":
        at = draw(st.integers(0, len(line)))
        lines[i] = line[:at] + draw(st.sampled_from(BAD_BYTES)) + line[at:]
    elif kind == "duplicate":
        lines.insert(i + 1, b"\t".join([qid, doc, b"1"]))
        write_lines(path, lines)
        return i + 2
    elif kind == "unknown_query":
        lines[i] = b"\t".join([b"unknown:" + qid, doc, score])
    elif kind == "unknown_doc":
        lines[i] = b"\t".join([qid, doc + b":unknown", score])
    elif kind == "bad_score":
        lines[i] = b"\t".join(
            [qid, doc, draw(st.sampled_from([b"", b"1.5", b"x", b"1e3", b"--1"]))]
        )
    else:
        lines[i] = draw(st.sampled_from([line + b"\t1", b"\t".join([qid, doc])]))
    write_lines(path, lines)
    return i + 1


@st.composite
def damaged(draw: st.DrawFn, root: Path) -> Damage:
    """Write a valid dataset to ``root``, then damage one of its files."""
    data = draw(datasets(PLAIN_IDS))
    write_beir(root, data.corpus, data.queries, data.qrels)
    files = ["corpus.jsonl", "queries.jsonl", *(f"qrels/{s}.tsv" for s in data.qrels)]
    file = draw(st.sampled_from(files))
    path = root / file
    if draw(st.integers(0, 9)) == 0:  # empty, or (qrels) the header alone
        path.write_bytes(b"query-id\tcorpus-id\tscore\n" if file.startswith("qrels") else b"")
        return Damage(file, None)
    if file.endswith(".jsonl"):
        return Damage(file, damage_jsonl(draw, path))
    return Damage(file, damage_qrels(draw, path))


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_damaged_files_are_errors_naming_file_and_line(data):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "beir"
        damage = data.draw(damaged(root))
        where = re.escape(str(root / damage.file))
        where += f":{damage.line}: " if damage.line is not None else ": "
        with pytest.raises(ValueError, match=f"^{where}"):
            load_quietly(root)
