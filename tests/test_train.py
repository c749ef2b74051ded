import json
import math

import pytest
import torch
from faces_fixtures import TINY, make_faces

from tripletkit.config import load_config
from tripletkit.data.images import load_identities
from tripletkit.tasks.faces import train_model


@pytest.fixture()
def tiny(tmp_path):
    data = load_identities(make_faces(tmp_path / "faces"), (20, 16))
    return load_config(None, TINY + ["train.epochs=3"]), data


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, tiny):
    cfg, data = tiny
    straight = train_model(cfg, data, tmp_path / "a", progress=False)
    train_model(cfg, data, tmp_path / "b", progress=False, stop_after_epoch=0)
    resumed = train_model(cfg, data, tmp_path / "b", progress=False, resume=True)
    for (name, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    log_a = (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()
    log_b = (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()
    last_a, last_b = json.loads(log_a[-1]), json.loads(log_b[-1])
    assert last_a.pop("seconds") > 0 and last_b.pop("seconds") > 0
    assert len(log_a) == len(log_b) and last_a == last_b


def test_log_has_the_statistics_and_no_temporary_files_remain(tmp_path, tiny):
    cfg, data = tiny
    train_model(cfg, data, tmp_path / "run", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert {
        "loss",
        "lr",
        "offset",
        "margin",
        "active_fraction",
        "easy_fraction",
        "semihard_fraction",
        "hard_fraction",
        "mean_d_ap",
        "mean_d_an",
    } <= rows[0].keys()
    assert rows[0]["offset"] > rows[-1]["offset"]  # the default curriculum moved t
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "checkpoint.pt",
        "model.json",
        "model.safetensors",
        "train_log.jsonl",
    ]


def test_collapse_warns(tmp_path, tiny):
    cfg, data = tiny
    cfg = load_config(
        None,
        TINY
        + [
            "train.epochs=6",
            "train.lr=1.0",
            "loss.mining=hard",
            "loss.curriculum=none",
            "train.augment=false",
        ],
    )
    with pytest.warns(UserWarning, match="collapsing"):
        train_model(cfg, data, tmp_path / "run", progress=False)


def test_people_with_one_image_join_batches_as_negatives(tmp_path):
    from PIL import Image

    from tripletkit.tasks.faces import FaceBatches

    root = make_faces(tmp_path / "faces")
    for i in range(2):
        (root / f"loner{i}").mkdir()
        Image.new("L", (20, 24), 40 + 80 * i).save(root / f"loner{i}" / "a.png")
    data = load_identities(root, (20, 16))
    cfg = load_config(None, TINY)
    batches = FaceBatches(data, cfg)
    loners = {data.names.index("loner0"), data.names.index("loner1")}
    for batch in batches.sampler:
        labels = data.labels[batch].tolist()
        assert len(batch) == 3 * 2 + 2 and set(labels[-2:]) == loners


def test_bfloat16_autocast_trains_on_cpu(tmp_path, tiny):
    from tripletkit.tasks.faces import build_model

    _, data = tiny
    cfg = load_config(None, [*TINY, "train.epochs=1", "train.amp=true"])
    start = build_model(cfg).state_dict()
    model = train_model(cfg, data, tmp_path / "amp", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "amp" / "train_log.jsonl").read_text().splitlines()]
    assert rows and all(math.isfinite(r["loss"]) for r in rows)
    weights = model.state_dict()
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert not torch.equal(weights["head.weight"], start["head.weight"])
