"""The text encoder through ONNX Runtime: parity with sentence-transformers, the export kept
beside the model and checked, the runtime recorded by an index folder, and clear errors."""

import importlib.util
import json
import os

import numpy as np
import pytest
from search_fixtures import make_beir, tiny_encoder

from tripletkit import _onnx
from tripletkit.search import runtime
from tripletkit.search.config import EncoderConfig, SearchConfig, TextDataConfig
from tripletkit.search.data import load_beir
from tripletkit.search.encoder import encode, load_encoder
from tripletkit.search.encodings import model_fingerprint
from tripletkit.search.indexing import ENCODER_FILE, folder_encoder, index_corpus

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime is not installed"
)

TEXTS = [
    "triplet loss for face recognition",
    "",
    "Zürich — ein Satz mit Umlauten, 数字 and emoji 🙂",
    "a long document " * 80,  # past max_seq_length: truncated as sentence-transformers does
    "x",
    "semantic search with hard negatives that are often false negatives",
]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return tiny_encoder(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIPLETKIT_CACHE", str(tmp_path / "cache"))


def test_default_encoder_fp32_and_int8_match_sentence_transformers():
    torch_vectors = encode(load_encoder(None, 64), TEXTS, batch_size=4, progress=False)
    fp32 = encode(load_encoder(None, 64, "onnx"), TEXTS, batch_size=4, progress=False)
    int8 = encode(load_encoder(None, 64, "onnx-int8"), TEXTS, batch_size=4, progress=False)
    for vectors in (fp32, int8):
        assert vectors.shape == torch_vectors.shape and vectors.dtype == np.float32
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert (fp32 * torch_vectors).sum(1).min() >= 0.9999
    assert (int8 * torch_vectors).sum(1).min() >= 0.95
    # the nearest text of each stays the same under int8
    near = lambda v: np.argsort(-(v @ v.T), axis=1)[:, 1]  # noqa: E731
    assert (near(int8) == near(torch_vectors)).mean() >= 5 / 6


def test_export_lives_in_the_model_folder_and_is_read_back(encoder, monkeypatch):
    model = load_encoder(encoder, 32, "onnx")
    assert model.path.parent == encoder and model.path.name.startswith("encoder.onnx.")
    stamp = os.stat(model.path).st_mtime_ns

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt a valid export")

    monkeypatch.setattr(runtime, "build_export", no_build)
    again = load_encoder(encoder, 32, "onnx")
    assert again.path == model.path and os.stat(model.path).st_mtime_ns == stamp
    # the order of the input is kept though batches run longest first
    one_by_one = np.concatenate([encode(again, [t], progress=False) for t in TEXTS])
    assert np.abs(encode(again, TEXTS, batch_size=4, progress=False) - one_by_one).max() < 1e-5


def test_a_damaged_export_is_rebuilt_with_a_warning(encoder):
    model = load_encoder(encoder, 32, "onnx-int8")
    model.path.write_bytes(model.path.read_bytes()[:1000])
    with pytest.warns(UserWarning, match=r"does not open in onnxruntime \(.*\): rebuilding it"):
        again = load_encoder(encoder, 32, "onnx-int8")
    reference = encode(load_encoder(encoder, 32), TEXTS, progress=False)
    assert (encode(again, TEXTS, progress=False) * reference).sum(1).min() >= 0.95


def test_fingerprints_tell_runtimes_apart(encoder):
    prints = {r: model_fingerprint(load_encoder(encoder, 32, r)) for r in _onnx.RUNTIMES}
    assert len(set(prints.values())) == 3
    assert model_fingerprint(load_encoder(encoder, 32, "onnx")) == prints["onnx"]


def test_an_index_records_its_runtime_and_queries_are_encoded_by_it(encoder, tmp_path):
    root = make_beir(tmp_path / "beir")
    cfg = SearchConfig(
        data=TextDataConfig(source=str(root)),
        model=EncoderConfig(path=str(encoder), max_seq_length=32, runtime="onnx-int8"),
    )
    model = load_encoder(encoder, 32, cfg.model.runtime)
    folder = tmp_path / "index"
    index_corpus(model, load_beir(root), cfg, folder, encoder_path=str(encoder), progress=False)
    spec = json.loads((folder / ENCODER_FILE).read_text())
    assert spec["runtime"] == "onnx-int8"
    loaded = folder_encoder(folder)
    assert isinstance(loaded, runtime.OnnxTextEncoder) and loaded.runtime == "onnx-int8"
    (folder / ENCODER_FILE).write_text(json.dumps({**spec, "runtime": "tensorrt"}))
    with pytest.raises(ValueError, match=f"{ENCODER_FILE}: runtime must be one of"):
        folder_encoder(folder)


def test_runtime_errors_name_what_to_change(encoder):
    with pytest.raises(ValueError, match="model.runtime must be one of torch, onnx, onnx-int8"):
        load_encoder(encoder, 32, "int4")

    class Transformer:
        pass

    class Dense:
        pass

    with pytest.raises(ValueError, match="this model is Transformer, Dense: use model.runtime"):
        runtime.pooling_of([Transformer(), Dense()], "my-model")
