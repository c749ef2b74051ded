"""Index folders: what encoder.json records (the encoder's fingerprint), the refusal of an
index whose encoder changed since it was built, and the build's progress reports."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from search_fixtures import make_beir, tiny_encoder

from tripletkit.search.config import EncoderConfig, SearchConfig
from tripletkit.search.data import load_beir
from tripletkit.search.encoder import encode, load_encoder
from tripletkit.search.encodings import model_fingerprint
from tripletkit.search.indexing import ENCODER_FILE, folder_encoder, index_corpus

CFG = SearchConfig(model=EncoderConfig(max_seq_length=32, batch_size=16))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny BEIR corpus, a tiny encoder at a path of its own, and an index of the corpus."""
    root = tmp_path_factory.mktemp("indexing")
    beir = make_beir(root / "beir")
    encoder = tiny_encoder(root)
    return root, beir, encoder


def build(root, beir, encoder, name="index", **kwargs):
    folder = root / name
    model = load_encoder(encoder, 32)
    index_corpus(model, load_beir(beir), CFG, folder, encoder_path=str(encoder), progress=False,
                 **kwargs)  # fmt: skip
    return folder, model


def retrain_in_place(path) -> None:
    """What retraining the model at ``path`` does to it: other weights, same folder."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")
    with torch.no_grad():
        next(iter(model.parameters())).add_(0.01)
    model.save(str(path))


def test_encoder_json_records_the_encoders_fingerprint(built):
    root, beir, encoder = built
    folder, model = build(root, beir, encoder)
    spec = json.loads((folder / ENCODER_FILE).read_text())
    assert spec["path"] == str(encoder) and spec["max_seq_length"] == 32
    assert spec["fingerprint"] == model_fingerprint(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unchanged encoder loads without a word
        loaded = folder_encoder(folder)
    assert model_fingerprint(loaded) == spec["fingerprint"]


def test_an_index_whose_encoder_was_retrained_at_the_same_path_is_refused(built, tmp_path):
    root, beir, encoder = built
    own = tmp_path / "encoder"
    shutil.copytree(encoder, own)
    folder, _ = build(tmp_path, beir, own)
    retrain_in_place(own)
    with pytest.raises(ValueError, match="changed since this index was built") as err:
        folder_encoder(folder)
    assert str(own) in str(err.value) and "rebuild the index" in str(err.value)


def test_another_sequence_length_is_another_encoder(built, tmp_path):
    root, beir, encoder = built
    folder, _ = build(tmp_path, beir, encoder)
    spec = json.loads((folder / ENCODER_FILE).read_text())
    (folder / ENCODER_FILE).write_text(json.dumps({**spec, "max_seq_length": 16}))
    with pytest.raises(ValueError, match="changed since this index was built"):
        folder_encoder(folder)


def test_an_index_from_before_fingerprints_loads_with_a_warning(built, tmp_path):
    root, beir, encoder = built
    folder, _ = build(tmp_path, beir, encoder)
    (folder / ENCODER_FILE).write_text(json.dumps({"path": str(encoder), "max_seq_length": 32}))
    with pytest.warns(UserWarning, match="records no encoder fingerprint"):
        assert folder_encoder(folder) is not None


@pytest.mark.parametrize("spec", ["[]", '{"path": null}', "not json"])
def test_a_malformed_encoder_json_is_named(tmp_path, spec):
    (tmp_path / ENCODER_FILE).write_text(spec)
    with pytest.raises(ValueError, match="expected {path, max_seq_length}"):
        folder_encoder(tmp_path)


def test_progress_is_reported_and_the_vectors_are_the_unchunked_ones(built, tmp_path, monkeypatch):
    import tripletkit.search.indexing as indexing
    from tripletkit.search.index import Index

    root, beir, encoder = built
    monkeypatch.setattr(indexing, "PROGRESS_CHUNK", 10)
    seen: list[tuple[int, int]] = []
    folder, model = build(tmp_path, beir, encoder, on_progress=lambda d, t: seen.append((d, t)))
    corpus = load_beir(beir).corpus
    n = len(corpus)
    assert seen == [(0, n), *((min(i + 10, n), n) for i in range(0, n, 10))]
    index = Index.load(folder)
    stored = index.faiss_index.reconstruct_n(0, index.faiss_index.ntotal)
    whole = encode(model, corpus.texts, progress=False)  # one call, as without on_progress
    np.testing.assert_allclose(stored, whole, atol=1e-5)
    assert index.ids == corpus.ids


@pytest.mark.parametrize("path", [3, ["a"], {"p": 1}, True])
def test_an_encoder_path_that_is_not_a_folder_name_is_named(tmp_path, path):
    (tmp_path / ENCODER_FILE).write_text(json.dumps({"path": path, "max_seq_length": 32}))
    with pytest.raises(ValueError, match="path must be a folder name or null"):
        folder_encoder(tmp_path)
