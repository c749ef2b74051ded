"""Mining shared across arms and seeds: the zero-shot encodings of the corpus and the training
queries are computed once (and cached on disk, keyed on model and texts), each miner runs once
per training run."""

import dataclasses

import numpy as np
import pytest
from search_fixtures import TINY_SEARCH, make_beir, tiny_encoder

from tripletkit.cli.settings import load_config
from tripletkit.search import corpus_mining as search_mining
from tripletkit.search import encodings as corpus_encodings
from tripletkit.search import training as search
from tripletkit.search.corpus_mining import ZeroShotMiner
from tripletkit.search.data import load_beir
from tripletkit.search.encoder import encode, load_encoder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("mining")
    return make_beir(root / "beir"), tiny_encoder(root)


@pytest.fixture
def encodings(monkeypatch):
    """The texts of every encoding actually computed."""
    calls = []
    real = corpus_encodings.encode_sharded

    def counting(model, texts, *args, **kwargs):
        calls.append(len(texts))
        return real(model, texts, *args, **kwargs)

    monkeypatch.setattr(corpus_encodings, "encode_sharded", counting)
    return calls


def config(encoder, *sets):
    return load_config(None, [f"model.path={encoder}", *TINY_SEARCH, *sets], task="search")


def test_the_zero_shot_encodings_are_computed_once_and_cached(tiny, tmp_path, encodings):
    beir, encoder = tiny
    data, cfg = load_beir(beir), config(encoder)
    qrels = data.split("train")
    first = ZeroShotMiner(data, qrels, cfg, tmp_path / "base", False)
    docs, queries, _ = first.encodings()
    first.encodings()
    assert encodings == [len(data.corpus), len(qrels)]  # corpus, then training queries
    model = load_encoder(encoder, 32, cfg.model.runtime)  # what the miner encodes with
    np.testing.assert_allclose(
        queries, encode(model, [data.queries[q] for q in sorted(qrels)], 16, False), atol=1e-6
    )
    again = ZeroShotMiner(data, qrels, cfg, tmp_path / "base", False)
    np.testing.assert_array_equal(again.encodings()[1], queries)
    assert len(encodings) == 2  # both read from base/*.npz


def test_an_edited_query_is_encoded_again(tiny, tmp_path, encodings):
    beir, encoder = tiny
    data, cfg = load_beir(beir), config(encoder)
    qrels = data.split("train")
    ZeroShotMiner(data, qrels, cfg, tmp_path, False).encodings()
    first_query = sorted(qrels)[0]
    edited = dataclasses.replace(data, queries={**data.queries, first_query: "something else"})
    ZeroShotMiner(edited, qrels, cfg, tmp_path, False).encodings()
    assert encodings == [len(data.corpus), len(qrels), len(qrels)]  # corpus cache kept


def test_training_mines_each_miner_once_for_all_seeds(tiny, tmp_path, monkeypatch, encodings):
    """Two mined arms at two seeds: the zero-shot corpus and queries are encoded once and each
    arm's miner runs once (four trainings)."""
    beir, encoder = tiny
    calls = []
    real = search_mining.mine_negatives

    def counting(*args, **kwargs):
        calls.append(args[5])  # the MiningConfig
        return real(*args, **kwargs)

    monkeypatch.setattr(search_mining, "mine_negatives", counting)
    sets = [f"data.source={beir}", "arms=[mined_unfiltered, mined_filtered]", "seeds=[0, 1]"]
    models = search.train(config(encoder, *sets), tmp_path / "run", progress=False)
    assert len(models) == 4 and all((m / "modules.json").is_file() for m in models)
    assert len(calls) == 2 and calls[0] != calls[1]
    data = load_beir(beir)
    assert encodings == [len(data.corpus), len(data.split("train"))]
    assert (tmp_path / "run" / "mined_filtered-seed1" / "negatives.jsonl").read_text() == (
        tmp_path / "run" / "mined_filtered" / "negatives.jsonl"
    ).read_text()
