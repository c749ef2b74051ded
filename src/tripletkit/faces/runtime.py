"""dlib's face descriptor (:class:`~tripletkit.faces.dlib_resnet.DlibResNet`) for inference
through ONNX Runtime: exported once, fp32 or int8, kept beside the weights it came from.

Runtimes (``model.runtime`` of the config, ``--runtime`` of the commands that embed):

- ``"torch"``: the PyTorch module itself (training always uses it).
- ``"onnx"``: the module exported with ``torch.onnx.export`` (dynamic batch axis), fp32.
- ``"onnx-int8"``: that export statically quantised (QDQ: int8 weights per output channel,
  uint8 activations, min-max ranges calibrated on :data:`CALIBRATION_CHIPS` aligned ORL chips,
  ``onnxruntime.quantization``). Dynamic quantisation was measured and dropped: its integer
  convolutions ran slower than fp32 on this net.

The graph's contract is the module's: input ``chips`` (N, 3, 150, 150) float32 pixel values
0..255 (``chips.float()`` of the uint8 chips, as :func:`tripletkit.faces.models.embed_chips`
feeds the module; the channel means and the 1/256 scale are inside the graph), output
``descriptors`` (N, 128) float32 unit rows.

An export is one file, ``dlib_resnet.<runtime>.<fingerprint[:16]>.onnx``, where the
fingerprint is the sha256 of the weights (:func:`tripletkit._onnx.weights_fingerprint`):
beside a fine-tuned model in its folder, in ``$TRIPLETKIT_CACHE/onnx`` for the stock
pretrained one (or when the folder cannot be written). It is built, checked and rebuilt as
:mod:`tripletkit._onnx` says (its probe input: :func:`probe_chips`).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import _onnx
from .._onnx import check_runtime
from .chips import load_chips
from .dlib_resnet import INPUT_SIZE, DlibResNet
from .pretrained import cache_dir

DEFAULT_RUNTIME = "onnx"  # fp32: the port's descriptors, faster (benchmarks/inference_cpu.md)
EXPORT_FORMAT = "1"  # bump when the export or the quantisation recipe changes
EXPORT_PREFIX = "dlib_resnet."
CALIBRATION_CHIPS = 80  # every 5th of the 400 ORL chips: two of each person
PROBE_TOLERANCE = 1e-3  # largest change of a probe descriptor element before a rebuild


def export_name(runtime: str, fingerprint: str) -> str:
    """The file name of an export."""
    return _onnx.export_name(EXPORT_PREFIX, runtime, fingerprint)


def is_export(name: str) -> bool:
    """Whether a file name is one of :func:`export_name`'s."""
    return name.startswith(EXPORT_PREFIX) and name.endswith(".onnx")


def probe_chips() -> torch.Tensor:
    """A fixed (2, 3, 150, 150) float input: a seeded uniform noise image and a smooth
    gradient, values 0..255."""
    size = INPUT_SIZE
    noise = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))
    ramp = torch.linspace(0, 1, size)
    rows, cols = ramp[:, None].expand(size, size), ramp[None, :].expand(size, size)
    smooth = torch.stack([rows * cols, cols, 1 - rows])
    return (torch.stack([noise, smooth]) * 255).round()


def run(session: Any, chips: np.ndarray) -> np.ndarray:
    """(N, 3, 150, 150) float32 pixel values -> (N, 128) float32, through ``session``."""
    out = session.run(None, {"chips": np.ascontiguousarray(chips, dtype=np.float32)})
    return np.asarray(out[0], dtype=np.float32)


