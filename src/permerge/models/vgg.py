from __future__ import annotations

from torch import nn

from .config import ModelConfig
from .registry import register

_CFG: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "ln":  # LayerNorm over (C, H, W), which unlike BN survives averaging
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def _convs(cfg: ModelConfig) -> list[int | str]:
    """The layer plan with each convolution's channels (``channels``, one per convolution)."""
    counts = iter(cfg.scaled(tuple(int(v) for v in _CFG[cfg.arch] if v != "M")))
    return [v if v == "M" else next(counts) for v in _CFG[cfg.arch]]


def _channel_params(cfg: ModelConfig) -> tuple[str, ...]:
    names, i, size = [], 0, cfg.in_shape[1]
    for v in _CFG[cfg.arch]:  # mirrors _build_vgg's module indices
        if v == "M":
            if size >= 2:
                i, size = i + 1, size // 2
            continue
        names.append(f"{i}.weight")
        i += 3
    return tuple(names)


def _build_vgg(cfg: ModelConfig) -> nn.Module:
    c, h, _ = cfg.in_shape
    layers: list[nn.Module] = []
    size = h
    for v in _convs(cfg):
        if v == "M":
            if size >= 2:  # 28x28 inputs allow only four pools
                layers.append(nn.MaxPool2d(2))
                size //= 2
            continue
        out = int(v)
        layers += [nn.Conv2d(c, out, 3, padding=1, bias=cfg.norm == "none"), norm_layer(cfg.norm, out), nn.ReLU()]
        c = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, cfg.num_classes)]
    return nn.Sequential(*layers)


register("vgg11", channels=_channel_params)(_build_vgg)
register("vgg16", channels=_channel_params)(_build_vgg)
