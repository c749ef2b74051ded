"""Start N real processes on CPU (gloo), as torchrun would, and collect what each rank returns.

Workers are module-level functions (spawned processes import them); each returns a picklable
value, or its exception comes back as {"error": "Type: message"}.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from tripletkit import distributed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(
    target: Callable[..., Any], world: int, folder: Path, *args: Any, limit: float = 120.0
) -> list[Any]:
    """Run ``target(*args)`` on ``world`` ranks; return each rank's result (None if the process
    died without one). Fails the test if a process is still running after ``limit`` seconds."""
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [
        ctx.Process(target=_entry, args=(target, r, world, port, folder, args))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    hung = []
    for r, p in enumerate(procs):
        p.join(limit)
        if p.is_alive():
            p.kill()
            hung.append(r)
    if hung:
        raise AssertionError(f"ranks {hung} still running after {limit} s: a hang")
    out = []
    for r in range(world):
        path = folder / f"result-rank{r}.pt"
        out.append(torch.load(path, weights_only=False) if path.exists() else None)
    return out


def _entry(
    target: Callable[..., Any], r: int, world: int, port: int, folder: Path, args: tuple
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(r),
        LOCAL_RANK=str(r),
        WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    try:
        with distributed.session(timeout=60, backend="gloo"):
            result = target(*args)
    except Exception as err:  # reported to the test, which decides
        result = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()}
    torch.save(result, folder / f"result-rank{r}.pt")


# ---- workers -------------------------------------------------------------------------------


def global_batch(seed: int, n: int = 13) -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module]:
    """Inputs, labels and a seeded linear embedder, the same on every rank."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=gen)
    labels = torch.randint(0, 4, (n,), generator=gen)
    torch.manual_seed(seed)
    return x, labels, torch.nn.Linear(6, 4)


def loss_and_grads(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, mining: str):
    from tripletkit import TripletLoss

    emb = torch.nn.functional.normalize(model(x), dim=1)
    loss_fn = TripletLoss(
        mining=mining, margin=0.5, fallback="hardest" if mining == "semi-hard" else "skip"
    )
    loss, stats = loss_fn(distributed.gather(emb), distributed.gather(labels))
    loss.backward()
    return loss.item(), stats.as_dict()


def ddp_loss(mining: str, seed: int) -> dict[str, Any]:
    """This rank's contiguous share of the global batch, through DistributedDataParallel."""
    from torch.nn.parallel import DistributedDataParallel

    x, labels, model = global_batch(seed)
    net = DistributedDataParallel(model)
    mine = distributed.shard(len(x))
    loss, stats = loss_and_grads(net, x[mine], labels[mine], mining)
    return {"loss": loss, "stats": stats, "grads": [p.grad for p in model.parameters()]}


def faces_training(faces: Path, out: Path, overrides: list[str], phases: list[dict]) -> Any:
    """train_model on the tiny faces, once per phase (e.g. interrupted, then resumed)."""
    from tripletkit.cli.settings import load_config
    from tripletkit.faces.experiment import train_model
    from tripletkit.faces.images import load_identities

    cfg = load_config(None, overrides)
    data = load_identities(faces, (20, 16))
    model = None
    for phase in phases:
        model = train_model(cfg, data, out, progress=False, **phase)
    assert model is not None
    return {k: v.clone() for k, v in model.state_dict().items()}


def dying_rank(faces: Path, out: Path, overrides: list[str]) -> Any:
    """Rank 1 dies at its second step; the others must fail with a clear error, not hang."""
    from tripletkit.faces import scratch

    original = scratch.FaceBatches.loss

    def loss(self, model, loss_fn, indices, gen, step):  # type: ignore[no-untyped-def]
        if step == 1 and distributed.rank() == 1:
            os._exit(3)
        return original(self, model, loss_fn, indices, gen, step)

    scratch.FaceBatches.loss = loss  # type: ignore[method-assign]
    return faces_training(faces, out, overrides, [{}])


def disagreeing_config(rate: float) -> Any:
    distributed.check_same({"train": {"lr": rate * (1 + distributed.rank()), "epochs": 3}})
    return "agreed"


def late_rank_zero(seconds: float) -> float:
    """Rank 0 is still busy (writing its report, say) when rank 1 is done."""
    if distributed.rank() == 0:
        time.sleep(seconds)
    return time.time()


def sharded_encoding(model_dir: Path, texts: list[str]) -> Any:
    from tripletkit.search.encoder import encode, load_encoder

    model = load_encoder(model_dir, 32)
    return distributed.sharded(lambda part: encode(model, part, 4, False), texts)


def search_training(beir: Path, encoder: Path, run: Path, overrides: list[str]) -> Any:
    """The search arms on the tiny BEIR set; returns the trained arm's final weights."""
    from tripletkit.cli.settings import load_config
    from tripletkit.search import training as search
    from tripletkit.search.encoder import load_encoder

    sets = [f"data.source={beir}", f"model.path={encoder}", *overrides]
    cfg = load_config(None, sets, task="search")
    search.train(cfg, run, progress=False)
    if distributed.is_main():
        model = load_encoder(run / "mined_filtered" / "model", 32)
        return {k: v.clone() for k, v in model.state_dict().items()}
    return "done"
