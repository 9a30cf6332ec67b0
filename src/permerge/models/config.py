"""A small, frozen config that rebuilds a model exactly (stored in every ``model.json``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Arch = Literal["mlp", "cnn", "vgg11", "vgg16", "resnet20"]


class ModelConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    arch: Arch = "mlp"
    in_shape: tuple[int, int, int] = (1, 28, 28)
    num_classes: int = Field(10, ge=2)
    hidden: tuple[int, ...] = (512, 512, 512)  # MLP only
    width: float = Field(1.0, gt=0, allow_inf_nan=False)  # width multiplier (CNN, VGG, ResNet)
    norm: Literal["bn", "ln", "none"] = "bn"  # VGG / ResNet

    @field_validator("hidden")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(h < 1 for h in v):
            raise ValueError("hidden widths must be positive")
        return v

    def describe(self) -> str:
        if self.arch == "mlp":
            return "mlp " + "-".join(str(x) for x in (self.in_features, *self.hidden, self.num_classes))
        return f"{self.arch} x{self.width:g} ({self.norm})"

    @property
    def in_features(self) -> int:
        c, h, w = self.in_shape
        return c * h * w
