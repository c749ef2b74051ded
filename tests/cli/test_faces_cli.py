import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from faces_fixtures import TINY, make_faces

from tripletkit.cli import main
from tripletkit.cli.settings import load_config
from tripletkit.faces.config import FacesConfig
from tripletkit.faces.models import load_model, model_saved, save_model
from tripletkit.faces.scratch import build_model


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
        assert set(summary["tripletkit"][key]) == {"mean", "std", "folds", "missing"}
        assert summary["tripletkit"][key]["folds"] == 2
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
    assert {"distance", "threshold", "same_person", "calibration", "faces"} == set(answer)


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
    from tripletkit.faces import metrics
    from tripletkit.faces.evaluation import fold_pairs
    from tripletkit.faces.runs import Fold

    pairs = (np.array([[0, 1], [2, 3], [0, 5], [1, 4]]), np.array([True, True, False, False]))
    fold = Fold("fold0", train=np.array([4, 5]), test=np.array([0, 1, 2, 3]))
    index, same = fold_pairs(pairs, fold)  # pairs touching training images are dropped
    assert index.tolist() == [[0, 1], [2, 3]] and same.tolist() == [True, True]
    x = np.array([[0.0], [0.1], [5.0], [5.1], [9.0]])
    labels = np.array([0, 0, 1, 1, 2])
    dist = metrics.distance_matrix(x)
    chosen = (np.array([[0, 1], [0, 2], [2, 3], [3, 4]]), np.array([True, False, True, False]))
    assert metrics.verification(dist, labels, pairs=chosen)["verification_accuracy"] == 1.0


def test_cluster_threshold_zero_is_used_not_replaced_by_the_models(trained, tmp_path):
    root, faces = trained
    model = tmp_path / "model"
    shutil.copytree(root / "runs" / "t" / "fold0", model)
    meta = json.loads((model / "model.json").read_text())
    meta["cluster_threshold"] = 1e6  # the model's own threshold puts everyone together
    (model / "model.json").write_text(json.dumps(meta))
    args = ["cluster", str(faces), "--model", str(model), "--out"]
    assert main([*args, str(tmp_path / "own")]) == 0
    assert len(json.loads((tmp_path / "own" / "clusters.json").read_text())) == 1
    assert main([*args, str(tmp_path / "zero"), "--threshold", "0"]) == 0
    assert len(json.loads((tmp_path / "zero" / "clusters.json").read_text())) == 24


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--threshold", "-1"], "--threshold must be a distance >= 0"),
        (["--clusters", "0"], "--clusters must be at least 1"),
        (["--clusters", "99"], "--clusters 99 is more than the 24 face"),
    ],
)
def test_cluster_options_out_of_range_are_errors(trained, tmp_path, capsys, extra, message):
    root, faces = trained
    model = str(root / "runs" / "t" / "fold0")
    assert main(["cluster", str(faces), "--model", model, "--out", str(tmp_path), *extra]) == 2
    assert message in capsys.readouterr().err


def _one_fold(faces: Path) -> FacesConfig:
    return load_config(None, [*TINY, f"data.source={faces}", "data.fold=0", "train.epochs=1"])


def test_kill_between_weights_and_model_json_leaves_no_finished_fold(tmp_path, monkeypatch):
    from tripletkit.faces import experiment as task
    from tripletkit.faces import models as face_models

    cfg = _one_fold(make_faces(tmp_path / "faces"))
    run, real_write_json = tmp_path / "run", face_models.write_json

    def killed_at_model_json(path, data):
        if Path(path).name == "model.json":
            raise KeyboardInterrupt("killed after the weights, before model.json")
        return real_write_json(path, data)

    monkeypatch.setattr(face_models, "write_json", killed_at_model_json)
    with pytest.raises(KeyboardInterrupt):
        task.train(cfg, run, progress=False)
    fold = run / "fold0"
    assert not (fold / "model.safetensors").exists()  # no weights without their model.json
    assert not model_saved(fold)
    assert (fold / "checkpoint.pt").exists()  # training itself is kept
    with pytest.raises(ValueError, match="no model in"):
        load_model(fold)
    monkeypatch.setattr(face_models, "write_json", real_write_json)
    task.train(cfg, run, resume=True, progress=False)  # the fold is not skipped as done
    assert model_saved(fold)
    assert load_model(fold)[1] == cfg
    assert sorted(p.name for p in fold.iterdir()) == [
        "checkpoint.pt",
        "model.json",
        "model.safetensors",
        "train_log.jsonl",
    ]
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_resume_does_not_count_weights_without_model_json_as_done(tmp_path):
    from tripletkit.faces import experiment as task

    cfg = _one_fold(make_faces(tmp_path / "faces"))
    fold = tmp_path / "run" / "fold0"
    fold.mkdir(parents=True)
    (fold / "model.safetensors").write_bytes(b"weights of an interrupted run")
    task.train(cfg, tmp_path / "run", resume=True, progress=False)
    assert load_model(fold)[1] == cfg  # trained, not skipped
    assert model_saved(fold)
    (fold / "model.json").write_text('{"threshold": 1.0}')  # no "weights": not complete
    assert not model_saved(fold)
    (fold / "model.json").write_text('{"weights": "model.safetensors", "threshold": 1.0')
    assert not model_saved(fold)  # cut short


def test_saving_over_a_model_keeps_the_old_one_until_the_new_one_is_complete(tmp_path, monkeypatch):

    cfg = _one_fold(make_faces(tmp_path / "faces"))
    fold = tmp_path / "fold0"
    model = build_model(cfg)
    save_model(fold, model, cfg, {"threshold": 0.5, "cluster_threshold": 0.7})
    (fold / "train_log.jsonl").write_text("{}\n")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    from tripletkit.faces import models as face_models

    monkeypatch.setattr(face_models, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        save_model(fold, model, cfg, {"threshold": 9.0, "cluster_threshold": 9.0})
    assert load_model(fold)[2] == {"threshold": 0.5, "cluster_threshold": 0.7}
    monkeypatch.undo()
    save_model(fold, model, cfg, {"threshold": 2.0, "cluster_threshold": 3.0})
    assert load_model(fold)[2] == {"threshold": 2.0, "cluster_threshold": 3.0}
    assert (fold / "train_log.jsonl").read_text() == "{}\n"  # other files carried over


def test_train_exits_non_zero_naming_a_model_that_ended_collapsed(tmp_path, monkeypatch, capsys):
    import tripletkit.faces.experiment as experiment

    def train(cfg, run, **_):
        fold = Path(run) / "fold0"
        fold.mkdir(parents=True)
        rows = [{"step": 0, "mean_d_an": 1.2}, {"step": 1, "mean_d_an": 0.01}]
        (fold / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return [fold]

    monkeypatch.setattr(experiment, "train", train)
    assert main(["train", "--runs", str(tmp_path), "--name", "c", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "fold0" in err and "collapsed" in err and "train.lr" in err and "Traceback" not in err
