import json

import numpy as np
import pytest

from tripletkit.search.index import Index, training_sample


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(autouse=True)
def one_faiss_thread():
    """One FAISS thread unless a test asks for more: the same HNSW graph on every run, and no
    OpenMP threads spinning against each other on a busy machine."""
    faiss = pytest.importorskip("faiss")
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield faiss
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(20, 32))
    docs = unit(centers[rng.integers(0, 20, 3000)] + 0.3 * rng.normal(size=(3000, 32)))
    queries = unit(centers[rng.integers(0, 20, 50)] + 0.3 * rng.normal(size=(50, 32)))
    return docs, queries


def exact_top(docs, queries, k):
    return np.argsort(-(queries @ docs.T), axis=1, kind="stable")[:, :k]


def test_flat_equals_exact_search(vectors):
    docs, queries = vectors
    index = Index.build(docs, [f"d{i}" for i in range(len(docs))])
    scores, rows = index.search(queries, 10)
    expected = exact_top(docs, queries, 10)
    np.testing.assert_allclose(
        scores, np.take_along_axis(queries @ docs.T, expected, 1), rtol=1e-5, atol=1e-5
    )
    assert (rows == expected).mean() > 0.99  # ties at float precision aside
    hits = index.search_ids(queries[:1], 3)[0]
    assert [d for d, _ in hits] == [f"d{r}" for r in rows[0, :3]]


@pytest.mark.parametrize(("kind", "recall"), [("hnsw", 0.95), ("ivfpq", 0.5)])
def test_approximate_indexes_against_exact(vectors, kind, recall):
    docs, queries = vectors
    index = Index.build(docs, [str(i) for i in range(len(docs))], kind, nprobe=8, pq_m=16)
    _, rows = index.search(queries, 10)
    exact = exact_top(docs, queries, 10)
    found = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact, strict=True)])
    assert found >= recall


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_save_load_round_trip(vectors, tmp_path, kind):
    docs, queries = vectors
    ids = [f"doc-{i}" for i in range(len(docs))]
    index = Index.build(docs, ids, kind)
    index.save(tmp_path / "idx", {"note.txt": "hello"})
    index.save(tmp_path / "idx")  # replacing an existing folder
    loaded = Index.load(tmp_path / "idx")
    assert loaded.ids == ids and loaded.kind == kind
    np.testing.assert_array_equal(loaded.search(queries, 5)[1], index.search(queries, 5)[1])
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_errors(tmp_path, vectors):
    docs, _ = vectors
    with pytest.raises(ValueError, match="no index in"):
        Index.load(tmp_path)
    with pytest.raises(ValueError, match="kind must be one of"):
        Index.build(docs, [str(i) for i in range(len(docs))], "lsh")
    with pytest.raises(ValueError, match="N = len"):
        Index.build(docs, ["a"])
    with pytest.raises(ValueError, match="quantizer must be one of"):
        Index.build(docs, [str(i) for i in range(len(docs))], "ivfpq", quantizer="pq")


def recall_at(rows, exact):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(rows, exact, strict=True)])


def test_ivfpq_with_hnsw_quantizer_against_exact(vectors):
    import faiss

    docs, queries = vectors
    ids = [str(i) for i in range(len(docs))]
    index = Index.build(docs, ids, "ivfpq", nprobe=8, pq_m=16, quantizer="hnsw")
    assert isinstance(faiss.downcast_index(index.faiss_index.quantizer), faiss.IndexHNSWFlat)
    assert index.params["quantizer"] == "hnsw" and index.params["ef_search"] == 128
    flat = Index.build(docs, ids, "ivfpq", nprobe=8, pq_m=16)
    exact = exact_top(docs, queries, 10)
    # same lists and codebooks up to the approximate assignment: the recall of the flat
    # quantizer, give or take a few queries
    found = recall_at(index.search(queries, 10)[1], exact)
    assert found >= 0.5 and found >= recall_at(flat.search(queries, 10)[1], exact) - 0.05


