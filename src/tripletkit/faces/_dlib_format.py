"""A reader for dlib's serialised DNNs (``dlib::serialize(net)``), enough for the face
recognition ResNet: the layers it uses, their parameters as numpy arrays, in forward order.

How dlib writes a network (dlib/dnn/core.h): ``add_loss_layer`` writes its version, its loss
details, then the network below it; every ``add_layer`` writes its version, then *the network
below it*, then its own details and bookkeeping; tag and skip layers write a version and the
network below them. So the file opens with the versions of all layers from the output down to
the input (``2`` for a layer, ``1`` for a tag or skip, ``3`` for the layer on the input), then
the input layer, then each layer's details from the input up to the output.

Encodings (dlib/serialize.h): an integer is a control byte (bit 7: negative, low 4 bits: the
number of bytes that follow) then that many little-endian bytes; a float is the integer
mantissa then the integer exponent (value = mantissa * 2**exponent); a bool is the ASCII byte
'1' or '0'; a string is its length then its bytes. A tensor (dlib/cuda/tensor.h) is version 2,
four int64 dimensions (n, k, nr, nc), then n*k*nr*nc little-endian float32; an alias tensor is
version 1 and the four dimensions only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_SPECIAL_EXPONENTS = {32000: np.inf, 32001: -np.inf, 32002: np.nan}


class DlibFormatError(ValueError):
    """The file is not the dlib network it should be; the message names the file and offset."""


@dataclass
class DlibLayer:
    """One computational layer, as dlib stored it.

    Attributes:
        kind: "con", "affine", "relu", "max_pool", "avg_pool", "add_prev" or "fc".
        arrays: float32 parameters: con: "weight" (out, in, kh, kw) and maybe "bias" (out,);
            affine: "scale" and "shift" (C,); fc: "weight" (out, in) (torch's layout).
        meta: integers that fix the shape of the computation (sizes, strides, paddings).
    """

    kind: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, int] = field(default_factory=dict)


@dataclass
class DlibNet:
    """A parsed network.

    Attributes:
        layers: computational layers from the input to the output.
        structure: one letter per layer from the output down to the input, as in the file:
            "L" a layer, "T" a tag or skip layer.
        input_mean: the (red, green, blue) means the input layer subtracts.
        input_size: (rows, cols) of the input images.
        loss: the loss layer's version string, e.g. "loss_metric_2".
    """

    layers: list[DlibLayer]
    structure: str
    input_mean: tuple[float, float, float]
    input_size: tuple[int, int]
    loss: str


class _Reader:
    """dlib's primitive encodings over an in-memory buffer."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data = data
        self.name = name
        self.pos = 0

    def fail(self, what: str, at: int | None = None) -> DlibFormatError:
        """An error naming the file and the offset ``at`` (default: the current one)."""
        return DlibFormatError(f"{self.name}: byte {self.pos if at is None else at}: {what}")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"unexpected end of file (wanted {n} more bytes)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def peek_byte(self) -> int:
        if self.pos >= len(self.data):
            raise self.fail("unexpected end of file")
        return self.data[self.pos]

    def integer(self) -> int:
        control = self.take(1)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise self.fail(f"bad integer control byte 0x{control:02x}", self.pos - 1)
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def floating(self) -> float:
        if self.peek_byte() & 0x70:
            raise self.fail("old ASCII float encoding is not supported")
        mantissa = self.integer()
        exponent = self.integer()
        if exponent in _SPECIAL_EXPONENTS:
            return float(_SPECIAL_EXPONENTS[exponent])
        return float(np.ldexp(float(mantissa), exponent))

    def boolean(self) -> bool:
        byte = self.take(1)
        if byte not in (b"0", b"1"):
            raise self.fail(f"bad bool byte {byte!r}", self.pos - 1)
        return byte == b"1"

    def string(self) -> str:
        n = self.integer()
        if n > 1000:
            raise self.fail(f"implausible string length {n}")
        return self.take(n).decode("ascii", errors="replace")

    def dims(self, version: int, what: str) -> tuple[int, int, int, int]:
        got = self.integer()
        if got != version:
            raise self.fail(f"{what}: version {got}, expected {version}")
        n, k, nr, nc = (self.integer() for _ in range(4))
        if min(n, k, nr, nc) < 0:
            raise self.fail(f"{what}: negative dimension in {(n, k, nr, nc)}")
        return n, k, nr, nc

    def tensor(self) -> np.ndarray:
        """A tensor, flattened: (n*k*nr*nc,) float32."""
        n, k, nr, nc = self.dims(2, "tensor")
        count = n * k * nr * nc
        return np.frombuffer(self.take(4 * count), dtype="<f4").astype(np.float32)

    def alias(self) -> tuple[int, int, int, int]:
        return self.dims(1, "alias tensor")

    def expect(self, strings: tuple[str, ...], what: str) -> str:
        start = self.pos
        got = self.string()
        if got not in strings:
            raise self.fail(f"{what}: found {got!r}, expected one of {strings}", start)
        return got


def _size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape))


