"""ONNX Runtime exports of a network, built once and kept: the part faces and search share.

An export is one ``.onnx`` file whose name carries what it holds (the runtime and the first 16
hex digits of the weights' fingerprint, so changed weights give another file and a file never
outlives its weights). Its metadata records the full fingerprint, the runtime, an export format
number and the output of the network on a fixed probe input when the file was built.
:func:`open_export` opens such a file and checks all of it: a file that does not open, records
other values, or now answers the probe otherwise is rebuilt with a warning naming it. Files are
written atomically (:func:`tripletkit._io.atomic_write`): a reader sees a complete old file, a
complete new one, or none.

onnxruntime and onnx are optional (the ``faces`` and ``search`` extras install them): a missing
one is a ValueError with the pip command.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._io import atomic_write

RUNTIMES = ("torch", "onnx", "onnx-int8")  # "torch": the module itself, no export
INSTALL_HINT = "pip install onnxruntime==1.32.0 onnx==1.23.2 onnxscript==0.7.2"
META_FORMAT = "tripletkit.format"
META_RUNTIME = "tripletkit.runtime"
META_WEIGHTS = "tripletkit.weights"
META_PROBE = "tripletkit.probe"


def check_runtime(runtime: str, key: str = "model.runtime") -> str:
    """``runtime`` if it is one of :data:`RUNTIMES`.

    Raises:
        ValueError: naming ``key`` and the allowed values.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"{key} must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    return runtime


def export_name(prefix: str, runtime: str, fingerprint: str) -> str:
    """The file name of an export: ``<prefix><runtime>.<fingerprint[:16]>.onnx``."""
    return f"{prefix}{runtime}.{fingerprint[:16]}.onnx"


def onnxruntime() -> Any:
    """The onnxruntime module.

    Raises:
        ValueError: it is not installed (with the pip command).
    """
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ValueError(f"the ONNX runtimes need onnxruntime: {INSTALL_HINT}") from err
    return ort


def quantization() -> Any:
    """onnxruntime's quantisation tools (``onnxruntime.quantization``).

    Raises:
        ValueError: onnxruntime is not installed (with the pip command).
    """
    onnxruntime()
    import onnxruntime.quantization as tools

    return tools


def onnx() -> Any:
    """The onnx module, with onnxscript (which ``torch.onnx.export`` needs) importable.

    Raises:
        ValueError: either is missing (with the pip command).
    """
    try:
        import onnx as onnx_module
        import onnxscript  # noqa: F401  (torch.onnx.export needs it)
    except ImportError as err:
        raise ValueError(f"exporting to ONNX needs onnx and onnxscript: {INSTALL_HINT}") from err
    return onnx_module


def weights_fingerprint(module: Any) -> str:
    """Hex sha256 of a torch module's state dict: every key (sorted), dtype, shape and the
    tensor's bytes."""
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def session(path: str | Path, threads: int | None = None) -> tuple[Any, dict[str, str]]:
    """An ONNX Runtime CPU session on ``path`` (``threads`` intra-op threads, default the
    cores this process may run on; errors only in its log) and the file's custom metadata."""
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or available_cores()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    made = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return made, dict(made.get_modelmeta().custom_metadata_map)


def writable(folder: Path, fallback: Path) -> Path:
    """``folder`` (created), or ``fallback`` (created) when ``folder`` cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test.").close()
        return folder
    except OSError:
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def open_export(
    path: Path,
    expected: dict[str, str],
    probe: Callable[[Any], np.ndarray],
    build: Callable[[], Any],
    tolerance: float,
) -> Any:
    """The session on the export at ``path``, built first when it is missing or does not hold
    what ``expected`` says (see the module docstring).

    Args:
        path: the file.
        expected: metadata the file must carry (format, runtime, weights, ...).
        probe: session -> the network's output on the fixed probe input.
        build: () -> the ONNX ``ModelProto`` to write (metadata is added here).
        tolerance: the largest change of a probe output element a file may show.

    Raises:
        ValueError: naming the file, when the export just built fails its own checks.
    """
    problem = _problem(path, expected, probe, tolerance)
    if problem is None:
        return session(path)[0]
    if path.exists():
        warnings.warn(f"{path} {problem}: rebuilding it", stacklevel=3)
    model = build()
    with tempfile.TemporaryDirectory(prefix="tripletkit-onnx-") as tmp:
        onnx().save_model(model, str(Path(tmp) / "built.onnx"))
        answer = probe(session(Path(tmp) / "built.onnx", threads=1)[0])
    meta = {**expected, META_PROBE: json.dumps(np.asarray(answer).round(7).tolist())}
    onnx().helper.set_model_props(model, meta)
    atomic_write(path, lambda tmp_path: onnx().save_model(model, str(tmp_path)))
    problem = _problem(path, expected, probe, tolerance)
    if problem is not None:
        raise ValueError(f"{path}: the export just built {problem}")
    return session(path)[0]


def _problem(
    path: Path, expected: dict[str, str], probe: Callable[[Any], np.ndarray], tolerance: float
) -> str | None:
    """What is wrong with the file at ``path``, or None."""
    if not path.is_file():
        return "is missing"
    try:
        made, meta = session(path)
    except Exception as err:  # onnxruntime raises its own types on an unreadable model
        return f"does not open in onnxruntime ({type(err).__name__}: {err})"
    for key, value in expected.items():
        if meta.get(key) != value:
            return f"records {key}={meta.get(key)!r}, not {value!r}"
    try:
        recorded = np.array(json.loads(meta[META_PROBE]), dtype=np.float32)
        got = np.asarray(probe(made), dtype=np.float32)
    except Exception as err:  # a missing entry, a graph that fails to run
        return f"cannot be checked on the probe input ({type(err).__name__}: {err})"
    if got.shape != recorded.shape or not np.abs(got - recorded).max() <= tolerance:
        return "answers the probe input otherwise than when it was built"
    return None


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """The exporter's and the quantiser's progress lines, warnings and log messages kept out
    of the output."""
    names = ("torch.onnx", "torch.export", "onnxscript", "root")
    loggers = [logging.getLogger(name) for name in names]
    levels = [log.level for log in loggers]
    try:
        for log in loggers:
            log.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)
