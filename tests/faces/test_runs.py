"""Validation people and run records: evaluate and resume refuse a run whose config or data
changed since it was trained."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from faces_fixtures import TINY, make_faces
from PIL import Image

from tripletkit.cli.settings import load_config
from tripletkit.faces import experiment as faces
from tripletkit.faces.datasets import load_faces
from tripletkit.faces.images import ImageSet
from tripletkit.faces.runs import Fold, check_batches, folds, validation_people
from tripletkit.faces.scratch import FaceBatches


def _cfg(source, *extra):
    return load_config(
        None, [*TINY, f"data.source={source}", "data.val_people=2", "train.epochs=1", *extra]
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    source = make_faces(root / "faces", identities=10, per_id=4)
    cfg = _cfg(source)
    faces.train(cfg, root / "run", progress=False)
    return root, source, cfg


def test_validation_people_are_carved_from_training_people_seeded_and_disjoint(trained):
    root, source, cfg = trained
    data = load_faces(cfg.data)
    labels = data.labels.numpy()
    plan = folds(cfg.data, data)
    again = folds(cfg.data, data)
    assert all(np.array_equal(a.val, b.val) for a, b in zip(plan, again, strict=True))
    for fold in plan:
        people = [set(labels[ix]) for ix in (fold.train, fold.val, fold.test)]
        assert len(people[1]) == 2 and len(people[2]) == 5 and len(people[0]) == 3
        assert not (people[0] & people[1] or people[0] & people[2] or people[1] & people[2])
        assert len(fold.train) + len(fold.val) + len(fold.test) == len(labels)
    other_seed = folds(load_config(None, [*TINY, "data.val_people=2", "data.seed=5"]).data, data)
    assert any(not np.array_equal(a.val, b.val) for a, b in zip(plan, other_seed, strict=True))


def test_too_many_validation_people_is_named():
    with pytest.raises(ValueError, match="data.val_people must be in 0..3 .*got 4"):
        validation_people(np.arange(5), 4, [0, 0])


def test_run_records_each_folds_people_and_the_config_hash(trained):
    root, _, cfg = trained
    record = json.loads((root / "run" / "run.json").read_text())
    assert set(record) >= {"config_hash", "data_digest", "folds"}
    for name in ("fold0", "fold1"):
        parts = record["folds"][name]
        assert [len(parts[k]) for k in ("train", "validation", "test")] == [3, 2, 5]
    meta = json.loads((root / "run" / "fold0" / "model.json").read_text())
    assert meta["calibration"].startswith("2 validation people")


def test_evaluate_refuses_a_run_whose_config_changed(trained):
    root, _, cfg = trained
    run = root / "run"
    path = run / "config.yaml"
    original = path.read_text()
    changed = yaml.safe_load(original)
    changed["loss"]["margin"] = 0.5
    path.write_text(yaml.safe_dump(changed))
    try:
        with pytest.raises(ValueError, match=r"cannot evaluate .*loss\.margin 0\.2 -> 0\.5"):
            faces.evaluate(run, progress=False)
    finally:
        path.write_text(original)


def test_evaluate_refuses_a_run_whose_data_changed(tmp_path):
    source = make_faces(tmp_path / "faces", identities=10, per_id=4)
    cfg = _cfg(source)
    faces.train(cfg, tmp_path / "run", progress=False)
    Image.new("L", (24, 20), 3).save(source / "person03" / "1.png")
    with pytest.raises(ValueError, match="cannot evaluate .*data: the image files differ"):
        faces.evaluate(tmp_path / "run", progress=False)


def test_resume_refuses_other_settings_and_allows_run_only_ones(trained):
    root, source, cfg = trained
    with pytest.raises(ValueError, match=r"cannot resume .*data\.val_people 2 -> 1"):
        faces.train(_cfg(source, "data.val_people=1"), root / "run", resume=True, progress=False)
    # which folds run, and where, are not what a run computes
    faces.train(_cfg(source, "train.threads=2"), root / "run", resume=True, progress=False)


def test_evaluate_scores_on_test_people_with_the_record_intact(trained):
    root, _, _ = trained
    summary = faces.evaluate(root / "run", progress=False)
    assert summary["tripletkit"]["eer"]["folds"] == 2


def test_ablation_arms_with_the_dlib_backbone_are_refused(tmp_path):
    cfg = load_config(None, ["model.backbone=dlib", "ablation=[hard]"])
    with pytest.raises(ValueError, match="ablation arms .* model.backbone=scratch"):
        faces.train(cfg, tmp_path / "run", progress=False)


def test_an_unknown_backbone_is_named(tmp_path):
    cfg = load_config(None, ["model.backbone=resnet"])
    with pytest.raises(
        ValueError, match="model.backbone must be 'scratch' or 'dlib', got 'resnet'"
    ):
        faces.train(cfg, tmp_path / "run", progress=False)


@pytest.mark.parametrize("config", ["configs/orl.yaml", "configs/orl-scratch.yaml"])
def test_shipped_face_configs_fill_their_batches_on_every_fold(config):
    """Each shipped ORL config's P x K batches fit the training people of every fold: a config
    asking for more people per batch than a fold trains on fails before its first step."""
    cfg = load_config(config)
    data = load_faces(cfg.data)
    plan = folds(cfg.data, data)
    assert len(plan) == cfg.data.folds
    for fold in plan:
        train = data.subset(fold.train)
        assert len(np.unique(train.labels.numpy())) == 40 - 10 - cfg.data.val_people
        batch = next(iter(FaceBatches(train, cfg).sampler))
        assert len(batch) == cfg.train.p * cfg.train.k


def test_demo_report_quotes_a_scratch_run_only_with_the_same_people(tmp_path):
    from tripletkit.faces.dlib_report import _quote_scratch

    split = {"fold0": {"train": ["a", "b"], "validation": ["c"], "test": ["d"]}}
    scratch_metrics = {"tripletkit": {"eer": {"mean": 0.07, "std": 0.01}}}
    run, scratch = tmp_path / "demo", tmp_path / "demo-scratch"
    for folder in (run, scratch):
        folder.mkdir()
        (folder / "run.json").write_text(json.dumps({"folds": split}))
    (scratch / "metrics.json").write_text(json.dumps(scratch_metrics))
    cfg = load_config("configs/orl.yaml")
    summary: dict = {}
    assert _quote_scratch(run, cfg, summary) == scratch / "metrics.json"
    assert summary["scratch"] == scratch_metrics["tripletkit"]

    moved = {"fold0": {"train": ["a", "c"], "validation": ["b"], "test": ["d"]}}
    (scratch / "run.json").write_text(json.dumps({"folds": moved}))
    summary = {}
    assert _quote_scratch(run, cfg, summary) is None and summary == {}
    (scratch / "run.json").unlink()
    assert _quote_scratch(run, cfg, summary) is None and summary == {}


def test_one_fold_alone_draws_the_people_of_that_fold_of_a_full_run(tmp_path):
    """data.fold=N does not change results: fold N alone has the training, validation and
    test people of fold N of a full run (the validation draw is seeded by the fold's number,
    not its position in the list of folds that run)."""
    source = make_faces(tmp_path / "faces", identities=12, per_id=2)
    settings = [*TINY, f"data.source={source}", "data.folds=3", "data.val_people=3"]
    full_cfg = load_config(None, [*settings, "data.fold=all"])
    data = load_faces(full_cfg.data)
    full = folds(full_cfg.data, data)
    assert [f.name for f in full] == ["fold0", "fold1", "fold2"]
    for n, whole in enumerate(full):
        (alone,) = folds(load_config(None, [*settings, f"data.fold={n}"]).data, data)
        assert alone.name == whole.name
        for part in ("train", "val", "test"):
            assert np.array_equal(getattr(alone, part), getattr(whole, part)), (n, part)
    # the folds of a full run draw their validation people with seeds [seed, fold number]
    # (the draw make demo's published numbers were made with)
    people = np.unique(data.labels.numpy())
    for n, whole in enumerate(full):
        test_people = np.unique(data.labels.numpy()[whole.test])
        trainable = np.setdiff1d(people, test_people)
        expected = validation_people(trainable, 3, [full_cfg.data.seed, n])
        assert np.array_equal(np.unique(data.labels.numpy()[whole.val]), expected)


def test_a_batch_the_folds_training_people_cannot_fill_is_refused_before_any_file(tmp_path):
    """Issue 19: `train --data FOLDER` with the default train.p=30 on a folder of few people
    failed inside the sampler, after the run folder was written, without naming what to set."""
    source = make_faces(tmp_path / "faces", identities=12, per_id=2)
    cfg = load_config(None, [*TINY, f"data.source={source}", "data.folds=3", "data.val_people=3",
                             "train.p=30"])  # fmt: skip
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"train\.p=30 .* fold0 trains on 5 people") as err:
        faces.train(cfg, run, progress=False)
    assert "4 held out for test, 3 for validation" in str(err.value)
    assert "--set train.p=5" in str(err.value)
    assert not run.exists()


def test_an_adaptation_batch_the_training_people_cannot_fill_is_refused_by_name():
    labels = torch.arange(6).repeat_interleave(3)
    data = ImageSet(torch.zeros(18, 1, 4, 4), labels, [f"p{i}" for i in range(6)], [""] * 18)
    plan = [Fold("fold0", np.arange(15), np.arange(15, 18))]
    fits = ["model.backbone=dlib", "train.p=5", "data.lowres=[1, 4]"]
    check_batches(load_config(None, [*fits, "adapt.p=12"]), data, plan)  # no adaptation: fine
    with pytest.raises(ValueError, match=r"adapt\.p=12 .* fold0 trains on 5 people") as err:
        check_batches(load_config(None, [*fits, "adapt.levels=1", "adapt.p=12"]), data, plan)
    assert "--set adapt.p=5" in str(err.value)
