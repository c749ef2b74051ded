"""The arms of the search table: each miner's filters, seeds and folders, and a naive arm that
knows nothing of relevance beyond one pair per query."""

import dataclasses
import json

import pytest
import torch
from search_fixtures import TINY_SEARCH, make_beir, tiny_encoder

from tripletkit.cli.settings import load_config
from tripletkit.search import training as search
from tripletkit.search.arms import (
    ARMS,
    arm_folder,
    check_config,
    known_positives,
    mining_config,
    seeds_of,
    training_view,
)
from tripletkit.search.corpus_mining import ZeroShotMiner
from tripletkit.search.data import Retrieval, load_beir
from tripletkit.search.encoder import load_encoder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("arms")
    return load_beir(make_beir(root / "beir")), tiny_encoder(root)


def test_each_arm_has_its_filters():
    cfg = load_config(None, ["negatives.relative_margin=0.05", "negatives.n=3"], task="search")
    expected = {
        "mined_naive": ("positive", None),
        "mined_unfiltered": ("positive", None),
        "mined_qrels_only": ("relevant", None),
        "mined_margin_only": ("positive", 0.05),
        "mined_filtered": ("relevant", 0.05),
    }
    for arm, (exclude, margin) in expected.items():
        miner = mining_config(cfg, arm)
        assert miner is not None and (miner.exclude, miner.relative_margin) == (exclude, margin)
        assert miner.n == 3
    for arm in ("bm25", "bm25_standard", "base", "in_batch"):
        assert mining_config(cfg, arm) is None
    with pytest.raises(ValueError, match="unknown arm 'mined'"):
        mining_config(cfg, "mined")


def test_seeds_and_folders(tmp_path):
    cfg = load_config(None, ["seeds=[3, 1, 2]", "one_seed=[mined_qrels_only]"], task="search")
    assert seeds_of(cfg, "mined_filtered") == (3, 1, 2)
    assert seeds_of(cfg, "mined_qrels_only") == (3,)
    assert seeds_of(cfg, "bm25") == seeds_of(cfg, "base") == (0,)
    assert arm_folder(tmp_path, cfg, "in_batch", 3) == tmp_path / "in_batch"
    assert arm_folder(tmp_path, cfg, "in_batch", 1) == tmp_path / "in_batch-seed1"
    plain = load_config(None, ["train.seed=7"], task="search")
    assert seeds_of(plain, "in_batch") == (7,)  # no seeds: train.seed alone


def test_bad_arm_and_seed_settings_name_the_key():
    with pytest.raises(ValueError, match="arms: unknown arm 'bm26'"):
        check_config(load_config(None, ["arms=[bm26]"], task="search"))
    with pytest.raises(ValueError, match="one_seed: unknown arm"):
        check_config(load_config(None, ["one_seed=[filtered]"], task="search"))
    with pytest.raises(ValueError, match="seeds: a seed is listed twice"):
        check_config(load_config(None, ["seeds=[0, 0]"], task="search"))
    check_config(load_config(None, [f"arms=[{', '.join(ARMS)}]"], task="search"))


def scrambled(qrels: dict[str, dict[str, int]], docs: list[str]) -> dict[str, dict[str, int]]:
    """Every query keeps its first listed positive; everything else it is judged on is
    replaced (other documents marked relevant, its other positives dropped)."""
    out = {}
    for i, (q, judged) in enumerate(qrels.items()):
        first = next(d for d, g in judged.items() if g > 0)
        out[q] = {first: 1, docs[(7 * i + 3) % len(docs)]: 1, docs[(5 * i + 1) % len(docs)]: 2}
    return out


def with_train_qrels(data: Retrieval, train: dict[str, dict[str, int]]) -> Retrieval:
    return dataclasses.replace(data, qrels={**data.qrels, "train": train})


def test_known_positives_keeps_the_first_positive_alone():
    qrels = {"a": {"d1": 0, "d2": 1, "d3": 1}, "b": {"d4": 0}, "c": {"d5": 2}}
    assert known_positives(qrels) == {"a": {"d2": 1}, "c": {"d5": 1}}
    assert training_view("mined_naive", qrels) == known_positives(qrels)
    assert training_view("mined_unfiltered", qrels) is qrels


