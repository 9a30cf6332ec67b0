from __future__ import annotations

from torch import nn

from .config import ModelConfig
from .registry import register


def _channel_params(cfg: ModelConfig) -> tuple[str, ...]:
    return ("0.weight", "3.weight", "7.weight", "9.weight")


@register("cnn", channels=_channel_params)
def build_cnn(cfg: ModelConfig) -> nn.Module:
    """LeNet-style: two conv+pool stages, two hidden linears. The conv->linear flatten
    makes each channel permutation a block permutation of the first linear's inputs.
    ``channels``: the two convolutions' channels, then the two hidden linears' units."""
    c, h, w = cfg.in_shape
    c1, c2, f1, f2 = cfg.scaled((32, 64, 256, 128))
    oh, ow = h // 4, w // 4
    return nn.Sequential(
        nn.Conv2d(c, c1, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * oh * ow, f1),
        nn.ReLU(),
        nn.Linear(f1, f2),
        nn.ReLU(),
        nn.Linear(f2, cfg.num_classes),
    )