def test_save_load_keeps_the_hnsw_quantizer(vectors, tmp_path):
    import faiss

    docs, queries = vectors
    ids = [str(i) for i in range(len(docs))]
    index = Index.build(docs, ids, "ivfpq", quantizer="hnsw", ef_search=40, nprobe=8)
    index.save(tmp_path / "idx")
    loaded = Index.load(tmp_path / "idx")
    coarse = faiss.downcast_index(loaded.faiss_index.quantizer)
    assert loaded.params == index.params and loaded.params["quantizer"] == "hnsw"
    assert isinstance(coarse, faiss.IndexHNSWFlat) and coarse.hnsw.efSearch == 40
    assert loaded.faiss_index.nprobe == 8
    np.testing.assert_array_equal(loaded.search(queries, 5)[1], index.search(queries, 5)[1])


def chunked(docs, size):
    return (docs[i : i + size] for i in range(0, len(docs), size))


@pytest.mark.parametrize("threads", [1, 2])
def test_on_disk_build_equals_the_in_memory_ivfpq(vectors, tmp_path, one_faiss_thread, threads):
    faiss = one_faiss_thread
    docs, queries = vectors
    ids = [f"doc-{i}" for i in range(len(docs))]
    memory = Index.build(docs, ids, "ivfpq", nlist=16, pq_m=16, nprobe=4, seed=3)
    # same training sample, so the same centroids and codebooks (FAISS k-means is seeded and
    # exact here), and the lists filled in the same order: the very same index, on disk

    def chunks():  # trains on one thread, adds on `threads` (2: side by side into the lists)
        faiss.omp_set_num_threads(threads)
        yield from chunked(docs, 700)  # the last chunk is shorter

    disk = Index.build_on_disk(
        chunks(),
        ids,
        tmp_path / "disk",
        trained_on=training_sample(docs, 16, seed=3),
        nlist=16,
        pq_m=16,
        nprobe=4,
    )
    assert disk.params == {**memory.params, "on_disk": 1} and disk.ids == ids
    lists = faiss.downcast_InvertedLists(disk.faiss_index.invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists)
    assert sorted(p.name for p in (tmp_path / "disk").iterdir()) == [
        "index.faiss",
        "lists.ivfdata",
        "meta.json",
    ]
    expected_scores, expected_rows = memory.search(queries, 10)
    for index in (disk, Index.load(tmp_path / "disk")):
        scores, rows = index.search(queries, 10)
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-6)
    disk.save(tmp_path / "copy", {"note.txt": "hello"})  # copies the lists file
    copy = Index.load(tmp_path / "copy")
    np.testing.assert_array_equal(copy.search(queries, 10)[1], expected_rows)
    assert copy.search_ids(queries[:1], 3) == memory.search_ids(queries[:1], 3)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_on_disk_build_errors_leave_no_folder(vectors, tmp_path):
    docs, _ = vectors
    ids = [str(i) for i in range(len(docs))]

    def build(chunks, ids=ids, folder=tmp_path / "idx"):  # trains 4 lists and 4 x 4-bit PQ
        return Index.build_on_disk(chunks, ids, folder, trained_on=docs[:400], nlist=4, pq_m=4)

    with pytest.raises(ValueError, match=r"chunk 1 must be \(n, 32\), got shape \(10, 16\)"):
        build([docs[:10], docs[10:20, :16]])
    with pytest.raises(ValueError, match="chunk 1 brings the vectors to 20, more than the 15"):
        build([docs[:10], docs[10:20]], ids[:15])
    with pytest.raises(ValueError, match="the chunks hold 10 vectors but there are 3000 ids"):
        build([docs[:10]])
    with pytest.raises(ValueError, match="trained_on must be"):
        Index.build_on_disk([docs], ids, tmp_path / "idx", trained_on=docs[:3], nlist=4)
    assert list(tmp_path.iterdir()) == []
    build(chunked(docs, 1000), folder=tmp_path / "kept")
    with pytest.raises(ValueError, match="chunk 0"):  # a failed rebuild keeps the old index
        build([docs[:, :16]], folder=tmp_path / "kept")
    assert Index.load(tmp_path / "kept").faiss_index.ntotal == len(docs)
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]


