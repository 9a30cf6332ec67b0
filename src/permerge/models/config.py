"""A small, frozen config that rebuilds a model exactly (stored in every ``model.json``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .._limits import MAX_CHANNELS, MAX_IMAGE_SIDE, MAX_WIDTH

Arch = Literal["mlp", "cnn", "vgg11", "vgg16", "resnet20", "vit", "code"]

# How many per-layer channel counts each convolutional architecture takes in ``channels``
# (their order is documented by its builder). Merges that widen some layers more than others
# (PLeaS with a parameter budget, ZipIt!'s partial zip) are saved and rebuilt with them.
CHANNEL_SLOTS = {"cnn": 4, "vgg11": 8, "vgg16": 13, "resnet20": 12}


class ModelConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    arch: Arch = "mlp"
    in_shape: tuple[int, int, int] = (1, 28, 28)
    num_classes: int = Field(10, ge=2)
    hidden: tuple[int, ...] = (512, 512, 512)  # MLP only
    width: float = Field(1.0, gt=0, allow_inf_nan=False)  # width multiplier (CNN, VGG, ResNet)
    channels: tuple[int, ...] = ()  # per-layer channel counts instead of a multiplier (CNN, VGG, ResNet)
    norm: Literal["bn", "ln", "none"] = "bn"  # VGG / ResNet
    # ViT: patch size, blocks, embedding width, heads (vit:tiny-p4-d6-w96-h3)
    patch: int = Field(7, ge=1, le=MAX_IMAGE_SIDE)
    depth: int = Field(4, ge=1, le=64)
    dim: int = Field(64, ge=1, le=MAX_WIDTH)
    heads: int = Field(4, ge=1, le=64)
    # arch "code": the user's factory ("mypkg.models:build_net") and its keyword arguments;
    # building it needs the user to name it (see permerge.models.code)
    code: str | None = None
    code_args: tuple[tuple[str, str | int | float | bool], ...] = ()

    @field_validator("hidden")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(h < 1 for h in v):
            raise ValueError("hidden widths must be positive")
        if any(h > MAX_WIDTH for h in v):
            raise ValueError(f"hidden widths must be at most {MAX_WIDTH:,}, got {max(v):,}")
        return v

    @field_validator("in_shape")
    @classmethod
    def _image_shape(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        c, h, w = v
        if not (1 <= c <= MAX_CHANNELS and 1 <= h <= MAX_IMAGE_SIDE and 1 <= w <= MAX_IMAGE_SIDE):
            raise ValueError(f"must be (channels 1-{MAX_CHANNELS}, height, width 1-{MAX_IMAGE_SIDE}), got {list(v)}")
        return v

    @field_validator("width")
    @classmethod
    def _width(cls, v: float) -> float:
        if v > 1000:
            raise ValueError(f"width multiplier must be at most 1000, got {v:g}")
        return v

    @model_validator(mode="after")
    def _code_named(self) -> ModelConfig:
        if (self.arch == "code") != (self.code is not None):
            raise ValueError("arch 'code' and a factory name ('code') go together")
        return self

    @model_validator(mode="after")
    def _channels(self) -> ModelConfig:
        if not self.channels:
            return self
        n = CHANNEL_SLOTS.get(self.arch)
        if n is None:
            raise ValueError(f"per-layer channels are for {', '.join(CHANNEL_SLOTS)}, not {self.arch}")
        if len(self.channels) != n:
            raise ValueError(f"{self.arch} takes {n} channel counts, got {len(self.channels)}")
        if not all(1 <= c <= MAX_WIDTH for c in self.channels):
            raise ValueError(f"channel counts must be in [1, {MAX_WIDTH:,}]")
        if self.width != 1.0:
            raise ValueError("give either a width multiplier or per-layer channels, not both")
        return self

    def scaled(self, base: tuple[int, ...]) -> tuple[int, ...]:
        """The builder's per-layer channel counts: ``channels`` when given, else ``base`` (its
        counts at width 1) times the width multiplier."""
        if self.channels:
            return self.channels
        return tuple(max(1, round(k * self.width)) for k in base)

    def describe(self) -> str:
        if self.arch == "code":
            return f"{self.code}(" + ", ".join(f"{k}={v!r}" for k, v in self.code_args) + ")"
        if self.arch == "vit":
            return f"vit p{self.patch} d{self.depth} w{self.dim} h{self.heads}"
        if self.arch == "mlp":
            return "mlp " + "-".join(str(x) for x in (self.in_features, *self.hidden, self.num_classes))
        if self.channels:
            return f"{self.arch} channels {'-'.join(map(str, self.channels))} ({self.norm})"
        return f"{self.arch} x{self.width:g} ({self.norm})"

    @property
    def in_features(self) -> int:
        c, h, w = self.in_shape
        return c * h * w
