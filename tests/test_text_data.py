import json

import pytest
from search_fixtures import make_beir

from tripletkit.data.text import build_wiki, load_beir, strip_title


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
    ],
)
def test_bad_files_name_the_file_and_line(tmp_path, file, content, message):
    root = make_beir(tmp_path / "beir")
    (root / file).write_text(content)
    with pytest.raises(ValueError, match=message):
        load_beir(root)


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
