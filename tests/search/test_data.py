import json

import pytest
from search_fixtures import make_beir

from tripletkit.search.data import Corpus, build_wiki, load_beir, strip_title, write_beir


def test_round_trip(tmp_path):
    data = load_beir(make_beir(tmp_path / "beir"))
    assert len(data.corpus) == 36 and len(data.queries) == 24
    assert set(data.qrels) == {"train", "dev", "test"}
    assert data.split("train")["q0-0"] == {"d0-0": 1, "d0-2": 1}
    assert data.corpus.texts[data.corpus.index["d3-1"]].startswith("the planet number 1")
    with pytest.raises(ValueError, match="no qrels for split 'other'"):
        data.split("other")


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        (
            "corpus.jsonl",
            '{"_id": "a", "text": "x"}\n{not json\n',
            r"corpus.jsonl:2: malformed JSON",
        ),
        ("corpus.jsonl", '{"_id": "a"}\n', r"corpus.jsonl:1: missing key 'text'"),
        (
            "corpus.jsonl",
            '{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n',
            r"corpus.jsonl:2: duplicate document id 'a'",
        ),
        ("queries.jsonl", "[1, 2]\n", r"queries.jsonl:1: expected a JSON object"),
        (
            "qrels/test.tsv",
            "query-id\tcorpus-id\tscore\nq0-0\tnowhere\t1\n",
            r"test.tsv:2: unknown corpus id 'nowhere'",
        ),
        (
            "qrels/test.tsv",
            "query-id\tcorpus-id\tscore\nq99\td0-0\t1\n",
            r"test.tsv:2: unknown query id 'q99'",
        ),
        ("qrels/test.tsv", "q0-0\td0-0\thigh\n", r"test.tsv:1: score must be an integer"),
        ("qrels/test.tsv", "q0-0 d0-0 1\n", r"test.tsv:1: expected query-id<TAB>corpus-id"),
        # issue 10, property tests: damage that used to pass, or fail without file and line
        (
            "corpus.jsonl",
            b'{"_id": "a", "text": "x"}\n{"_id": "b", "text": "caf\xe9"}\n',
            r"corpus.jsonl:2: not valid UTF-8 \(byte 26 of the line\)",
        ),
        ("queries.jsonl", b"\xff\n", r"queries.jsonl:1: not valid UTF-8"),
        ("qrels/test.tsv", b"q0-0\td0-0\t1\nq0-1\td0-\xc3\t1\n", r"test.tsv:2: not valid UTF"),
        ("corpus.jsonl", '{"_id": ["a"], "text": "x"}\n', r"corpus.jsonl:1: '_id' must be a str"),
        ("corpus.jsonl", '{"_id": null, "text": "x"}\n', r"corpus.jsonl:1: '_id' must be a str"),
        ("corpus.jsonl", '{"_id": "", "text": "x"}\n', r"corpus.jsonl:1: '_id' must be non-e"),
        ("corpus.jsonl", '{"_id": "a", "text": 3}\n', r"corpus.jsonl:1: 'text' must be a str"),
        (
            "corpus.jsonl",
            '{"_id": "a", "text": "x", "title": {"t": 1}}\n',
            r"corpus.jsonl:1: 'title' must be a string, got an object",
        ),
        ("queries.jsonl", '{"_id": true, "text": "x"}\n', r"queries.jsonl:1: '_id' must be"),
        ("corpus.jsonl", "", r"corpus.jsonl: no documents"),
        ("queries.jsonl", "\n\n", r"queries.jsonl: no queries"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\n", r"test.tsv: no judgments"),
        (
            "qrels/test.tsv",
            "q10-0\td10-0\t1\nq10-0\td10-0\t2\n",
            r"test.tsv:2: duplicate judgment of query 'q10-0' and document 'd10-0' \(first on "
            r"line 1\)",
        ),
        ("qrels/test.tsv", "q10-0\td10-0\t1_0\n", r"test.tsv:1: score must be an integer"),
        ("qrels/test.tsv", "q10-0\td10-0\t1\textra\n", r"test.tsv:1: .* got 4 column"),
    ],
)
def test_bad_files_name_the_file_and_line(tmp_path, file, content, message):
    root = make_beir(tmp_path / "beir")
    (root / file).write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=message):
        load_beir(root)


def test_crlf_line_ends_a_byte_order_mark_and_integer_ids_load(tmp_path):
    root = make_beir(tmp_path / "beir")
    (root / "corpus.jsonl").write_bytes(
        b'\xef\xbb\xbf{"_id": 7, "text": "seven"}\r\n{"_id": "d0-0", "text": "x"}\r\n'
    )
    (root / "qrels" / "test.tsv").write_bytes(b"query-id\tcorpus-id\tscore\r\nq0-0\t7\t 2\r\n")
    for split in ("train", "dev"):
        (root / "qrels" / f"{split}.tsv").unlink()
    data = load_beir(root)
    assert data.corpus.ids == ["7", "d0-0"] and data.corpus.texts == ["seven", "x"]
    assert data.qrels == {"test": {"q0-0": {"7": 2}}}


@pytest.mark.parametrize("bad", ["", "a\tb", "a\nb", "a\r"])
def test_write_beir_refuses_ids_a_qrels_row_cannot_hold(tmp_path, bad):
    corpus = Corpus([bad], [""], ["text"], {bad: 0})
    with pytest.raises(ValueError, match="cannot be written"):
        write_beir(tmp_path / "beir", corpus, {"q": "query"}, {})


def test_missing_folder_or_file(tmp_path):
    with pytest.raises(ValueError, match="dataset folder not found"):
        load_beir(tmp_path / "nope")
    root = make_beir(tmp_path / "beir")
    (root / "queries.jsonl").unlink()
    with pytest.raises(ValueError, match="missing file: .*queries.jsonl"):
        load_beir(root)


def test_empty_texts_are_reported(tmp_path):
    root = make_beir(tmp_path / "beir")
    with (root / "corpus.jsonl").open("a") as f:
        f.write(json.dumps({"_id": "blank", "title": "", "text": "  "}) + "\n")
    with pytest.warns(UserWarning, match=r"1 empty document\(s\) \['blank'\]"):
        load_beir(root)


def test_strip_title():
    assert strip_title("Mercury (planet)", "Mercury is the smallest planet") == (
        "is the smallest planet"
    )
    assert strip_title("Academy Awards", "The Academy Awards, known as the Oscars") == (
        "known as the Oscars"
    )
    assert strip_title("Actor", "An actor is a person") == "is a person"
    assert strip_title("Zebra", "Horses are not zebras") == "Horses are not zebras"


def test_wiki_every_article_with_the_description_is_relevant(tmp_path):
    data = load_beir(build_wiki(tmp_path / "wiki", seed=0))
    assert len(data.corpus) == 10033 and len(data.queries) == 9290
    splits = [set(data.split(s)) for s in ("train", "dev", "test")]
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])
    assert len(splits[0] | splits[1] | splits[2]) == len(data.queries)
    by_text = {t: q for q, t in data.queries.items()}
    birds = by_text["Family of birds"]
    judged = next(data.split(s)[birds] for s in ("train", "dev", "test") if birds in data.split(s))
    assert len(judged) == 34
    title = data.corpus.titles[data.corpus.index[next(iter(judged))]]
    assert not data.corpus.texts[data.corpus.index[next(iter(judged))]].startswith(title)
