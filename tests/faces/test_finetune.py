"""Triplet fine-tuning of the dlib descriptor on cached trunk features (tiny, random data)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tripletkit.cli.settings import load_config
from tripletkit.faces.dlib_resnet import DlibResNet
from tripletkit.faces.finetune import (
    FeatureBatches,
    Tail,
    finetune,
    first_trained_level,
    tail_embed,
    trunk_features,
)
from tripletkit.train import StepLoss, loss_from_config

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


class _Seen(torch.nn.Module):
    """A stand-in tail that records its input rows and embeds each by its first number."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(x.detach().clone())
        return torch.nn.functional.normalize(x.flatten(1)[:, :2] + 1.0, dim=1)


def test_feature_batches_draw_each_example_or_its_mirror_at_random():
    """Each example of a batch is its chip's features (view 0) or its mirror's (view 1), each
    with probability 1/2, drawn from the step's generator: a source that stopped drawing the
    mirrored view (or always drew it) fails here."""
    n, views = 8, 2
    # features[i, v] is filled with 10 i + v: which example and which view a row shows
    features = (
        (10.0 * torch.arange(n)[:, None] + torch.arange(views)[None, :])
        .reshape(n, views, 1, 1, 1)
        .expand(n, views, 1, 2, 2)
        .contiguous()
    )
    labels = torch.arange(4).repeat_interleave(2)
    cfg = load_config(None, ["model.backbone=dlib", "train.p=4", "train.k=2"])
    source = FeatureBatches(features, labels, cfg)
    model, gen, drawn = _Seen(), torch.Generator().manual_seed(0), []
    step_loss = StepLoss(loss_from_config(cfg.loss), margin=0.2, offset=0.0)
    batch = list(range(n))
    for step in range(200):
        source.loss(model, step_loss, batch, gen, step)
        value = model.rows[-1][:, 0, 0, 0]
        assert torch.equal((value // 10).long(), torch.as_tensor(batch))  # its own example
        drawn.append(value % 10)
    view = torch.cat(drawn)
    assert set(view.tolist()) == {0.0, 1.0}
    share = float(view.mean())  # 1600 draws: 1/2 +- 0.0125 (1 sd); the seed fixes the draw
    assert 0.45 < share < 0.55, share
    # the draw is the step generator's: the same seed draws the same views
    source.loss(model, step_loss, batch, torch.Generator().manual_seed(0), 0)
    assert torch.equal(model.rows[-1][:, 0, 0, 0] % 10, drawn[0])
    # one view cached (no mirror): always the chip itself
    plain = FeatureBatches(features[:, :1], labels, cfg)
    model = _Seen()
    plain.loss(model, step_loss, list(range(8)), torch.Generator().manual_seed(0), 0)
    assert torch.equal(model.rows[-1][:, 0, 0, 0] % 10, torch.zeros(8))


def test_fine_tuning_learns_from_the_mirrored_features(tiny, tmp_path):
    """The tuned weights depend on the mirrored view of the cache: with view 1 replaced by the
    chip's own features they come out otherwise (and the same features tune the same)."""
    net, chips, labels = tiny
    cfg = load_config(None, ["model.backbone=dlib", "model.train_levels=1", *SMALL])
    features = trunk_features(net, chips, first_trained_level(cfg), mirror=True, progress=False)
    assert not torch.equal(features[:, 0], features[:, 1])
    unmirrored = features[:, :1].expand_as(features).contiguous()

    def tuned(feats, name):
        model = finetune(net, feats, labels, cfg, tmp_path / name, progress=False)
        return {k: v.clone() for k, v in model.state_dict().items()}

    with_mirror, again = tuned(features, "a"), tuned(features, "b")
    without = tuned(unmirrored, "c")
    assert all(torch.equal(with_mirror[k], again[k]) for k in with_mirror)
    assert any(not torch.equal(with_mirror[k], without[k]) for k in with_mirror)
