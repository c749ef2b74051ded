import json
import re
from pathlib import Path

import pytest
import torch
from search_fixtures import TINY_SEARCH, make_beir, tiny_encoder

from tripletkit.cli import main
from tripletkit.search.arms import mining_config
from tripletkit.search.corpus_mining import remine_with
from tripletkit.search.indexing import index_on_disk

ALL_ARMS = [
    "bm25",
    "bm25_standard",
    "base",
    "in_batch",
    "mined_naive",
    "mined_unfiltered",
    "mined_qrels_only",
    "mined_margin_only",
    "mined_filtered",
]
SEEDED = ["in_batch", "mined_naive", "mined_unfiltered", "mined_filtered"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    beir, encoder = make_beir(root / "beir"), tiny_encoder(root)
    args = [
        "train",
        "--task",
        "search",
        "--data",
        str(beir),
        "--name",
        "s",
        "--runs",
        str(root / "runs"),
        "--quiet",
        "--set",
        f"model.path={encoder}",
        "--set",
        "arms=[" + ", ".join(ALL_ARMS) + "]",
        "--set",
        "seeds=[0, 1]",
        "--set",
        "one_seed=[mined_qrels_only, mined_margin_only]",
        "--set",
        "eval_every=2",
    ]
    for item in TINY_SEARCH:
        args += ["--set", item]
    assert main(args) == 0
    return root, beir, encoder


def test_train_saves_sentence_transformers_models(trained):
    from sentence_transformers import SentenceTransformer

    root, _, _ = trained
    run = root / "runs" / "s"
    folders = [run / a for a in ALL_ARMS[3:]] + [run / f"{a}-seed1" for a in SEEDED]
    for folder in folders:
        model = SentenceTransformer(str(folder / "model"), device="cpu")
        assert model.encode(["a river"]).shape == (1, 32)
    assert not (run / "mined_qrels_only-seed1").exists()  # one seed only
    mining = json.loads((run / "mined_filtered" / "mining.json").read_text())
    assert mining["candidates"] == 16 * 10 and "relevant" in mining["removed"]
    naive = json.loads((run / "mined_naive" / "mining.json").read_text())
    assert set(naive["removed"]) == {"positive"}
    curve = (run / "mined_filtered" / "dev_curve.jsonl").read_text()
    assert [json.loads(x)["step"] for x in curve.splitlines()] == [0, 2, 3]
    logs = [
        json.loads(x) for x in (run / "in_batch-seed1" / "train_log.jsonl").read_text().splitlines()
    ]
    first = [json.loads(x) for x in (run / "in_batch" / "train_log.jsonl").read_text().splitlines()]
    assert logs != first  # another seed trains otherwise


def test_evaluate_writes_metrics_runs_and_report(trained, capsys):
    """metrics.json: arm -> metric -> {mean, std, values}, one value per seed (issue 11); the
    same table without the training positives; paired tests; a TREC file per arm and seed."""
    root, _, _ = trained
    run = root / "runs" / "s"
    assert main(["evaluate", str(run), "--quiet"]) == 0
    for name in ("metrics.json", "metrics_untouched.json"):
        summary = json.loads((run / name).read_text())
        assert list(summary) == ALL_ARMS
        for arm, row in summary.items():
            assert set(row) == {"ndcg@10", "mrr@10", "recall@10", "recall@100", "map"}
            for cell in row.values():
                assert set(cell) == {"mean", "std", "values"}
                assert len(cell["values"]) == (2 if arm in SEEDED else 1)
                assert all(0.0 <= v <= 1.0 for v in cell["values"])
                assert cell["mean"] == pytest.approx(sum(cell["values"]) / len(cell["values"]))
                if len(cell["values"]) == 1:
                    assert cell["std"] == 0.0
                else:
                    a, b = cell["values"]
                    assert cell["std"] == pytest.approx(abs(a - b) / 2**0.5)
    for tag in ("bm25", "bm25_standard", "base", "mined_filtered.seed0", "mined_filtered.seed1"):
        first = (run / f"{tag}.trec").read_text().splitlines()[0].split()
        assert first[1] == "Q0" and first[3] == "1" and first[5] == tag
        assert (run / f"{tag}.untouched.trec").is_file()
    assert not (run / "mined_margin_only.seed1.trec").exists()
    assert (run / "qrels.test.tsv").read_text().startswith("query-id\tcorpus-id\tscore")
    tests = json.loads((run / "significance.json").read_text())
    pairs = {(t["a"], t["b"]) for t in tests["all"]["tests"]}
    best = tests["all"]["strongest_bm25"]
    assert best in ("bm25", "bm25_standard")
    assert {("mined_filtered", "mined_unfiltered"), ("mined_filtered", "mined_naive")} <= pairs
    assert {(a, best) for a in ALL_ARMS[2:]} <= pairs
    for t in tests["all"]["tests"]:
        assert t["low"] <= t["diff"] <= t["high"] and 0 < t["p_value"] <= 1 and t["queries"] == 4
    diagnostics = json.loads((run / "mining_diagnostics.json").read_text())
    assert set(diagnostics["miners"]) == {
        "mined_naive",
        "mined_qrels_only",
        "mined_margin_only",
        "mined_filtered",
    }
    assert diagnostics["miners"]["mined_qrels_only"]["relevant_kept"] == 0
    report = (run / "report.md").read_text()
    for part in ("False negatives", "Paired tests", "no training query touched", "(scores.png)"):
        assert part in report
    assert "(dev_curve.png)" in report and "| mined_filtered | 2 |" in report
    assert "| mined_filtered |" in capsys.readouterr().out


def test_mine_index_search(trained, tmp_path, capsys):
    from tripletkit.search.data import load_beir

    root, beir, encoder = trained
    settings = []
    for item in TINY_SEARCH:
        settings += ["--set", item]
    out = tmp_path / "triplets.jsonl"
    assert (
        main(
            [
                "mine",
                "--data",
                str(beir),
                "--model",
                str(encoder),
                "--out",
                str(out),
                "--quiet",
                *settings,
            ]
        )
        == 0
    )
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 16 and {"query_id", "negative_ids"} <= lines[0].keys()
    assert "relevant" in json.loads(out.with_suffix(".json").read_text())["removed"]
    naive = tmp_path / "naive.jsonl"
    args = ["mine", "--data", str(beir), "--model", str(encoder), "--out", str(naive), "--quiet"]
    assert main([*args, "--arm", "mined_naive", *settings]) == 0
    summary = json.loads(naive.with_suffix(".json").read_text())
    assert set(summary["removed"]) == {"positive"}
    judged = load_beir(beir).split("train")
    picked = [json.loads(x) for x in naive.read_text().splitlines()]
    relevant = sum(judged[r["query_id"]].get(d, 0) > 0 for r in picked for d in r["negative_ids"])
    assert summary["relevant_kept"] == relevant  # judged by every qrel, not the naive view
    model = str(root / "runs" / "s" / "mined_filtered" / "model")
    assert (
        main(
            [
                "index",
                "--data",
                str(beir),
                "--model",
                model,
                "--out",
                str(tmp_path / "idx"),
                "--quiet",
                *settings,
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["search", "violin number 1", "--index", str(tmp_path / "idx"), "-k", "3"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 3 and rows[0].split()[0] == "1"
    disk = tmp_path / "disk"
    index_args = ["index", "--data", str(beir), "--model", model, "--out", str(disk), "--quiet"]
    assert main([*index_args, "--on-disk", *settings]) == 0
    assert (disk / "lists.ivfdata").is_file() and (disk / "titles.json").is_file()
    corpus = load_beir(beir).corpus
    for folder in (tmp_path / "idx", disk):  # the service's snippets: every document's text
        texts = json.loads((folder / "texts.json").read_text())
        assert texts == dict(zip(corpus.ids, corpus.texts, strict=True))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # scratch removed
    capsys.readouterr()
    assert main(["search", "violin number 1", "--index", str(disk), "-k", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_in_batch_relevance_marks_a_document_relevant_to_two_queries(trained, monkeypatch):
    from tripletkit.cli.settings import load_config
    from tripletkit.search import training as search
    from tripletkit.search.data import load_beir

    _, beir, _ = trained
    data = load_beir(beir)
    qrels = {"q0-0": {"d0-0": 1, "d0-2": 1}, "q0-1": {"d0-1": 1, "d0-2": 1}}
    cfg = load_config(None, ["train.batch_size=2"], task="search")
    # d0-2 answers both queries; d0-1 is mined for q0-0 but answers q0-1
    negatives = {"q0-0": ["d0-1", "d0-2"], "q0-1": ["d0-2"]}
    batches = search.SearchBatches(data, qrels, negatives, cfg)
    calls = []

    def fake_embed(model, texts):
        calls.append(texts)
        return torch.randn(len(texts), 4)

    class Capture:
        def relevance(self, q, d, relevant):
            calls.append(relevant)
            return q.sum() + d.sum(), None

    monkeypatch.setattr(search, "embed", fake_embed)
    batches.loss(None, Capture(), [0, 1], torch.Generator().manual_seed(0), 0)
    _, doc_texts, relevant = calls
    ids = [data.corpus.ids[data.corpus.texts.index(t)] for t in doc_texts]
    assert len(ids) == len(set(ids))  # a document twice in the batch is one column
    expected = [[d in qrels[q] for d in ids] for q in ("q0-0", "q0-1")]
    assert relevant.tolist() == expected
    assert relevant[:, ids.index("d0-2")].all()  # never a negative of either query
    assert not relevant[0, ids.index("d0-1")] and relevant[1, ids.index("d0-1")]


def test_remining_refreshes_negatives_every_n_steps(trained, monkeypatch):
    from tripletkit.cli.settings import load_config
    from tripletkit.search import training as search
    from tripletkit.search.data import load_beir

    _, beir, _ = trained
    data = load_beir(beir)
    qrels = data.split("train")
    cfg = load_config(None, ["train.batch_size=2", "negatives.remine_every=2"], task="search")
    calls = []

    def remine(model):
        calls.append(True)
        return {q: ["d11-0"] for q in qrels}

    class Model:
        def train(self):
            return self

    class Capture:
        def relevance(self, q, d, relevant):
            return q.sum() + d.sum(), None

    monkeypatch.setattr(search, "embed", lambda model, texts: torch.randn(len(texts), 4))
    batches = search.SearchBatches(data, qrels, {}, cfg, remine)
    gen = torch.Generator().manual_seed(0)
    for step in range(5):
        batches.loss(Model(), Capture(), [0, 1], gen, step)
    assert len(calls) == 2 and batches.negatives[batches.qids[0]] == ["d11-0"]  # steps 2 and 4


# ---- re-mined negatives survive resume (issue 10, item 10) ----------------------------------


def test_search_batches_state_round_trip_and_bad_states(trained):
    from tripletkit.cli.settings import load_config
    from tripletkit.search import training as search
    from tripletkit.search.data import load_beir

    _, beir, _ = trained
    data = load_beir(beir)
    qrels = data.split("train")
    cfg = load_config(None, ["train.batch_size=2"], task="search")
    remined = search.SearchBatches(data, qrels, {"q0-0": ["d5-1", "d6-0"]}, cfg)
    fresh = search.SearchBatches(data, qrels, {"q0-0": ["d1-1"]}, cfg)
    fresh.load_state_dict(remined.state_dict())
    assert fresh.negatives == {"q0-0": ["d5-1", "d6-0"]}
    with pytest.raises(ValueError, match="needs 'negatives'"):
        fresh.load_state_dict({"sampler": {}})
    with pytest.raises(ValueError, match="query 'q0-0' name document 'gone'"):
        fresh.load_state_dict({"negatives": {"q0-0": ["gone"]}})


def test_a_resumed_run_continues_with_the_remined_negatives(tmp_path):
    """Re-mining at step 3 of 4 per epoch: steps 4 and 5 use those negatives, in one run or
    in a run stopped after epoch 0 and resumed (the source's state is in the checkpoint)."""
    from tripletkit.cli.settings import load_config
    from tripletkit.search import training as search
    from tripletkit.search.data import load_beir
    from tripletkit.search.encoder import load_encoder
    from tripletkit.train import fit, loss_from_config

    beir, encoder = make_beir(tmp_path / "beir"), tiny_encoder(tmp_path)
    sets = [*TINY_SEARCH, "train.max_steps=0", "train.epochs=2", "negatives.remine_every=3"]
    cfg = load_config(None, [f"model.path={encoder}", *sets], task="search")
    data = load_beir(beir)
    qrels = data.split("train")
    # the rank window alone: the untrained tiny encoder scores every pair alike, so the margin
    # filters would leave nothing
    miner = mining_config(cfg, "mined_unfiltered")
    assert miner is not None

    def run(out, **kwargs):
        model = load_encoder(encoder, 32)
        torch.manual_seed(cfg.train.seed)
        remine = remine_with(data, qrels, cfg, miner, False)
        source = search.SearchBatches(data, qrels, {}, cfg, remine)  # no negatives at first
        fit(model, loss_from_config(cfg.loss), source, cfg.train, out, progress=False, **kwargs)
        return model.state_dict(), source.negatives

    straight, negatives = run(tmp_path / "a")
    assert sum(map(len, negatives.values())) > 0  # re-mining found negatives
    run(tmp_path / "b", stop_after_epoch=0)
    resumed, _ = run(tmp_path / "b", resume=True)
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name


def test_index_on_disk_publishes_the_extra_files_with_the_index(trained, tmp_path, monkeypatch):
    """encoder.json and titles.json are in the folder the moment it appears (issue 10, item
    12): the folder is listed when the build loads the index it has just published."""
    from tripletkit.cli.settings import load_config
    from tripletkit.search.data import load_beir
    from tripletkit.search.encoder import load_encoder
    from tripletkit.search.index import Index

    _, beir, encoder = trained
    seen = []
    load = Index.load.__func__

    def listing_load(cls, folder):
        seen.append(sorted(p.name for p in Path(folder).iterdir()))
        return load(cls, folder)

    monkeypatch.setattr(Index, "load", classmethod(listing_load))
    cfg = load_config(None, TINY_SEARCH, task="search")
    extra = {"encoder.json": "{}", "titles.json": "{}"}
    folder = tmp_path / "idx"
    index_on_disk(load_encoder(encoder, 32), load_beir(beir), cfg, folder, extra, False)
    assert seen and {"encoder.json", "titles.json", "index.faiss"} <= set(seen[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no scratch left


def test_search_refuses_an_index_whose_encoder_changed(tmp_path, capsys):
    """Issue 20, item 11: retraining the model at the index's encoder path made `tripletkit
    search` encode queries with the new model against the old vectors, silently."""
    from sentence_transformers import SentenceTransformer

    beir, encoder = make_beir(tmp_path / "beir"), tiny_encoder(tmp_path)
    settings = [x for item in TINY_SEARCH for x in ("--set", item)]
    index = tmp_path / "idx"
    args = ["index", "--data", str(beir), "--model", str(encoder), "--out", str(index)]
    assert main([*args, "--quiet", *settings]) == 0
    assert main(["search", "violin number 1", "--index", str(index), "-k", "2"]) == 0
    model = SentenceTransformer(str(encoder), device="cpu")  # retrained at the same path
    with torch.no_grad():
        next(iter(model.parameters())).add_(0.01)
    model.save(str(encoder))
    capsys.readouterr()
    assert main(["search", "violin number 1", "--index", str(index), "-k", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "changed since this index was built" in captured.err


# ---- a resumed search run refuses a changed config (issue 20, item 10) -----------------------


def test_resume_refuses_a_config_that_would_train_other_models(tmp_path, capsys):
    """Regression: `train --task search --resume` under loss.margin=0.5 kept the models trained
    at 0.2, rewrote config.yaml to say 0.5, and evaluate reported them under it."""
    beir, encoder = make_beir(tmp_path / "beir"), tiny_encoder(tmp_path)
    base = ["train", "--task", "search", "--data", str(beir), "--name", "s"]
    base += ["--runs", str(tmp_path / "runs"), "--quiet", "--set", f"model.path={encoder}"]
    base += [x for item in [*TINY_SEARCH, "arms=[in_batch]"] for x in ("--set", item)]
    assert main(base) == 0
    run = tmp_path / "runs" / "s"
    config = (run / "config.yaml").read_text()
    model = (run / "in_batch" / "model" / "model.safetensors").read_bytes()
    capsys.readouterr()
    for change, named in (
        (["loss.margin=0.5"], r"loss\.margin 0\.2 -> 0\.5"),
        (["negatives.n=2", "train.lr=0.1"], r"negatives\.n 1 -> 2, train\.lr 0\.001 -> 0\.1"),
        (["seeds=[3]"], r"first seed 0 -> 3"),
    ):
        sets = [x for item in change for x in ("--set", item)]
        assert main([*base, "--resume", *sets]) == 2, change
        err = capsys.readouterr().err
        assert re.search(
            rf"cannot resume .*{run.name}: it was trained with other config "
            rf"settings: {named}",
            err,
        ), err
        assert "Traceback" not in err
        assert (run / "config.yaml").read_text() == config  # not rewritten
    # where and how it runs, which arms and what evaluation reads do not change its models
    free = ["train.threads=2", "arms=[bm25, in_batch]", "index=flat", "data.eval_split=dev"]
    assert main([*base, "--resume", *[x for item in free for x in ("--set", item)]]) == 0
    assert (run / "in_batch" / "model" / "model.safetensors").read_bytes() == model
    assert "eval_split: dev" in (run / "config.yaml").read_text()
