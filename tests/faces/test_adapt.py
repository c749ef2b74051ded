"""Camera adaptation of the dlib descriptor: the lowest levels distilled toward the frozen
network's clean embeddings (tiny, random data and a randomly initialised network)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tripletkit.cli.settings import load_config
from tripletkit.faces.adapt import CameraViews, Student, adapt, adapt_scores, check_adapt
from tripletkit.faces.dlib_resnet import DlibResNet
from tripletkit.faces.models import embed_chips
from tripletkit.losses import TripletLoss
from tripletkit.train import StepLoss

BASE = ["model.backbone=dlib", "data.lowres=[1, 4]", "model.train_levels=0"]
SMALL = ["adapt.levels=1", "adapt.steps=3", "adapt.p=2", "adapt.k=2", "adapt.lr=1e-3"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    net = DlibResNet().eval()
    clean = torch.randint(0, 256, (8, 3, 150, 150), dtype=torch.uint8)
    degraded = (clean // 32 * 32).to(torch.uint8)  # a coarser "camera"
    labels = torch.arange(4).repeat_interleave(2)
    return net, {1: clean, 4: degraded}, labels


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.backbone=scratch", "adapt.levels=1"], "set model.backbone=dlib"),
        ([*BASE, "adapt.levels=6"], "adapt.levels must be in 0..5"),
        ([*BASE, "adapt.levels=2", "model.train_levels=4"], "overlap: their sum must be"),
        (["model.backbone=dlib", "data.lowres=[4]", "adapt.levels=1"], "data.lowres must hold 1"),
        (["model.backbone=dlib", "data.lowres=[1]", "adapt.levels=1"], "data.lowres must hold 1"),
        ([*BASE, "adapt.levels=1", "adapt.steps=0"], "adapt.steps must be >= 1"),
        ([*BASE, "adapt.levels=1", "adapt.triplet=-1"], "adapt.triplet >= 0"),
    ],
)
def test_impossible_adaptations_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        check_adapt(load_config(None, overrides))


def test_no_adaptation_needs_nothing():
    check_adapt(load_config(None, ["model.backbone=scratch"]))


def test_the_student_trains_only_its_lowest_levels(tiny):
    net, chips, _ = tiny
    student = Student(net, 2)
    trained = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trained and all(
        n.startswith(("net.stem.", "net.levels.0.", "net.levels.1.")) for n in trained
    )
    with torch.no_grad():
        assert torch.equal(student(chips[1][:2].float()), net(chips[1][:2].float()))
    assert student.net is not net


def _step_loss() -> StepLoss:
    loss = TripletLoss(margin=0.2, mining="hard")
    return StepLoss(loss, 0.2, 0.0)


def test_a_clean_view_of_the_untrained_student_costs_no_distillation(tiny):
    net, chips, labels = tiny
    targets = torch.from_numpy(embed_chips(net, chips[1]))
    cfg = load_config(None, [*BASE, *SMALL])
    views = torch.stack([chips[1], chips[1]], dim=1)  # both views clean
    source = CameraViews(views, targets, labels, cfg.adapt)
    gen = torch.Generator().manual_seed(0)
    loss, stats = source.loss(Student(net, 1), _step_loss(), list(range(8)), gen, 0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)  # adapt.triplet = 0: distillation only
    assert stats.valid_triplets == 8 * 2 * 6  # positives: its own clean chip and one more


def test_the_loss_is_distillation_plus_weighted_cross_triplets(tiny):
    net, chips, labels = tiny
    targets = torch.from_numpy(embed_chips(net, chips[1]))
    views = chips[4][:, None]  # one view: the degraded chip
    student = Student(net, 1)
    with torch.no_grad():
        emb = student(chips[4].float())
    distill = ((emb - targets) ** 2).sum(1).mean().item()
    triplet, _ = _step_loss().cross(emb, labels, targets, labels)
    for weight in (0.0, 0.5):
        cfg = load_config(None, [*BASE, *SMALL, f"adapt.triplet={weight}"])
        source = CameraViews(views, targets, labels, cfg.adapt)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            loss, _ = source.loss(student, _step_loss(), list(range(8)), gen, 0)
        assert loss.item() == pytest.approx(distill + weight * triplet.item(), rel=1e-5)
    assert distill > 0


def test_adaptation_moves_only_the_lowest_levels_and_logs_validation(tiny, tmp_path):
    net, chips, labels = tiny
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = load_config(None, [*BASE, *SMALL, "model.eval_every=0"])
    val = ({f: c[:4] for f, c in chips.items()}, labels[:4].numpy())
    out = tmp_path / "adapt" / "fold0"
    adapted = adapt(net, chips, labels, cfg, out, val=val, progress=False)
    for key, value in net.state_dict().items():  # the teacher is not touched
        assert torch.equal(value, before[key]), key
    changed = {k for k, v in adapted.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("stem.", "levels.0.")) for k in changed)
    rows = [json.loads(line) for line in (out / "val_log.jsonl").open()]
    assert [r["step"] for r in rows] == [0, 3]
    assert rows[0] == {"step": 0, **adapt_scores(net, *val)}
    assert set(rows[0]) == {
        "step",
        *(f"{n}/{m}" for n in ("x1", "x4", "clean-x4") for m in ("eer", "val_at_far_1e-3")),
    }
    log = [json.loads(line) for line in (out / "train_log.jsonl").open()]
    assert len(log) == 3 and all(np.isfinite(r["loss"]) for r in log)
    # resuming the finished adaptation gives the same network without training again
    again = adapt(net, chips, labels, cfg, out, val=val, resume=True, progress=False)
    for key, value in adapted.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 3
