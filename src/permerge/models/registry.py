"""Architecture registry: ``@register("name")`` on a builder ``(ModelConfig) -> nn.Module``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import ModelError
from .config import ModelConfig

Builder = Callable[[ModelConfig], nn.Module]
_BUILDERS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        _BUILDERS[name] = fn
        return fn

    return deco


def available() -> list[str]:
    return sorted(_BUILDERS)


def build_model(cfg: ModelConfig) -> nn.Module:
    if cfg.arch not in _BUILDERS:
        raise ModelError(f"unknown model {cfg.arch!r}; known: {', '.join(available())}")
    return _BUILDERS[cfg.arch](cfg)