def test_training_sample_is_seeded_rows_of_the_vectors(vectors):
    docs, _ = vectors
    sample = training_sample(docs, 4, seed=1, per_list=10)
    assert sample.shape == (40, 32) and sample.dtype == np.float32
    np.testing.assert_array_equal(sample, training_sample(docs, 4, seed=1, per_list=10))
    assert {tuple(r) for r in sample} <= {tuple(r) for r in docs}
    assert len(training_sample(docs, 1000)) == len(docs)  # capped at N


def small_on_disk(docs, folder, ids=None, extra=None):
    ids = ids or [str(i) for i in range(len(docs))]
    options = {"extra": extra} if extra else {}
    return Index.build_on_disk(
        chunked(docs, 1000), ids, folder, trained_on=docs[:400], nlist=4, pq_m=4, **options
    )


def test_on_disk_index_republished_in_place_loads_and_keeps_its_extra_files(vectors, tmp_path):
    docs, queries = vectors
    folder = tmp_path / "idx"
    first = small_on_disk(docs, folder, extra={"encoder.json": '{"v": 1}'})
    expected = first.search(queries, 5)[1]
    for version in range(2, 5):  # the folder moves into place each time: lists found there
        small_on_disk(docs, folder, extra={"encoder.json": f'{{"v": {version}}}'})
        again = Index.load(folder)
        np.testing.assert_array_equal(again.search(queries, 5)[1], expected)
        assert (folder / "encoder.json").read_text() == f'{{"v": {version}}}'
    # an index loaded before its folder was replaced (and the old one removed) still searches
    np.testing.assert_array_equal(first.search(queries, 5)[1], expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "encoder.json",
        "index.faiss",
        "lists.ivfdata",
        "meta.json",
    ]
    with pytest.raises(ValueError, match="extra file name 'meta.json'"):
        small_on_disk(docs, folder, extra={"meta.json": "{}"})
    assert Index.load(folder).ids == first.ids


def test_saving_an_on_disk_index_after_its_folder_was_replaced_copies_its_own_lists(
    vectors, tmp_path
):
    docs, queries = vectors
    first = small_on_disk(docs, tmp_path / "idx")
    expected = first.search_ids(queries, 5)
    small_on_disk(docs[::-1].copy(), tmp_path / "idx", ids=[f"r{i}" for i in range(len(docs))])
    first.save(tmp_path / "copy")
    assert Index.load(tmp_path / "copy").search_ids(queries, 5) == expected


def test_load_reads_again_when_the_folder_is_replaced_while_it_reads(
    vectors, tmp_path, monkeypatch
):
    from tripletkit.search import index as index_module

    docs, queries = vectors
    old = Index.build(docs[:100], [f"old{i}" for i in range(100)])
    new = Index.build(docs[100:150], [f"new{i}" for i in range(50)])
    old.save(tmp_path / "idx")
    read = index_module._read

    def read_then_replace(folder):
        result = read(folder)
        if result[1][0] == "old0":
            new.save(tmp_path / "idx")  # replaced after the files of the old one were read
        return result

    monkeypatch.setattr(index_module, "_read", read_then_replace)
    assert Index.load(tmp_path / "idx").ids == new.ids


def _meta(folder, edit):
    """Rewrite ``folder/meta.json`` through ``edit`` (the parsed object -> the new one)."""
    path = folder / "meta.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _without(key):
    return lambda meta: {k: v for k, v in meta.items() if k != key}


def _params(**params):
    return lambda meta: meta | {"params": params}


