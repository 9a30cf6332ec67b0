"""Differentiable siamese augmentation (DSA, Zhao & Bilen 2021), written for permerge.

The point of DSA is that the *same* random transformation is applied to the real batch and
to the synthetic batch before their gradients (or embeddings) are compared, so matching
teaches the synthetic images what survives augmentation, and the transformation is
differentiable with respect to the synthetic pixels. Each call picks one operation family
at random (as DSA does) and one parameter set shared by every image of both batches.

Operations act on pixel-scale images (before normalisation): ``color`` (brightness shift,
saturation for RGB, contrast), ``crop`` (translation with zero fill), ``cutout`` (one
zeroed square), ``flip`` (horizontal; off for digits, where it changes the class
semantics), ``scale`` and ``rotate``. Geometric ones are a single affine resampling.

The same augmentation trains models on a few images per class (``TrainConfig.augment =
"dsa"``, the evaluation protocol of the DSA/DM papers) and augments STE merge batches:
with ten images per class a network memorises the set, and cheap label-preserving
transformations are the only extra data there is. Shared by training, reduction and
merging, so it lives at the package top level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

ALL_OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")


@dataclass(frozen=True)
class SiameseAugment:
    ops: tuple[str, ...] = ALL_OPS
    scale: float = 0.2  # sx, sy ~ U(1 - scale, 1 + scale)
    rotate_deg: float = 15.0
    crop: float = 0.125  # shift up to this fraction of the side
    cutout: float = 0.5  # side of the zeroed square as a fraction of the image side
    brightness: float = 0.15  # added shift ~ U(-b, b), pixel scale
    contrast: float = 0.5  # factor ~ U(1 - c, 1 + c)

    def __post_init__(self) -> None:
        bad = sorted(set(self.ops) - set(ALL_OPS))
        if bad or not self.ops:
            raise ValueError(f"unknown augmentation(s) {bad}; known: {', '.join(ALL_OPS)}")

    def sample(self, g: torch.Generator) -> dict[str, Any]:
        """One operation and its parameters, drawn from ``g`` (shared by both batches)."""
        u = torch.rand(6, generator=g, dtype=torch.float64).tolist()
        op = self.ops[int(torch.randint(len(self.ops), (1,), generator=g))]
        return {"op": op, "u": u}

    def __call__(self, x: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
        op, u = p["op"], p["u"]
        if op == "color":
            x = x + (2 * u[0] - 1) * self.brightness
            if x.shape[1] > 1:  # saturation: scale the deviation from the grey value
                grey = x.mean(1, keepdim=True)
                x = grey + (x - grey) * (2 * u[1])
            mean = x.mean((1, 2, 3), keepdim=True)
            return mean + (x - mean) * (1 + (2 * u[2] - 1) * self.contrast)
        if op == "cutout":
            n, _, h, w = x.shape
            sh, sw = max(1, round(h * self.cutout)), max(1, round(w * self.cutout))
            cy, cx = int(u[0] * h), int(u[1] * w)
            y0, y1 = max(0, cy - sh // 2), min(h, cy - sh // 2 + sh)
            x0, x1 = max(0, cx - sw // 2), min(w, cx - sw // 2 + sw)
            mask = torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device)
            mask[..., y0:y1, x0:x1] = 0
            return x * mask
        if op == "flip":
            return x.flip(-1)
        if op == "crop":
            theta = [[1.0, 0.0, (2 * u[0] - 1) * 2 * self.crop], [0.0, 1.0, (2 * u[1] - 1) * 2 * self.crop]]
        elif op == "scale":
            sx, sy = 1 + (2 * u[0] - 1) * self.scale, 1 + (2 * u[1] - 1) * self.scale
            theta = [[sx, 0.0, 0.0], [0.0, sy, 0.0]]
        elif op == "rotate":
            t = math.radians((2 * u[0] - 1) * self.rotate_deg)
            theta = [[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0]]
        else:  # pragma: no cover - guarded by __post_init__
            raise ValueError(op)
        th = torch.tensor(theta, dtype=x.dtype, device=x.device).expand(x.shape[0], 2, 3)
        grid = F.affine_grid(th, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def default_augment(channels: int, flip: bool | None = None) -> SiameseAugment:
    """All DSA operations; ``flip=None`` means on for colour images, off for grayscale ones
    (digits: a mirrored 2 or 7 is not a digit, and Fashion-MNIST gains little from it)."""
    use_flip = channels > 1 if flip is None else flip
    return SiameseAugment(ops=tuple(o for o in ALL_OPS if o != "flip" or use_flip))
