"""Triplet fine-tuning of the dlib descriptor on cached trunk features (tiny, random data)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tripletkit.cli.settings import load_config
from tripletkit.faces.dlib_resnet import DlibResNet
from tripletkit.faces.finetune import (
    Tail,
    finetune,
    first_trained_level,
    tail_embed,
    trunk_features,
)

SMALL = ["train.p=2", "train.k=2", "train.max_steps=3", "train.warmup_steps=0", "train.lr=1e-3"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    net = DlibResNet().eval()
    chips = torch.randint(0, 256, (8, 3, 150, 150), dtype=torch.uint8)
    labels = torch.arange(4).repeat_interleave(2)
    return net, chips, labels


def test_cached_trunk_then_tail_is_the_whole_network(tiny):
    net, chips, _ = tiny
    features = trunk_features(net, chips, 3, mirror=True, progress=False)
    assert features.shape[:2] == (8, 2)
    with torch.no_grad():
        whole = net(chips.float()).numpy()
        mirrored = net(torch.flip(chips.float(), dims=[3])).numpy()
    assert np.allclose(tail_embed(Tail(net, 3), features), whole, atol=1e-5)
    assert np.allclose(tail_embed(Tail(net, 3), features[:, 1:]), mirrored, atol=1e-5)


def test_fine_tuning_trains_the_top_levels_and_leaves_the_frozen_ones(tiny, tmp_path):
    net, chips, labels = tiny
    cfg = load_config(None, ["model.backbone=dlib", "model.train_levels=1", *SMALL])
    start = first_trained_level(cfg)
    assert start == 4
    before = {k: v.clone() for k, v in net.state_dict().items()}
    features = trunk_features(net, chips, start, mirror=True, progress=False)
    val = {"x1": (features, labels.numpy())}
    tuned = finetune(net, features, labels, cfg, tmp_path / "fold0", val=val, progress=False)
    for key, value in net.state_dict().items():  # the pretrained network is not touched
        assert torch.equal(value, before[key]), key
    changed = {k for k, v in tuned.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("levels.4.", "fc.")) for k in changed)
    # the cached features still are the tuned network's trunk: tail(cache) = network(chip)
    with torch.no_grad():
        whole = tuned(chips.float()).numpy()
    assert np.allclose(tail_embed(Tail(tuned, start), features), whole, atol=1e-5)
    # step 0 of the validation log is the pretrained model
    rows = [json.loads(line) for line in (tmp_path / "fold0" / "val_log.jsonl").open()]
    assert [r["step"] for r in rows] == [0, 3]
    from tripletkit.faces.finetune import validation_scores

    assert rows[0] == {"step": 0, **validation_scores(Tail(net, start), val)}
    assert (tmp_path / "fold0" / "checkpoint.pt").exists()


def test_zero_levels_keeps_the_pretrained_network(tiny, tmp_path):
    net, chips, labels = tiny
    cfg = load_config(None, ["model.backbone=dlib", "model.train_levels=0", *SMALL])
    features = torch.zeros(8, 1, 256, 2, 2)
    tuned = finetune(net, features, labels, cfg, tmp_path / "f", progress=False)
    assert tuned is not net
    for key, value in tuned.state_dict().items():
        assert torch.equal(value, net.state_dict()[key])


def test_train_levels_out_of_range_is_named():
    cfg = load_config(None, ["model.train_levels=6"])
    with pytest.raises(ValueError, match="model.train_levels must be in 0..5"):
        first_trained_level(cfg)
