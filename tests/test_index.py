import numpy as np
import pytest

from tripletkit.index import Index


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


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
