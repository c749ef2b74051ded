"""The pretrained dlib face descriptor: find its weights in the installed registry package,
check them, convert them once to safetensors, and load them from that cache afterwards.

The weights (CC0) ship in ``face-recognition-models==0.3.0`` as
``face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat``. The package is
located with ``importlib.util.find_spec`` and never imported (its ``__init__`` needs
``pkg_resources``, gone from current setuptools). Nothing is downloaded.

The cache is ``$TRIPLETKIT_CACHE/dlib_face_recognition_resnet_model_v1.safetensors`` (default
``~/.cache/tripletkit``), written atomically, with the source file's sha256 and a format
version in its metadata; a cache that does not carry both is rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._io import atomic_write
from ._dlib_format import DlibNet, read_dlib_net
from .dlib_resnet import CHANNEL_MEAN, INPUT_SIZE, LEVELS, Affine, DlibResNet

PACKAGE = "face_recognition_models"
PACKAGE_PIN = "face-recognition-models==0.3.0"
MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
MODEL_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
CACHE_ENV = "TRIPLETKIT_CACHE"
CACHE_FORMAT = "1"  # bump when the state dict layout of DlibResNet changes


def package_file(name: str) -> Path:
    """Path of ``face_recognition_models/models/<name>`` in the installed package.

    Raises:
        ValueError: with an install hint when the package or the file is missing.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"the pretrained dlib models need the {PACKAGE} package: pip install {PACKAGE_PIN}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    if not path.is_file():
        raise ValueError(
            f"{PACKAGE} is installed but {path} is missing: "
            f"pip install --force-reinstall {PACKAGE_PIN}"
        )
    return path


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str) -> None:
    """Raise ValueError naming ``path`` and both hashes unless its sha256 is ``expected``."""
    actual = sha256(path)
    if actual != expected:
        raise ValueError(
            f"{path}: sha256 {actual}, expected {expected} "
            f"(a different or damaged file; reinstall {PACKAGE_PIN})"
        )


def cache_dir() -> Path:
    """``$TRIPLETKIT_CACHE`` or ``~/.cache/tripletkit``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tripletkit")


def _expected_kinds() -> list[str]:
    """dlib's layer kinds from input to output for :class:`DlibResNet`'s architecture."""
    kinds = ["con", "affine", "relu", "max_pool"]
    for i, (_, blocks) in enumerate(LEVELS):
        for b in range(blocks):
            down = ["avg_pool"] if (i > 0 and b == 0) else []
            kinds += ["con", "affine", "relu", "con", "affine", *down, "add_prev", "relu"]
    return [*kinds, "avg_pool", "fc"]


def state_dict_from_dlib(net: DlibNet, name: str = "network") -> dict[str, torch.Tensor]:
    """:class:`DlibResNet` weights from a parsed dlib network.

    Checks that the layers are the ones the architecture expects, in order, with the same
    shapes, strides and paddings; raises ValueError naming ``name`` and the first mismatch.
    """
    kinds = [layer.kind for layer in net.layers]
    if kinds != _expected_kinds() or net.input_size != (INPUT_SIZE, INPUT_SIZE):
        raise ValueError(f"{name}: not dlib's face recognition ResNet (layers {kinds[:8]}...)")
    if not np.allclose(net.input_mean, CHANNEL_MEAN, atol=1e-3):
        raise ValueError(f"{name}: input means {net.input_mean}, expected {CHANNEL_MEAN}")
    model = DlibResNet()
    targets = [
        (n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | Affine | nn.Linear)
    ]
    weighted = [layer for layer in net.layers if layer.arrays]
    state: dict[str, torch.Tensor] = {}
    for (module_name, module), layer in zip(targets, weighted, strict=True):
        if isinstance(module, nn.Conv2d) and (
            layer.meta["stride"] != module.stride[0] or layer.meta["padding"] != module.padding[0]
        ):
            raise ValueError(
                f"{name}: {module_name}: stride/padding {layer.meta}, expected "
                f"{module.stride[0]}/{module.padding[0]}"
            )
        keys = {"weight": "weight", "bias": "bias", "scale": "weight", "shift": "bias"}
        for key, array in layer.arrays.items():
            state[f"{module_name}.{keys[key]}"] = torch.from_numpy(np.ascontiguousarray(array))
    problem = _state_problem(state)
    if problem:
        raise ValueError(f"{name}: {problem}")
    return state


def _state_problem(state: dict[str, torch.Tensor]) -> str | None:
    """What keeps ``state`` from loading into :class:`DlibResNet` exactly, or None."""
    expected = DlibResNet().state_dict()
    odd = sorted(expected.keys() ^ state.keys())
    if odd:
        return f"{odd[0]}: {'missing' if odd[0] in expected else 'unexpected'}"
    for key, value in expected.items():
        got = state[key]
        if got.shape != value.shape or got.dtype != value.dtype:
            return f"{key}: {tuple(got.shape)} {got.dtype}, expected {tuple(value.shape)} float32"
    return None


def convert_dlib_file(path: Path, expected_sha256: str = MODEL_SHA256) -> dict[str, torch.Tensor]:
    """Check and parse dlib's ``.dat`` file into a :class:`DlibResNet` state dict."""
    check_sha256(path, expected_sha256)
    return state_dict_from_dlib(read_dlib_net(path), str(path))


def _cache_file(cache: Path) -> Path:
    return cache / MODEL_FILE.replace(".dat", ".safetensors")


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError as e:
        raise ValueError("caching the converted weights needs: pip install safetensors") from e
    return safetensors


def _read_cache(path: Path) -> dict[str, torch.Tensor] | None:
    """The cached state dict, or None when absent, unreadable, from another source file or
    cache format, or not shaped like :class:`DlibResNet`'s."""
    st = _safetensors()
    if not path.is_file():
        return None
    try:
        with st.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("source_sha256") != MODEL_SHA256 or meta.get("format") != CACHE_FORMAT:
                return None
            state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except (st.SafetensorError, OSError, ValueError):
        return None
    return None if _state_problem(state) else state


def _write_cache(path: Path, state: dict[str, torch.Tensor]) -> None:
    save_file = _safetensors().torch.save_file
    meta = {"source": MODEL_FILE, "source_sha256": MODEL_SHA256, "format": CACHE_FORMAT}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def load_dlib_resnet(cache: str | Path | None = None) -> DlibResNet:
    """dlib's pretrained face descriptor as a :class:`DlibResNet` in eval mode.

    The first call converts the installed package's weights (sha256-checked) and writes them
    to the cache; later calls read the cache only.

    Args:
        cache: cache folder; default :func:`cache_dir`.

    Raises:
        ValueError: package missing (with the pip command), checksum mismatch (file and both
            hashes), or a file that is not the expected network (file and byte offset).
    """
    path = _cache_file(Path(cache) if cache is not None else cache_dir())
    state = _read_cache(path)
    if state is None:
        state = convert_dlib_file(package_file(MODEL_FILE))
        _write_cache(path, state)
    model = DlibResNet()
    model.load_state_dict(state)
    return model.eval()