DAMAGED = {
    "meta.json without kind": (
        "flat",
        lambda f: _meta(f, _without("kind")),
        r"meta\.json: no 'kind'",
    ),
    "meta.json without params": (
        "flat",
        lambda f: _meta(f, _without("params")),
        r"meta\.json: no 'params'",
    ),
    "meta.json without ids": ("flat", lambda f: _meta(f, _without("ids")), r"meta\.json: no 'ids'"),
    "meta.json a list": ("flat", lambda f: (f / "meta.json").write_text("[1, 2]"), "a JSON object"),
    "meta.json not JSON": (
        "flat",
        lambda f: (f / "meta.json").write_text("{kind"),
        "not valid JSON",
    ),
    "meta.json not UTF-8": (
        "flat",
        lambda f: (f / "meta.json").write_bytes(b"\xff\xfe{"),
        "not valid JSON",
    ),
    "an unknown kind": (
        "flat",
        lambda f: _meta(f, lambda m: m | {"kind": "lsh"}),
        r"'kind' must be one of .* got 'lsh'",
    ),
    "ids not a list": (
        "flat",
        lambda f: _meta(f, lambda m: m | {"ids": 5}),
        "'ids' must be a list",
    ),
    "params a list": (
        "flat",
        lambda f: _meta(f, lambda m: m | {"params": [1]}),
        "'params' must be an object",
    ),
    "an hnsw without ef_search": ("hnsw", lambda f: _meta(f, _params()), r"params\.ef_search"),
    "an ivfpq without nprobe": (
        "ivfpq",
        lambda f: _meta(f, _params(quantizer="flat")),
        r"params\.nprobe",
    ),
    "index.faiss garbage": (
        "flat",
        lambda f: (f / "index.faiss").write_bytes(b"garbage" * 10),
        r"index\.faiss: not a readable FAISS index",
    ),
    "index.faiss empty": (
        "flat",
        lambda f: (f / "index.faiss").write_bytes(b""),
        r"index\.faiss: not a readable FAISS index",
    ),
    "index.faiss truncated": (
        "hnsw",
        lambda f: (f / "index.faiss").write_bytes((f / "index.faiss").read_bytes()[:5000]),
        r"index\.faiss: not a readable FAISS index",
    ),
    "index.faiss of another kind": (
        "flat",
        lambda f: _meta(f, lambda m: m | {"kind": "hnsw", "params": {"ef_search": 8}}),
        r"index\.faiss: a FAISS IndexFlatIP, not the 'hnsw' index meta\.json names",
    ),
    "index.faiss of other vectors": (
        "flat",
        lambda f: _meta(f, lambda m: m | {"ids": m["ids"][:-1]}),
        r"index has 300 vectors but 299 ids",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGED))
def test_a_damaged_index_folder_is_a_clear_error_naming_the_file(vectors, tmp_path, damage):
    """Regression (issue 20, item 14): meta.json without a key, an index.faiss of garbage and
    the like raised KeyError, TypeError or FAISS's RuntimeError (a C++ trace) from Index.load,
    a traceback from `tripletkit search` and the service, instead of a ValueError."""
    kind, edit, message = DAMAGED[damage]
    docs, _ = vectors
    folder = tmp_path / "idx"
    Index.build(docs[:300], [f"d{i}" for i in range(300)], kind, nlist=4, pq_m=8).save(folder)
    Index.load(folder)  # whole, it loads
    edit(folder)
    with pytest.raises(ValueError, match=message) as caught:
        Index.load(folder)
    assert str(folder) in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "spec",
    [{"max_seq_length": 32}, {"path": None}, [None, 32], "encoder", None],
    ids=["without path", "without max_seq_length", "a list", "a string", "null"],
)
def test_a_damaged_encoder_json_is_a_clear_error_naming_the_file(tmp_path, spec):
    """encoder.json without path (or otherwise not {path, max_seq_length}) names the file."""
    from tripletkit.search.indexing import ENCODER_FILE, folder_encoder

    (tmp_path / ENCODER_FILE).write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=rf"{ENCODER_FILE}: expected \{{path, max_seq_length\}}"):
        folder_encoder(tmp_path)
