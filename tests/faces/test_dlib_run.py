"""A whole dlib-backbone run on tiny data: chips at two resolutions, fine-tuning with a cached
trunk, calibration on validation people, evaluation and the report."""

from __future__ import annotations

import json

import pytest
import torch
from faces_fixtures import make_faces

from tripletkit.cli.settings import load_config
from tripletkit.faces import experiment as faces
from tripletkit.faces.dlib_run import variant_suffix


def _pretrained_available() -> bool:
    try:
        import dlib  # noqa: F401

        from tripletkit.faces.pretrained import package_file

        package_file("dlib_face_recognition_resnet_model_v1.dat")
    except (ImportError, ValueError):
        return False
    return True


pytestmark = pytest.mark.skipif(not _pretrained_available(), reason="dlib models not installed")


def test_variant_suffixes():
    assert variant_suffix(1, (1, 4)) == "" and variant_suffix(4, (1, 4)) == "-lowres"
    assert variant_suffix(4, (1, 2, 4)) == "-lowres4"


def test_a_dlib_run_fine_tunes_evaluates_and_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIPLETKIT_CACHE", str(tmp_path / "cache"))
    from tripletkit.faces.pretrained import load_dlib_resnet

    load_dlib_resnet()  # converted once into this test's cache
    source = make_faces(tmp_path / "faces", identities=10, per_id=3, size=(48, 40))
    cfg = load_config(
        None,
        [
            f"data.source={source}",
            "data.folds=2",
            "data.val_people=2",
            "data.lowres=[1, 4]",
            "data.height=24",
            "data.width=20",
            "model.backbone=dlib",
            "model.train_levels=1",
            "model.mix_resolutions=true",
            "train.max_steps=2",
            "train.p=3",
            "train.k=2",
            "train.warmup_steps=0",
            "train.threads=1",
        ],
    )
    run = tmp_path / "runs" / "demo"
    folders = faces.train(cfg, run, progress=False)
    assert sorted(str(p.relative_to(run)) for p in folders) == [
        "fold0",
        "fold1",
        "lowres4/fold0",
        "lowres4/fold1",
    ]
    meta = json.loads((run / "lowres4" / "fold0" / "model.json").read_text())
    assert meta["kind"] == "dlib" and meta["calibration"].startswith("2 validation people")
    assert (run / "fold0" / "val_log.jsonl").exists()
    summary = faces.evaluate(run, progress=False)
    methods = {"pretrained", "finetuned", "eigenfaces", "pixels"}
    assert set(summary) == methods | {m + "-lowres" for m in methods}
    assert set(json.loads((run / "metrics.json").read_text())) == set(summary)
    assert summary["finetuned"]["eer"]["folds"] == 2
    report = (run / "report.md").read_text()
    for figure in ("roc.png", "roc-lowres.png", "distances.png", "validation.png"):
        assert (run / figure).stat().st_size > 1000
        assert f"({figure})" in report
    assert "95% interval" in report
    intervals = json.loads((run / "intervals.json").read_text())
    low, high = intervals["finetuned"]["eer"]
    assert 0.0 <= low <= high <= 1.0
    protocols = json.loads((run / "protocols.json").read_text())
    assert set(protocols) == {"full same camera", "lowres same camera", "lowres clean gallery"}
    gallery = protocols["lowres clean gallery"]
    assert gallery["finetuned"]["eer"]["folds"] == 2
    assert set(gallery["difference"]) == {"eer", "val_at_far_1e-3"}
    assert "| lowres | clean gallery |" in report and "target at most half" in report


def test_an_unknown_detector_is_named(tmp_path):
    from tripletkit.faces.dlib_run import chip_sets

    cfg = load_config(None, ["model.backbone=dlib", "data.detector=mtcnn"])
    with pytest.raises(ValueError, match=r"data.detector must be one of \('hog', 'cnn'\)"):
        chip_sets(cfg, progress=False)


def test_a_camera_adapted_run_shares_its_adapted_levels_across_resolutions(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIPLETKIT_CACHE", str(tmp_path / "cache"))
    from safetensors.torch import load_file

    from tripletkit.faces.pretrained import load_dlib_resnet

    pretrained = load_dlib_resnet().state_dict()
    source = make_faces(tmp_path / "faces", identities=8, per_id=3, size=(48, 40))
    cfg = load_config(
        None,
        [
            f"data.source={source}",
            "data.folds=2",
            "data.fold=0",
            "data.val_people=2",
            "data.lowres=[1, 4]",
            "model.backbone=dlib",
            "model.train_levels=1",
            "adapt.levels=1",
            "adapt.steps=2",
            "adapt.p=2",
            "adapt.k=2",
            "train.max_steps=2",
            "train.p=2",
            "train.k=2",
            "train.warmup_steps=0",
            "train.threads=1",
        ],
    )
    run = tmp_path / "runs" / "camera"
    faces.train(cfg, run, progress=False)
    assert (run / "adapt" / "fold0" / "val_log.jsonl").exists()
    weights = {}
    for folder in ("fold0", "lowres4/fold0"):
        meta = json.loads((run / folder / "model.json").read_text())
        assert meta["adapted_to"] == ["x1", "x4"]
        assert meta["config"]["adapt"]["levels"] == 1 and meta["started_from"]
        weights[folder] = load_file(str(run / folder / "model.safetensors"))
    full, low = weights["fold0"], weights["lowres4/fold0"]
    # one adapted stem and first level per fold, under each resolution's own fine-tuned top
    for key in (k for k in full if k.startswith(("stem.", "levels.0."))):
        assert torch.equal(full[key], low[key]), key
    assert not torch.equal(full["stem.0.weight"], pretrained["stem.0.weight"])
    assert not torch.equal(full["fc.weight"], low["fc.weight"])
    for key in (k for k in full if k.startswith(("levels.1.", "levels.2.", "levels.3."))):
        assert torch.equal(full[key], pretrained[key]), key
    summary = faces.evaluate(run, progress=False)
    assert summary["finetuned-lowres"]["eer"]["folds"] == 1
    report = (run / "report.md").read_text()
    assert "first adapted to the run's cameras" in report and "(adaptation.png)" in report
    assert (run / "adaptation.png").stat().st_size > 1000
