"""Architecture registry: ``@register("name")`` on a builder ``(ModelConfig) -> nn.Module``.

The modules of ``permerge.models`` are imported on first lookup, so an architecture is one file.
An architecture that takes per-layer channel counts (``ModelConfig.channels``) also registers,
with ``channels=``, which parameter's output axis each count is: that is how a merge wider in
some layers than in others finds the config that rebuilds it (:func:`channels_of`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import ModelError
from ..registry import Registry
from .config import ModelConfig

Builder = Callable[[ModelConfig], nn.Module]
ChannelParams = Callable[[ModelConfig], tuple[str, ...]]
BUILDERS: Registry[Builder] = Registry("model", package=__name__.rsplit(".", 1)[0], error=ModelError)
CHANNEL_PARAMS: Registry[ChannelParams] = Registry("per-layer channels of model", error=ModelError)


def register(name: str, channels: ChannelParams | None = None) -> Callable[[Builder], Builder]:
    def deco(builder: Builder) -> Builder:
        BUILDERS.add(name, builder)
        if channels is not None:
            CHANNEL_PARAMS.add(name, channels, source=builder)
        return builder

    return deco


def available() -> list[str]:
    return BUILDERS.names()


def build_model(cfg: ModelConfig) -> nn.Module:
    return BUILDERS.get(cfg.arch)(cfg)


def channels_of(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> ModelConfig | None:
    """``cfg`` with the per-layer channel counts that ``state``'s shapes have (read off the
    parameters its architecture registered), or None for an architecture without them."""
    BUILDERS.discover()
    if cfg.arch not in CHANNEL_PARAMS:
        return None
    names = CHANNEL_PARAMS.get(cfg.arch)(cfg)
    if any(n not in state for n in names):
        return None
    channels = tuple(int(state[n].shape[0]) for n in names)
    return ModelConfig.model_validate({**cfg.model_dump(), "width": 1.0, "channels": channels})