def _con(r: _Reader) -> DlibLayer:
    version = r.expect(("con_4", "con_5", "con_6"), "convolution")
    params = r.tensor()
    filters_out = r.integer()
    rows, cols, stride_y, stride_x, pad_y, pad_x = (r.integer() for _ in range(6))
    filters = r.alias()
    biases = r.alias()
    for _ in range(4):  # learning-rate and weight-decay multipliers
        r.floating()
    use_bias = r.boolean() if version in ("con_5", "con_6") else True
    if version == "con_6":
        r.boolean()  # use_relu: a fused relu, only ever set by dlib's own optimisers
    if filters[0] != filters_out or filters[2:] != (rows, cols):
        raise r.fail(f"convolution: filter shape {filters} does not match {filters_out} filters")
    arrays = {"weight": params[: _size(filters)].reshape(filters)}
    if use_bias and _size(biases):
        end = _size(filters) + _size(biases)
        arrays["bias"] = params[_size(filters) : end].copy()
    if sum(a.size for a in arrays.values()) != params.size:
        raise r.fail(f"convolution: {params.size} parameters for filters {filters}")
    meta = {"stride": stride_y, "stride_x": stride_x, "padding": pad_y, "padding_x": pad_x}
    return DlibLayer("con", arrays, meta)


def _affine(r: _Reader) -> DlibLayer:
    version = r.expect(("affine_", "affine_2", "bn_con2"), "affine")
    params = r.tensor()
    gamma = r.alias()
    r.alias()
    channels = _size(gamma)
    if params.size != 2 * channels:
        raise r.fail(f"affine: {params.size} parameters for {channels} channels")
    scale, shift = params[:channels].copy(), params[channels:].copy()
    if version == "bn_con2":  # batch norm: fold the running statistics in, as dlib does
        for _ in range(2):  # batch means and inverse standard deviations
            r.tensor()
        mean, var = r.tensor(), r.tensor()
        r.integer(), r.integer()  # update count, running window
        for _ in range(4):
            r.floating()
        eps = r.floating()
        scale = (scale / np.sqrt(var + eps)).astype(np.float32)
        shift = (shift - scale * mean).astype(np.float32)
    else:
        r.integer()  # mode: conv or fc
        if version == "affine_2" and r.boolean():
            raise r.fail("affine: disabled layers are not supported")
    return DlibLayer("affine", {"scale": scale, "shift": shift})


def _relu(r: _Reader) -> DlibLayer:
    if r.expect(("relu_", "relu_2"), "relu") == "relu_2" and r.boolean():
        raise r.fail("relu: disabled layers are not supported")
    return DlibLayer("relu")


