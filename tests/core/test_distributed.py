"""DDP on CPU: real gloo processes started by the tests, compared with one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_workers import (
    ddp_loss,
    disagreeing_config,
    dying_rank,
    faces_training,
    global_batch,
    late_rank_zero,
    loss_and_grads,
    run_ranks,
    search_training,
    sharded_encoding,
)
from faces_fixtures import TINY, make_faces

from tripletkit import distributed
from tripletkit.cli.settings import load_config
from tripletkit.faces.images import load_identities
from tripletkit.faces.scratch import FaceBatches
from tripletkit.search.encoder import load_encoder

DDP_TINY = [*TINY, "train.p=4", "train.epochs=3", "data.fold=0"]


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return make_faces(tmp_path_factory.mktemp("ddp") / "faces", identities=10)


@pytest.mark.parametrize("mining", ["all", "hard", "semi-hard"])
def test_two_ranks_give_the_loss_and_gradients_of_one_process(tmp_path, mining):
    ranks = run_ranks(ddp_loss, 2, tmp_path, mining, 3)
    x, labels, model = global_batch(3)
    loss, stats = loss_and_grads(model, x, labels, mining)
    for r, got in enumerate(ranks):
        assert "error" not in got, got
        assert got["loss"] == pytest.approx(loss, abs=1e-6), r
        assert got["stats"] == pytest.approx(stats, nan_ok=True), r
        for g, p in zip(got["grads"], model.parameters(), strict=True):
            torch.testing.assert_close(g, p.grad, rtol=0, atol=1e-5)


def test_gather_without_other_ranks_is_the_identity():
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.gather(x) is x
    assert distributed.world_size() == 1 and distributed.is_main()


def test_ddp_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, faces):
    straight = run_ranks(faces_training, 2, tmp_path / "a", faces, tmp_path / "a", DDP_TINY, [{}])
    phases = [{"stop_after_epoch": 0}, {"resume": True}]
    resumed = run_ranks(faces_training, 2, tmp_path / "b", faces, tmp_path / "b", DDP_TINY, phases)
    # DDP keeps the ranks' parameters identical; BatchNorm running statistics are per rank on
    # CPU, and rank 0's are the ones saved (and restored on every rank on resume)
    params = [k for k in straight[0] if "running_" not in k and "num_batches" not in k]
    for r in range(2):
        assert "error" not in straight[r] and "error" not in resumed[r], (straight, resumed)
        for name in straight[0] if r == 0 else params:
            assert torch.equal(straight[r][name], resumed[r][name]), (r, name)
    assert all(torch.equal(straight[0][k], straight[1][k]) for k in params)
    # only rank 0 wrote, and nothing half-written
    written = sorted(p.name for p in (tmp_path / "a").iterdir() if not p.name.startswith("result"))
    assert written == ["checkpoint.pt", "model.json", "model.safetensors", "train_log.jsonl"]
    steps = len((tmp_path / "a" / "train_log.jsonl").read_text().splitlines())
    assert steps == len((tmp_path / "b" / "train_log.jsonl").read_text().splitlines()) > 0


def test_a_dying_rank_is_a_clear_error_and_leaves_no_checkpoint(tmp_path, faces):
    out = tmp_path / "run"
    ranks = run_ranks(dying_rank, 2, tmp_path, faces, out, [*DDP_TINY, "train.timeout=15"])
    assert ranks[1] is None  # it died
    assert ranks[0]["error"].startswith("DistributedError: rank 0 of 2:"), ranks[0]
    assert "another rank stopped" in ranks[0]["error"]
    assert not (out / "checkpoint.pt").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_ranks_that_disagree_on_the_config_fail_on_every_rank(tmp_path):
    ranks = run_ranks(disagreeing_config, 2, tmp_path, 0.1)
    for got in ranks:
        assert got["error"].startswith("DistributedError: ranks disagree on the config")
        assert "train.lr: rank 0 has 0.1, rank 1 has 0.2" in got["error"]
        assert "epochs" not in got["error"]


def test_ranks_leave_the_session_together(tmp_path):
    """A rank that finishes first waits for the others before tearing the group down: a gloo
    group destroyed at exit while a peer is still working aborted the process (seen in CI)."""
    done = run_ranks(late_rank_zero, 2, tmp_path, 1.5)
    left = [(tmp_path / f"result-rank{r}.pt").stat().st_mtime for r in range(2)]
    assert left[1] - done[1] >= 1.4, (done, left)


def test_sharded_encoding_equals_one_process(tmp_path):
    from search_fixtures import tiny_encoder

    from tripletkit.search.encoder import encode, load_encoder

    encoder = tiny_encoder(tmp_path)
    texts = [f"document {i} about {'rivers' if i % 2 else 'mountains'}" for i in range(11)]
    ranks = run_ranks(sharded_encoding, 2, tmp_path, encoder, texts)
    single = encode(load_encoder(encoder, 32), texts, 4, False)
    for got in ranks:
        assert not isinstance(got, dict), got
        assert got.shape == single.shape
        torch.testing.assert_close(got, single, atol=1e-6, rtol=0)


def test_world_size_must_divide_the_global_batch(monkeypatch, faces):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    assert distributed.split(8, "train.p") == 4
    with pytest.raises(ValueError, match=r"train.p=45 \(the global batch\) does not divide over 2"):
        distributed.split(45, "train.p")
    cfg = load_config(None, [*TINY, "train.p=5"])
    with pytest.raises(ValueError, match="train.p=5"):
        FaceBatches(load_identities(faces, (20, 16)), cfg)


def test_shards_cover_every_item_once(monkeypatch):
    for world in (1, 2, 3, 5):
        for n in (0, 1, 4, 11):
            monkeypatch.setattr(distributed, "world_size", lambda w=world: w)
            parts = []
            for r in range(world):
                monkeypatch.setattr(distributed, "rank", lambda r=r: r)
                parts.extend(range(n)[distributed.shard(n)])
            assert parts == list(range(n)), (world, n)


def test_train_under_torchrun(tmp_path, faces):
    """The documented command: torchrun --nproc-per-node 2 -m tripletkit train ..."""
    sets = [a for s in [*DDP_TINY, "train.epochs=1"] for a in ("--set", s)]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-port", str(__import__("ddp_workers").free_port()),
        "-m", "tripletkit", "train", "--data", str(faces), "--name", "ddp", "--quiet",
        "--runs", str(tmp_path), *sets,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained 1 model(s)" in done.stdout and "on 2 ranks" in done.stdout
    assert done.stdout.count("trained") == 1  # rank 0 speaks
    assert (tmp_path / "ddp" / "fold0" / "model.safetensors").is_file()


def test_two_nodes_meet_through_c10d_rendezvous(tmp_path, faces):
    """The multi-node command of docs/distributed.md, as two one-process "machines" on this
    host: each torchrun finds the other through the c10d rendezvous endpoint."""
    sets = [a for s in [*DDP_TINY, "train.epochs=1"] for a in ("--set", s)]
    endpoint = f"127.0.0.1:{__import__('ddp_workers').free_port()}"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "two-nodes",
        "-m", "tripletkit", "train", "--data", str(faces), "--name", "nodes", "--quiet",
        "--runs", str(tmp_path), *sets,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    try:
        outputs = [node.communicate(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for node, (_, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, err[-3000:]
    said = "".join(out for out, _ in outputs)
    assert said.count("trained 1 model(s)") == 1 and "on 2 ranks" in said
    assert (tmp_path / "nodes" / "fold0" / "model.safetensors").is_file()


def test_search_training_with_remining_on_two_ranks(tmp_path):
    """Sharded corpus encoding for the miner, the gathered query x document batch, the dev
    curve and the saved model, with 2 queries per rank; re-mining at step 2 encodes with the
    model inside the DistributedDataParallel wrapper (which has no ``encode``), and the
    re-mined negatives go into the checkpoint."""
    from search_fixtures import TINY_SEARCH, make_beir, tiny_encoder

    beir, encoder = make_beir(tmp_path / "beir"), tiny_encoder(tmp_path)
    sets = [*TINY_SEARCH, "arms=[mined_filtered]", "eval_every=2", "negatives.remine_every=2"]
    ranks = run_ranks(search_training, 2, tmp_path, beir, encoder, tmp_path / "run", sets)
    assert ranks[1] == "done" and "error" not in ranks[0], ranks
    arm = tmp_path / "run" / "mined_filtered"
    assert len((arm / "train_log.jsonl").read_text().splitlines()) == 3
    assert [json.loads(x)["step"] for x in (arm / "dev_curve.jsonl").read_text().splitlines()] == [
        0,
        2,
        3,
    ]
    assert (arm / "negatives.jsonl").is_file()
    checkpoint = torch.load(arm / "checkpoint.pt", weights_only=False)
    assert set(checkpoint["source"]["negatives"]) == set(search_queries(beir))
    base = load_encoder(encoder, 32).state_dict()
    assert any(not torch.equal(v, base[k]) for k, v in ranks[0].items())  # it trained


def search_queries(beir: Path) -> list[str]:
    """The training queries of the tiny BEIR set (those with a relevant document)."""
    from tripletkit.search.data import load_beir

    return [q for q, docs in load_beir(beir).split("train").items() if any(docs.values())]
