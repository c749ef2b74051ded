"""The corpus encodings cache: keyed on the model, its max length and the corpus (issue 10,
item 9), never reused for another."""

import dataclasses

import numpy as np
import pytest
import torch
from search_fixtures import make_beir, tiny_encoder

from tripletkit.cli.settings import load_config
from tripletkit.search import encodings as corpus_encodings
from tripletkit.search.data import load_beir
from tripletkit.search.encoder import encode, load_encoder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return load_beir(make_beir(root / "beir")), tiny_encoder(root)


@pytest.fixture
def encodings(monkeypatch):
    """Counts the corpus encodings actually computed."""
    calls = []
    real = corpus_encodings.encode_sharded

    def counting(*args, **kwargs):
        calls.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(corpus_encodings, "encode_sharded", counting)
    return calls


CFG = load_config(None, ["model.batch_size=16"], task="search")


def other_model(path):
    """The tiny encoder with one weight changed: another model with the same layout."""
    model = load_encoder(path, 32)
    with torch.no_grad():
        model[0].auto_model.embeddings.word_embeddings.weight.mul_(-1.0)
    return model


def test_a_second_model_in_the_same_folder_gets_its_own_vectors(setup, tmp_path):
    data, path = setup
    cache = tmp_path / "corpus.npz"
    a, b = load_encoder(path, 32), other_model(path)
    first = corpus_encodings.corpus_vectors(a, data, CFG, cache, False)
    second = corpus_encodings.corpus_vectors(b, data, CFG, cache, False)
    np.testing.assert_allclose(second, encode(b, data.corpus.texts, 16, False), atol=1e-6)
    assert not np.allclose(first, second, atol=1e-3)


def test_the_same_model_and_corpus_read_the_cache(setup, tmp_path, encodings):
    data, path = setup
    cache = tmp_path / "corpus.npz"
    first = corpus_encodings.corpus_vectors(load_encoder(path, 32), data, CFG, cache, False)
    again = corpus_encodings.corpus_vectors(load_encoder(path, 32), data, CFG, cache, False)
    assert len(encodings) == 1
    np.testing.assert_array_equal(first, again)


def test_another_length_or_corpus_is_recomputed(setup, tmp_path, encodings):
    data, path = setup
    cache = tmp_path / "corpus.npz"
    corpus_encodings.corpus_vectors(load_encoder(path, 32), data, CFG, cache, False)
    short = load_encoder(path, 4)
    vectors = corpus_encodings.corpus_vectors(short, data, CFG, cache, False)
    np.testing.assert_allclose(vectors, encode(short, data.corpus.texts, 16, False), atol=1e-6)
    texts = list(data.corpus.texts)
    texts[5] = "an edited document about violins"
    edited = dataclasses.replace(data, corpus=dataclasses.replace(data.corpus, texts=texts))
    vectors = corpus_encodings.corpus_vectors(short, edited, CFG, cache, False)
    np.testing.assert_allclose(vectors[5], encode(short, texts[5:6], 16, False)[0], atol=1e-6)
    assert len(encodings) == 3


def test_an_unreadable_cache_is_recomputed(setup, tmp_path, encodings):
    data, path = setup
    cache = tmp_path / "corpus.npz"
    cache.write_bytes(b"PK\x03\x04 not really a zip file")
    model = load_encoder(path, 32)
    vectors = corpus_encodings.corpus_vectors(model, data, CFG, cache, False)
    assert vectors.shape == (len(data.corpus), 32) and len(encodings) == 1
    assert (
        corpus_encodings.read_cache(cache, corpus_encodings.cache_key(model, data.corpus))
        is not None
    )


def test_fingerprints_follow_weights_and_content(setup):
    data, path = setup
    a = load_encoder(path, 32)
    assert corpus_encodings.model_fingerprint(a) == corpus_encodings.model_fingerprint(
        load_encoder(path, 32)
    )
    assert corpus_encodings.model_fingerprint(a) != corpus_encodings.model_fingerprint(
        other_model(path)
    )
    assert corpus_encodings.model_fingerprint(a) != corpus_encodings.model_fingerprint(
        load_encoder(path, 16)
    )
    # ids and texts are length-prefixed: moving a character between them changes the hash
    c1 = dataclasses.replace(data.corpus, ids=["ab", "c"], texts=["x", "y"])
    c2 = dataclasses.replace(data.corpus, ids=["a", "bc"], texts=["x", "y"])
    assert corpus_encodings.corpus_fingerprint(c1) != corpus_encodings.corpus_fingerprint(c2)
