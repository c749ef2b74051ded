"""`tripletkit evaluate RUN --people FOLDER`: a run's models scored on people the user names."""

import itertools
import json
import shutil

import numpy as np
import pytest
import torch
from faces_fixtures import TINY, make_faces

from tripletkit.cli import main
from tripletkit.cli.settings import load_config
from tripletkit.faces.held_out import evaluate_people, scores
from tripletkit.faces.images import orl_root
from tripletkit.faces.models import load_face_model, read_meta, save_model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("held-out")
    faces = make_faces(root / "faces", identities=8)
    args = ["train", "--data", str(faces), "--name", "t", "--runs", str(root / "runs"), "--quiet"]
    for item in TINY + ["data.val_people=2", "train.p=2"]:  # thresholds from validation people
        args += ["--set", item]
    assert main(args) == 0
    return root / "runs" / "t", faces


def test_a_model_records_the_people_it_trained_on(run):
    folder, faces = run
    people = sorted(p.name for p in faces.iterdir())
    for fold in ("fold0", "fold1"):
        meta = read_meta(folder / fold)
        trained, calibrated = set(meta["training_people"]), set(meta["calibration_people"])
        assert trained and calibrated and not trained & calibrated
        assert trained | calibrated < set(people)  # the fold's test people are in neither


def test_scores_new_people_with_intervals_and_the_model_threshold(run, tmp_path, capsys):
    folder, _ = run
    others = make_faces(tmp_path / "others", identities=4, per_id=3, seed=7, prefix="other")
    assert main(["evaluate", str(folder), "--people", str(others), "--quiet"]) == 0
    out = json.loads((folder / "people-others.json").read_text())
    assert (out["people"], out["photos"]) == (4, 12)
    assert set(out["models"]) == {"fold0", "fold1"}
    assert "| fold0 |" in capsys.readouterr().out
    for name, row in out["models"].items():
        model = load_face_model(folder / name)
        files = sorted(others.rglob("*.png"))
        from PIL import Image

        emb = model.embed(torch.stack([model.prepare(Image.open(f).convert("RGB")) for f in files]))
        labels = [f.parent.name for f in files]
        # the loop oracle: every pair once, at the model's own threshold
        accepted = {True: [], False: []}
        for i, j in itertools.combinations(range(len(files)), 2):
            d = float(np.linalg.norm(emb[i] - emb[j]))
            accepted[labels[i] == labels[j]].append(d <= model.threshold)
        assert row["false_accept_rate"] == pytest.approx(np.mean(accepted[False]))
        assert row["false_reject_rate"] == pytest.approx(1 - np.mean(accepted[True]))
        assert row["threshold"] == model.threshold
        for metric in ("eer", "val_at_far_1e-3"):
            low, high = row["interval"][metric]
            assert low <= high and low >= 0.0 and high <= 1.0
        assert "minus_pretrained" not in row  # no dlib model: no pretrained reference


def test_people_a_model_trained_on_are_refused_by_name(run, tmp_path, capsys):
    folder, faces = run
    trained = read_meta(folder / "fold0")["training_people"]
    mixed = make_faces(tmp_path / "mixed", identities=2, per_id=2, seed=3, prefix="new")
    shutil.copytree(faces / trained[0], mixed / trained[0])
    assert main(["evaluate", str(folder), "--people", str(mixed), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert trained[0] in err and "fold0" in err and "not seen" in err
    assert not (folder / "people-mixed.json").exists()


@pytest.mark.parametrize(
    ("layout", "message"),
    [({"a": 1, "b": 1}, "one of them with two photos"), ({"a": 3}, "at least two people")],
)
def test_a_folder_too_small_to_score_is_named(run, tmp_path, layout, message):
    folder, faces = run
    people = tmp_path / "people"
    source = sorted(faces.rglob("*.png"))
    for name, count in layout.items():
        (people / name).mkdir(parents=True)
        for k in range(count):
            shutil.copy(source[k], people / name / f"{k}.png")
    with pytest.raises(ValueError, match=message):
        evaluate_people(folder, people, progress=False)


def test_an_older_model_folder_without_its_people_is_scored_with_a_warning(run, tmp_path):
    folder, _ = run
    old = tmp_path / "old"
    shutil.copytree(folder / "fold0", old / "fold0")
    meta = json.loads((old / "fold0" / "model.json").read_text())
    del meta["training_people"]
    (old / "fold0" / "model.json").write_text(json.dumps(meta))
    others = make_faces(tmp_path / "others", identities=3, per_id=2, seed=5, prefix="other")
    with pytest.warns(UserWarning, match="does not record its training people"):
        out = evaluate_people(old, others, progress=False)
    assert set(out["models"]) == {"fold0"}


def test_scores_of_hand_made_embeddings():
    # two people, two photos each, on a line: same-person pairs at 0.1, others at 1.0 or more
    emb = np.array([[0.0, 0.0], [0.1, 0.0], [1.0, 0.0], [1.1, 0.0]])
    got = scores(emb, np.array([0, 0, 1, 1]), threshold=0.5)
    assert got["eer"] == 0.0 and got["rank1"] == 1.0 and got["map_at_r"] == 1.0
    assert got["false_accept_rate"] == 0.0 and got["false_reject_rate"] == 0.0
    got = scores(emb, np.array([0, 0, 1, 1]), threshold=0.05)
    assert got["false_reject_rate"] == 1.0


def test_a_dlib_model_is_compared_with_the_pretrained_descriptor(tmp_path):
    pytest.importorskip("dlib")
    from tripletkit.faces.pretrained import load_dlib_resnet

    people = tmp_path / "orl"
    for person in ("s1", "s2", "s3"):
        (people / person).mkdir(parents=True)
        for k in (1, 2):
            shutil.copy(orl_root() / person / f"{k}.pgm", people / person / f"{k}.pgm")
    cfg = load_config(None, ["model.backbone=dlib"])
    run = tmp_path / "run"
    thresholds = {"threshold": 0.6, "cluster_threshold": 0.6}
    # the pretrained network itself, saved as if fine-tuned: its difference must be exactly 0
    save_model(run / "fold0", load_dlib_resnet(), cfg, thresholds, kind="dlib", trained_on=["s9"])
    out = evaluate_people(run, people, progress=False)
    assert list(out["models"]) == ["pretrained dlib", "fold0"]
    assert read_meta(run / "fold0")["started_from"].startswith("dlib_face_recognition")
    diff = out["models"]["fold0"]["minus_pretrained"]["eer"]
    assert abs(diff["difference"]) < 1e-6 and abs(diff["low"]) < 1e-6 and abs(diff["high"]) < 1e-6
