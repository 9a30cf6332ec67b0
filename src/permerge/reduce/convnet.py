"""The small ConvNet of the dataset-condensation literature (Gidaris & Komodakis style).

``depth`` blocks of conv3x3(width) -> instance norm -> ReLU -> 2x2 average pool, then one
linear head. Instance norm (a GroupNorm with one channel per group) keeps every sample
independent of the rest of its batch, which matters when a batch holds one synthetic image
per class. The published default width is 128; permerge defaults to 32 to keep condensation
practical on a CPU (see docs/REDUCTION.md).
"""

from __future__ import annotations

import torch
from torch import nn


class ConvNet(nn.Module):
    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int = 10,
        width: int = 32,
        depth: int = 3,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        c, h, w = in_shape
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers.append(nn.Conv2d(c, width, 3, padding=1))
            if norm == "instance":
                layers.append(nn.GroupNorm(width, width, affine=True))
            elif norm != "none":
                raise ValueError(f"unknown ConvNet norm {norm!r} (use 'instance' or 'none')")
            layers += [nn.ReLU(), nn.AvgPool2d(2)]
            c, h, w = width, h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"ConvNet depth {depth} is too deep for {in_shape[1]}x{in_shape[2]} images")
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.classifier = nn.Linear(c * h * w, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