class OnnxDescriptor:
    """An ONNX Runtime session on an export: (N, 3, 150, 150) uint8 chips -> (N, 128) unit rows.

    Attributes:
        path: the ``.onnx`` file.
        runtime: "onnx" or "onnx-int8".
        session: the onnxruntime session.
    """

    def __init__(self, path: Path, runtime: str, session: Any) -> None:
        self.path, self.runtime, self.session = path, runtime, session

    def embed(self, chips: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """(N, 3, 150, 150) uint8 chips -> (N, 128) float32 unit descriptors, ``batch_size``
        at a time (converted as :func:`~tripletkit.faces.models.embed_chips` does)."""
        out = [np.zeros((0, 128), np.float32)]
        for start in range(0, len(chips), batch_size):
            out.append(run(self.session, chips[start : start + batch_size].float().numpy()))
        return np.concatenate(out)


def load_onnx(
    net: DlibResNet,
    runtime: str,
    folder: str | Path | None = None,
    *,
    calibration: Callable[[], torch.Tensor] | None = None,
) -> OnnxDescriptor:
    """The ONNX Runtime session of ``net`` for ``runtime`` ("onnx" or "onnx-int8"), exported
    (and quantised) on first use and read from its file afterwards (see the module docstring).

    Args:
        net: the descriptor, weights loaded.
        runtime: "onnx" or "onnx-int8".
        folder: where the file goes (a model folder); None, or a folder that cannot be
            written: ``$TRIPLETKIT_CACHE/onnx``.
        calibration: () -> (M, 3, 150, 150) uint8 chips for int8 calibration (default
            :func:`orl_calibration_chips`).

    Raises:
        ValueError: a runtime that is not an ONNX one; onnxruntime missing (with the pip
            command); an export that fails its own checks, naming its file.
    """
    if check_runtime(runtime, "runtime") == "torch":
        raise ValueError("runtime 'torch' runs the module itself, not an ONNX export")
    fingerprint = _onnx.weights_fingerprint(net)
    fallback = cache_dir() / "onnx"
    where = _onnx.writable(Path(folder) if folder is not None else fallback, fallback)
    path = where / export_name(runtime, fingerprint)
    expected = {
        _onnx.META_FORMAT: EXPORT_FORMAT,
        _onnx.META_RUNTIME: runtime,
        _onnx.META_WEIGHTS: fingerprint,
    }
    session = _onnx.open_export(
        path,
        expected,
        lambda made: run(made, probe_chips().numpy()),
        lambda: build_export(net, runtime, calibration or orl_calibration_chips),
        PROBE_TOLERANCE,
    )
    return OnnxDescriptor(path, runtime, session)


def build_export(net: DlibResNet, runtime: str, calibration: Callable[[], torch.Tensor]) -> Any:
    """``net`` as an ONNX ``ModelProto`` for ``runtime``: fp32, or int8 calibrated on
    ``calibration``'s chips."""
    onnx = _onnx.onnx()
    fp32 = export_fp32(net)
    if runtime != "onnx-int8":
        return fp32
    with tempfile.TemporaryDirectory(prefix="tripletkit-quant-") as tmp:
        plain, quantised = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(fp32, str(plain))
        quantize_int8(plain, quantised, calibration())
        return onnx.load_model(str(quantised))


def export_fp32(net: DlibResNet) -> Any:
    """``net`` as an ONNX ``ModelProto``: input "chips" (batch, 3, 150, 150) float32 pixel
    values, output "descriptors" (batch, 128), the batch axis dynamic; ``net`` itself is not
    changed (a copy in eval mode is exported)."""
    _onnx.onnx()
    model = copy.deepcopy(net).cpu().eval()
    with _onnx.quiet_exporter():
        program = torch.onnx.export(
            model,
            (probe_chips(),),
            dynamo=True,
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            input_names=["chips"],
            output_names=["descriptors"],
            verbose=False,
        )
    assert program is not None
    return program.model_proto


def quantize_int8(fp32: Path, out: Path, chips: torch.Tensor, batch_size: int = 8) -> None:
    """Static QDQ quantisation of the fp32 export ``fp32`` into ``out``.

    The graph is first optimised by onnxruntime's pre-processing (each dlib affine folded into
    its convolution; no symbolic shape inference, which the exported padding defeats), then
    quantised: int8 weights per output channel, uint8 activations with min-max ranges over
    ``chips`` ((M, 3, 150, 150) uint8), every convolution, add and the final linear layer.
    """
    q = _onnx.quantization()
    batches = [
        {"chips": chips[i : i + batch_size].float().numpy()}
        for i in range(0, len(chips), batch_size)
    ]

    class Reader(q.CalibrationDataReader):  # type: ignore[name-defined]
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="tripletkit-quant-") as tmp, _onnx.quiet_exporter():
        pre = Path(tmp) / "pre.onnx"
        q.quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        q.quantize_static(
            str(pre),
            str(out),
            Reader(),
            quant_format=q.QuantFormat.QDQ,
            activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
            per_channel=True,
            calibrate_method=q.CalibrationMethod.MinMax,
        )


def orl_calibration_chips() -> torch.Tensor:
    """(80, 3, 150, 150) uint8: every 5th of the aligned ORL chips
    (:func:`tripletkit.faces.chips.load_chips`, cached), two of each of the 40 people."""
    chips = load_chips("orl", progress=False).images
    return chips[:: max(1, len(chips) // CALIBRATION_CHIPS)][:CALIBRATION_CHIPS]
