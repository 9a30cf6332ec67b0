"""Architecture registry: ``@register("name")`` on a builder ``(ModelConfig) -> nn.Module``.

The modules of ``permerge.models`` are imported on first lookup, so an architecture is one file.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import ModelError
from ..registry import Registry
from .config import ModelConfig

Builder = Callable[[ModelConfig], nn.Module]
BUILDERS: Registry[Builder] = Registry("model", package=__name__.rsplit(".", 1)[0], error=ModelError)


def register(name: str) -> Callable[[Builder], Builder]:
    return BUILDERS.register(name)


def available() -> list[str]:
    return BUILDERS.names()


def build_model(cfg: ModelConfig) -> nn.Module:
    return BUILDERS.get(cfg.arch)(cfg)