def test_the_naive_batches_read_no_judgment_beyond_each_querys_pair(tiny, monkeypatch):
    """The same batches (documents and relevance mask) from the true and the scrambled qrels;
    the relevance-aware batch of mined_unfiltered does change, so the check can fail."""
    data, _ = tiny
    qrels = data.split("train")
    other = scrambled(qrels, data.corpus.ids)
    cfg = load_config(None, ["train.batch_size=4"], task="search")
    negatives = {q: [data.corpus.ids[(3 * i) % len(data.corpus)]] for i, q in enumerate(qrels)}
    monkeypatch.setattr(search, "embed", lambda model, texts: torch.zeros(len(texts), 4))

    class Capture:
        def relevance(self, q, d, relevant):
            seen.append(relevant)
            return q.sum() + d.sum(), None

    def batches(arm, judged):
        source = search.SearchBatches(data, training_view(arm, judged), negatives, cfg)
        gen = torch.Generator().manual_seed(0)
        for step in range(4):
            source.loss(None, Capture(), [2 * step, 2 * step + 1, 8, 15], gen, step)
        return [m.tolist() for m in seen]

    seen: list = []
    naive = batches("mined_naive", qrels)
    seen = []
    assert batches("mined_naive", other) == naive
    seen = []
    aware = batches("mined_unfiltered", qrels)
    seen = []
    assert batches("mined_unfiltered", other) != aware
    # one relevant column per query: its own known positive
    assert all(sum(row) == 1 for mask in naive for row in mask)


def test_the_naive_miner_reads_no_judgment_beyond_each_querys_pair(tiny, tmp_path):
    data, encoder = tiny
    cfg = load_config(None, [f"model.path={encoder}", *TINY_SEARCH], task="search")
    qrels = data.split("train")
    other = scrambled(qrels, data.corpus.ids)
    naive = mining_config(cfg, "mined_naive")
    assert naive is not None
    miner = ZeroShotMiner(data, qrels, cfg, tmp_path / "base", False)
    a = miner.mine(naive, training_view("mined_naive", qrels))
    b = miner.mine(naive, training_view("mined_naive", other))
    assert a.negatives == b.negatives and sum(map(len, a.negatives.values())) > 0
    filtered = mining_config(cfg, "mined_qrels_only")
    assert filtered is not None
    assert miner.mine(filtered, qrels).negatives != miner.mine(filtered, other).negatives


def test_a_naive_arm_trains_the_same_on_scrambled_judgments(tiny, tmp_path):
    """End to end: mined negatives, batches and weights of mined_naive are identical when every
    judgment but each training query's first positive is scrambled."""
    data, encoder = tiny
    cfg = load_config(None, [f"model.path={encoder}", *TINY_SEARCH], task="search")
    results = []
    for name, train in (("true", data.split("train")), ("scrambled", None)):
        train = train if train is not None else scrambled(data.split("train"), data.corpus.ids)
        view = with_train_qrels(data, train)
        miner = ZeroShotMiner(view, train, cfg, tmp_path / "base", False)
        out = tmp_path / name
        search.train_arm(cfg, view, out, "mined_naive", miner, resume=False, progress=False)
        weights = load_encoder(out / "model", 32).state_dict()
        results.append(((out / "negatives.jsonl").read_text(), weights))
    (neg_a, w_a), (neg_b, w_b) = results
    assert neg_a == neg_b and json.loads(neg_a.splitlines()[0])["negative_ids"]
    for key, value in w_a.items():
        assert torch.equal(value, w_b[key]), key


def test_the_ablation_config_runs_the_demo_recipe():
    """configs/wiki_ablation.yaml differs from configs/wiki.yaml only in the arms, seeds, name
    and dev curve, so the demo's mined_filtered row is one of the ablation's seeds."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs"
    demo = load_config(root / "wiki.yaml")
    ablation = load_config(root / "wiki_ablation.yaml")
    check_config(ablation)
    same = {"arms": (), "seeds": (), "one_seed": (), "name": "", "eval_every": 0}
    assert dataclasses.replace(demo, **same) == dataclasses.replace(ablation, **same)
    assert set(ablation.arms) == set(ARMS) and len(ablation.seeds) == 3
    assert set(demo.arms) == {"bm25", "bm25_standard", "base", "mined_filtered"}
    assert demo.seeds == ablation.seeds[:1]
