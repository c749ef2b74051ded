"""A compact residual CNN with batch norm for face embeddings (no torchvision needed)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class _Block(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetEmbedder(nn.Module):
    """Images (N, C, H, W) -> L2-normalised embeddings (N, dim).

    A strided 3x3 stem, one stage per entry of ``stages`` (the first at the stem's resolution,
    the others halving it), then either global average pooling ("avg", any input size) or the
    whole final feature map ("flatten": keeps where on the face a feature is; needs the input
    size), and a linear projection. ORL's 112 x 92 is usually halved to 56 x 46 for speed.

    Args:
        channels: input channels (1 grayscale, 3 RGB).
        stages: output channels of each stage.
        blocks: residual blocks per stage.
        dim: embedding dimension (128 in FaceNet).
        head: "avg" or "flatten".
        size: (height, width) of the input, needed by the "flatten" head.
    """

    def __init__(
        self,
        channels: int = 1,
        stages: Sequence[int] = (32, 64, 128, 256),
        blocks: int = 1,
        dim: int = 128,
        head: str = "avg",
        size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if not stages or blocks < 1 or dim < 1:
            raise ValueError("stages must be non-empty, blocks >= 1 and dim >= 1")
        if head not in ("avg", "flatten") or (head == "flatten" and size is None):
            raise ValueError(f"head must be 'avg' or 'flatten' (with a size), got {head!r}")
        self.flatten = head == "flatten"
        self.stem = nn.Sequential(
            nn.Conv2d(channels, stages[0], 3, 2, 1, bias=False),
            nn.BatchNorm2d(stages[0]),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        cin = stages[0]
        for i, width in enumerate(stages):
            for b in range(blocks):
                layers.append(_Block(cin, width, 2 if (i > 0 and b == 0) else 1))
                cin = width
        self.body = nn.Sequential(*layers)
        features = cin
        if self.flatten and size is not None:
            with torch.no_grad():
                features = self.body(self.stem(torch.zeros(1, channels, *size))).numel()
        self.head = nn.Linear(features, dim)

    def forward(self, x: Tensor) -> Tensor:
        maps = self.body(self.stem(x))
        features = maps.flatten(1) if self.flatten else maps.mean(dim=(2, 3))
        return nn.functional.normalize(self.head(features), dim=1)
