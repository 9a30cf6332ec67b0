from __future__ import annotations

from torch import nn

from .config import ModelConfig
from .registry import register


@register("mlp")
def build_mlp(cfg: ModelConfig) -> nn.Module:
    """The paper's MLP: flatten, ReLU hidden layers, one linear head."""
    layers: list[nn.Module] = [nn.Flatten()]
    prev = cfg.in_features
    for h in cfg.hidden:
        layers += [nn.Linear(prev, h), nn.ReLU()]
        prev = h
    layers.append(nn.Linear(prev, cfg.num_classes))
    return nn.Sequential(*layers)
