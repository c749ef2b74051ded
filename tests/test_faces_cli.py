import json

import numpy as np
import pytest
from faces_fixtures import TINY, make_faces

from tripletkit.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    faces = make_faces(root / "faces")
    args = ["train", "--data", str(faces), "--name", "t", "--runs", str(root / "runs"), "--quiet"]
    for item in TINY + ["ablation=[hard, semi-hard-curriculum]"]:
        args += ["--set", item]
    assert main(args) == 0
    return root, faces


def test_train_writes_a_model_per_fold_and_arm(trained):
    root, _ = trained
    run = root / "runs" / "t"
    for fold in ("fold0", "fold1"):
        assert (run / fold / "model.safetensors").exists()
        assert (run / "ablation" / "hard" / fold / "model.json").exists()
    # the semi-hard + curriculum arm is the main config: its models are the main ones
    assert not (run / "ablation" / "semi-hard-curriculum").exists()


def test_evaluate_writes_metrics_report_and_figures(trained, capsys):
    root, _ = trained
    run = root / "runs" / "t"
    assert main(["evaluate", str(run), "--quiet"]) == 0
    summary = json.loads((run / "metrics.json").read_text())
    assert set(summary) == {
        "tripletkit",
        "hard",
        "semi-hard-curriculum",
        "eigenfaces",
        "pixels",
        "untrained",
    }
    assert summary["semi-hard-curriculum"] == summary["tripletkit"]
    for key in (
        "verification_accuracy",
        "val_at_far_1e-3",
        "val_at_far_1e-2",
        "roc_auc",
        "eer",
        "rank1",
        "rank5",
        "map_at_r",
        "nmi",
        "ari",
    ):
        assert set(summary["tripletkit"][key]) == {"mean", "std"}
        assert 0.0 <= summary["tripletkit"][key]["mean"] <= 1.0
    report = (run / "report.md").read_text()
    for figure in ("roc.png", "distances.png", "map.png", "training.png", "clusters.png"):
        assert (run / figure).stat().st_size > 1000
        assert f"({figure})" in report
    assert "report:" in capsys.readouterr().out


def test_embed_cluster_verify(trained, tmp_path, capsys):
    root, faces = trained
    model = str(root / "runs" / "t" / "fold0")
    assert main(["embed", str(faces), "--model", model, "--out", str(tmp_path / "e.npz")]) == 0
    saved = np.load(tmp_path / "e.npz")
    assert saved["embeddings"].shape == (24, 8) and len(saved["paths"]) == 24
    assert (
        main(
            [
                "cluster",
                str(faces),
                "--model",
                model,
                "--out",
                str(tmp_path / "c"),
                "--clusters",
                "6",
            ]
        )
        == 0
    )
    groups = json.loads((tmp_path / "c" / "clusters.json").read_text())
    assert len(groups) == 6 and sum(len(v) for v in groups.values()) == 24
    capsys.readouterr()
    assert (
        main(
            [
                "verify",
                str(faces / "person00" / "0.png"),
                str(faces / "person00" / "1.png"),
                "--model",
                model,
            ]
        )
        == 0
    )
    answer = json.loads(capsys.readouterr().out)
    assert set(answer) == {"distance", "threshold", "same_person"}


def test_errors_name_the_problem(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["train", "--set", "train.bogus=1"]) == 2
    assert "unknown key" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "evaluate", "demo", "embed", "cluster", "verify"])
def test_help_of_each_command(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert len(capsys.readouterr().out) > 200


def test_detect_flag_crops_faces_before_embedding(trained, tmp_path):
    from test_detect import photo

    root, _ = trained
    photos = tmp_path / "photos"
    photos.mkdir()
    for person in (1, 2, 3):
        photo(person).save(photos / f"p{person}.png")
    model = str(root / "runs" / "t" / "fold0")
    out = tmp_path / "e.npz"
    assert main(["embed", str(photos), "--model", model, "--detect", "--out", str(out)]) == 0
    assert np.load(out)["embeddings"].shape == (3, 8)


def test_pairs_file_drives_the_verification_accuracy():
    from tripletkit import metrics
    from tripletkit.tasks.faces import Fold, _fold_pairs

    pairs = (np.array([[0, 1], [2, 3], [0, 5], [1, 4]]), np.array([True, True, False, False]))
    fold = Fold("fold0", train=np.array([4, 5]), test=np.array([0, 1, 2, 3]))
    index, same = _fold_pairs(pairs, fold)  # pairs touching training images are dropped
    assert index.tolist() == [[0, 1], [2, 3]] and same.tolist() == [True, True]
    x = np.array([[0.0], [0.1], [5.0], [5.1], [9.0]])
    labels = np.array([0, 0, 1, 1, 2])
    dist = metrics.distance_matrix(x)
    chosen = (np.array([[0, 1], [0, 2], [2, 3], [3, 4]]), np.array([True, False, True, False]))
    assert metrics.verification(dist, labels, pairs=chosen)["verification_accuracy"] == 1.0