def _pool(r: _Reader, kind: str) -> DlibLayer:
    r.expect((f"{kind}_2",), kind)
    rows, cols, stride_y, stride_x, pad_y, pad_x = (r.integer() for _ in range(6))
    if rows != cols or stride_y != stride_x or pad_y != pad_x:
        raise r.fail(f"{kind}: non-square windows are not supported")
    return DlibLayer(kind, meta={"size": rows, "stride": stride_y, "padding": pad_y})


def _fc(r: _Reader) -> DlibLayer:
    version = r.expect(("fc_2", "fc_3"), "fully connected")
    outputs, inputs = r.integer(), r.integer()
    params = r.tensor()
    weights = r.alias()
    r.alias()
    bias_mode = r.integer()
    for _ in range(4):
        r.floating()
    if version == "fc_3":
        r.boolean()
    if bias_mode != 1 or params.size != inputs * outputs or weights[:2] != (inputs, outputs):
        raise r.fail(f"fully connected: only fc_no_bias is supported, got {params.size} params")
    weight = params.reshape(inputs, outputs).T.copy()
    return DlibLayer("fc", {"weight": weight}, {"inputs": inputs, "outputs": outputs})


def _details(r: _Reader) -> DlibLayer:
    """One layer's own details, dispatched on the version string it starts with."""
    start = r.pos
    kind = r.string()
    r.pos = start
    if kind.startswith("con_"):
        return _con(r)
    if kind.startswith(("affine_", "bn_con")):
        return _affine(r)
    if kind.startswith("relu_"):
        return _relu(r)
    if kind.startswith("max_pool_"):
        return _pool(r, "max_pool")
    if kind.startswith("avg_pool_"):
        return _pool(r, "avg_pool")
    if kind == "add_prev_":
        r.string()
        return DlibLayer("add_prev")
    if kind.startswith("fc_"):
        return _fc(r)
    raise r.fail(f"unsupported layer {kind!r}")


def _bookkeeping(r: _Reader, tensors: int) -> None:
    """The flags and cached tensors an add_layer writes after its details (discarded)."""
    for _ in range(3):
        r.boolean()
    for _ in range(tensors):
        r.tensor()


def _input(r: _Reader) -> tuple[tuple[float, float, float], tuple[int, int]]:
    r.expect(("input_rgb_image_sized",), "input layer")
    mean = (r.floating(), r.floating(), r.floating())
    size = (r.integer(), r.integer())
    return mean, size


def parse_dlib_net(data: bytes, name: str = "<bytes>") -> DlibNet:
    """Parse a serialised dlib network with a ``loss_metric`` on an ``input_rgb_image_sized``.

    Args:
        data: the file's bytes.
        name: the file name, for error messages.

    Raises:
        DlibFormatError: naming the file and byte offset where it stops making sense.
    """
    r = _Reader(data, name)
    if r.integer() != 1:
        raise r.fail("not a dlib network (loss layer version is not 1)")
    loss = r.expect(("loss_metric_", "loss_metric_2"), "loss layer")
    if loss == "loss_metric_2":
        r.floating(), r.floating()  # margin, distance threshold
    structure: list[str] = []
    while True:
        version = r.integer()
        if version == 3:  # the layer on the input
            break
        if version not in (1, 2):
            raise r.fail(f"unexpected layer version {version}")
        structure.append("L" if version == 2 else "T")
    mean, size = _input(r)
    layers = [_details(r)]
    _bookkeeping(r, tensors=3)
    r.integer()  # sample expansion factor
    for _ in range(structure.count("L")):
        layers.append(_details(r))
        _bookkeeping(r, tensors=3)
    if r.pos != len(data):
        raise r.fail(f"{len(data) - r.pos} bytes left after the network")
    return DlibNet(layers, "".join(structure) + "L", mean, size, loss)


def read_dlib_net(path: str | Path) -> DlibNet:
    """:func:`parse_dlib_net` on a file."""
    return parse_dlib_net(Path(path).read_bytes(), str(path))
