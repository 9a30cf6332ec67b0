from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .registry import register
from .vgg import norm_layer


class BasicBlock(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(norm, mid)
        self.conv2 = nn.Conv2d(mid, cout, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(norm, cout)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm_layer(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 for 32x32 inputs (3 stages x 3 blocks); ``width`` multiplies 16/32/64.

    ``channels`` (12): the residual stream of each stage, then the inner width (first
    convolution's output) of each of the 9 blocks."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        counts = cfg.scaled((16, 32, 64) + (16,) * 3 + (32,) * 3 + (64,) * 3)
        w, inner = counts[:3], iter(counts[3:])
        self.conv1 = nn.Conv2d(cfg.in_shape[0], w[0], 3, 1, 1, bias=False)
        self.bn1 = norm_layer(cfg.norm, w[0])
        self.relu = nn.ReLU()
        blocks: list[nn.Module] = []
        cin = w[0]
        for stage, cout in enumerate(w):
            for i in range(3):
                blocks.append(BasicBlock(cin, next(inner), cout, 2 if (stage > 0 and i == 0) else 1, cfg.norm))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(self.flatten(self.pool(x)))


def _channel_params(cfg: ModelConfig) -> tuple[str, ...]:
    streams = ("conv1.weight", "layers.3.conv2.weight", "layers.6.conv2.weight")
    return streams + tuple(f"layers.{i}.conv1.weight" for i in range(9))


register("resnet20", channels=_channel_params)(ResNet20)
