import pytest

from tripletkit.cli.settings import load_config
from tripletkit.config import to_dict
from tripletkit.faces.config import FacesConfig


def test_defaults_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ntrain:\n  epochs: 7\nmodel:\n  stages: [8, 16]\n")
    cfg = load_config(path, ["train.lr=3e-4", "data.detect=true", "loss.mining=hard"])
    assert cfg.name == "x" and cfg.train.epochs == 7 and cfg.model.stages == (8, 16)
    assert cfg.train.lr == 3e-4 and cfg.data.detect is True and cfg.loss.mining == "hard"
    assert cfg.train.k == FacesConfig().train.k
    assert to_dict(cfg)["model"]["stages"] == [8, 16]


def test_unknown_key_lists_the_valid_ones(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"--set: unknown key\(s\) 'train.lr_max' in section "
        r"'train'; valid keys: epochs, max_steps, p, k",
    ):
        load_config(None, ["train.lr_max=1"])
    path = tmp_path / "c.yaml"
    path.write_text("trian:\n  epochs: 1\n")
    with pytest.raises(ValueError, match=r"c.yaml: unknown key\(s\) 'trian' in the top level"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=many", "train.epochs: expected an integer"),
        ("train.lr=true", "train.lr: expected a number"),
        ("data.detect=1", "data.detect: expected true or false"),
        ("model.stages=8", "model.stages: expected a list"),
        ("novalue", "expects section.key=value"),
        ("name.x=1", "name: expected a string"),
    ],
)
def test_bad_values_are_errors(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
