"""dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1``) in PyTorch.

The network of dlib's examples/dnn_face_recognition_ex.cpp, layer for layer:

    input 150 x 150 RGB, (pixel - channel mean) / 256
    stem    conv 7x7/2 (32, no padding) -> affine -> relu -> max pool 3x3/2 (no padding)
    level1  3 x residual(32)
    level2  residual_down(64)  + 3 x residual(64)
    level3  residual_down(128) + 2 x residual(128)
    level4  residual_down(256) + 2 x residual(256)
    level5  residual_down(256)
    head    mean over the map -> linear 256 -> 128 (no bias) -> L2 normalisation (ours)

    residual(N)       relu(x + affine(conv3x3(relu(affine(conv3x3(x))))))
    residual_down(N)  relu(avgpool2x2/2(x) (+) affine(conv3x3(relu(affine(conv3x3/2(x))))))

The strided convolution has no padding (dlib pads ``size // 2`` only at stride 1), so on odd
maps the two branches of ``residual_down`` can differ in size (4 x 4 pooled against 3 x 3
convolved at level4) and in channels (32 pooled against 64): dlib's ``add_prev`` then adds
them over their overlap, counting what one of them lacks as zero (top-left aligned), which is
what :func:`add_zero_padded` does. dlib's ``affine`` layers are its batch norm with the running
statistics folded in: a fixed per-channel ``scale * x + shift`` (:class:`Affine`).
:func:`affines_to_batchnorm` swaps them for ``BatchNorm2d`` computing the same function, for
fine-tuning with batch statistics.

Shapes on a 150 x 150 input: stem 32 x 35 x 35, level1 32 x 35 x 35, level2 64 x 17 x 17,
level3 128 x 8 x 8, level4 256 x 4 x 4, level5 256 x 2 x 2.

dlib's own descriptor is the 128-d linear output, unnormalised (distance threshold 0.6); this
module returns it L2-normalised, like every embedder in this library, so cosine similarity and
squared L2 distance are interchangeable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INPUT_SIZE = 150
CHANNEL_MEAN = (122.782, 117.001, 104.298)  # RGB, from dlib's input_rgb_image_sized
PIXEL_SCALE = 256.0

# (width, blocks) of each level; every level but the first starts with a strided block.
LEVELS: tuple[tuple[int, int], ...] = ((32, 3), (64, 4), (128, 3), (256, 3), (256, 1))


class Affine(nn.Module):
    """Per-channel ``y = scale * x + shift`` on (B, C, H, W): dlib's ``affine`` layer."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addcmul(self.bias[:, None, None], x, self.weight[:, None, None])


def add_zero_padded(a: Tensor, b: Tensor) -> Tensor:
    """Sum of two (B, C, H, W) maps of possibly different C, H, W, as dlib's ``add_prev``.

    The result has the larger of each size; element (c, h, w) is ``a[c, h, w] + b[c, h, w]``
    where a missing element counts as 0.
    """
    if a.shape == b.shape:
        return a + b
    size = [max(p, q) for p, q in zip(a.shape[1:], b.shape[1:], strict=True)]

    def pad(x: Tensor) -> Tensor:
        c, h, w = x.shape[1:]
        return F.pad(x, (0, size[2] - w, 0, size[1] - h, 0, size[0] - c))

    return pad(a) + pad(b)


def _conv(cin: int, cout: int, size: int, stride: int) -> nn.Conv2d:
    """dlib's ``con``: padding ``size // 2`` at stride 1, none otherwise; with a bias."""
    return nn.Conv2d(cin, cout, size, stride, size // 2 if stride == 1 else 0)


class Residual(nn.Module):
    """dlib's ``ares`` (stride 1) or ``ares_down`` (stride 2): (B, Cin, H, W) -> (B, N, H', W').

    The shortcut is the input itself, or its 2x2 average pool when ``stride`` is 2.
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv(cin, cout, 3, stride)
        self.affine1 = Affine(cout)
        self.conv2 = _conv(cout, cout, 3, 1)
        self.affine2 = Affine(cout)
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.affine2(self.conv2(torch.relu(self.affine1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2, 2) if self.stride == 2 else x
        return torch.relu(add_zero_padded(out, shortcut))


class DlibResNet(nn.Module):
    """RGB face chips (B, 3, 150, 150), values 0..255 -> L2-normalised descriptors (B, 128).

    The input is what dlib's ``get_face_chip`` cuts (150 x 150, RGB, not BGR), as float pixel
    values in 0..255 (``chips.float()`` on a uint8 tensor); the module subtracts dlib's channel
    means and divides by 256 itself. Attributes ``stem``, ``levels`` (5 stages) and ``fc``
    let a caller freeze early stages or cache their output (:meth:`trunk`, :meth:`tail`).
    """

    mean: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(CHANNEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.stem = nn.Sequential(_conv(3, 32, 7, 2), Affine(32), nn.ReLU(), nn.MaxPool2d(3, 2))
        levels = []
        cin = 32
        for i, (width, blocks) in enumerate(LEVELS):
            strides = [2 if (i > 0 and b == 0) else 1 for b in range(blocks)]
            level = []
            for stride in strides:
                level.append(Residual(cin, width, stride))
                cin = width
            levels.append(nn.Sequential(*level))
        self.levels = nn.ModuleList(levels)
        self.fc = nn.Linear(cin, 128, bias=False)

    def trunk(self, x: Tensor, levels: int = len(LEVELS)) -> Tensor:
        """Pixels (B, 3, 150, 150) -> feature maps after the stem and the first ``levels``."""
        if x.dim() != 4 or x.shape[1:] != (3, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(
                f"x must be (B, 3, {INPUT_SIZE}, {INPUT_SIZE}) RGB pixels, got {tuple(x.shape)}"
            )
        out = self.stem((x - self.mean) / PIXEL_SCALE)
        for level in self.levels[:levels]:
            out = level(out)
        return out

    def tail(self, maps: Tensor, start: int = len(LEVELS)) -> Tensor:
        """Feature maps from :meth:`trunk` (``levels=start``) -> descriptors (B, 128).

        ``descriptor = normalise(W @ mean_hw(levels[start:](maps)))``.
        """
        for level in self.levels[start:]:
            maps = level(maps)
        return F.normalize(self.fc(maps.mean(dim=(2, 3))), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.tail(self.trunk(x))


def affines_to_batchnorm(model: nn.Module, eps: float = 1e-5) -> nn.Module:
    """Replace every :class:`Affine` in ``model`` (in place) by a ``BatchNorm2d`` that computes
    the same function in eval mode: running mean 0, running variance ``1 - eps``, weight and
    bias the affine's scale and shift. In train mode it normalises with batch statistics.
    """
    for name, child in list(model.named_children()):
        if isinstance(child, Affine):
            bn = nn.BatchNorm2d(len(child.weight), eps=eps)
            with torch.no_grad():
                bn.weight.copy_(child.weight)
                bn.bias.copy_(child.bias)
                if bn.running_var is not None:
                    bn.running_var.fill_(1.0 - eps)
            setattr(model, name, bn.to(child.weight.device))
        else:
            affines_to_batchnorm(child, eps)
    return model
