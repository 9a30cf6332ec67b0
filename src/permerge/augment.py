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

    def grouped(self, x: torch.Tensor, sizes: list[int], g: torch.Generator) -> torch.Tensor:
        """One independent draw per run of ``sizes`` consecutive images, applied at once.

        The same draws, in the same order, as calling :meth:`sample` and ``self(chunk, p)`` chunk
        by chunk (a test holds them equal), but each operation family is one batched call: a
        distillation batch with 64 draws would otherwise spend more time in Python than in
        its matrix products."""
        draws = [self.sample(g) for _ in sizes]
        rep = torch.tensor(sizes, device=x.device)
        op = torch.tensor([self.ops.index(d["op"]) for d in draws], device=x.device).repeat_interleave(rep)
        u = torch.tensor([d["u"] for d in draws], dtype=x.dtype, device=x.device).repeat_interleave(rep, 0)
        out = x.clone()
        geometric = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for j, name in enumerate(self.ops):
            m = op == j
            if not bool(m.any()):
                continue
            if name in ("crop", "scale", "rotate"):
                geometric |= m
            else:
                out[m] = self._pixelwise(name, x[m], u[m])
        if bool(geometric.any()):
            names = [self.ops[int(i)] for i in op[geometric]]
            out[geometric] = self._resample(x[geometric], self._thetas(names, u[geometric]))
        return out

    def _pixelwise(self, op: str, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``color``, ``cutout`` or ``flip`` with one parameter row per image (``u``: n x 6)."""
        if op == "flip":
            return x.flip(-1)
        if op == "color":
            col = u.view(len(x), 6, 1, 1, 1)
            x = x + (2 * col[:, 0] - 1) * self.brightness
            if x.shape[1] > 1:
                grey = x.mean(1, keepdim=True)
                x = grey + (x - grey) * (2 * col[:, 1])
            mean = x.mean((1, 2, 3), keepdim=True)
            return mean + (x - mean) * (1 + (2 * col[:, 2] - 1) * self.contrast)
        n, _, h, w = x.shape
        sh, sw = max(1, round(h * self.cutout)), max(1, round(w * self.cutout))
        y0 = (u[:, 0] * h).floor().long() - sh // 2
        x0 = (u[:, 1] * w).floor().long() - sw // 2
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        in_y = (rows >= y0[:, None]) & (rows < (y0 + sh)[:, None])
        in_x = (cols >= x0[:, None]) & (cols < (x0 + sw)[:, None])
        return x * (~(in_y[:, :, None] & in_x[:, None, :])).to(x.dtype)[:, None]

    def _thetas(self, names: list[str], u: torch.Tensor) -> torch.Tensor:
        """Affine matrices (n x 2 x 3) of ``crop``/``scale``/``rotate`` draws, one per image."""
        rows = []
        for name, v in zip(names, u.tolist(), strict=True):
            rows.append(self._theta(name, v))
        return torch.tensor(rows, dtype=u.dtype, device=u.device)

    def _theta(self, op: str, u: list[float]) -> list[list[float]]:
        if op == "crop":
            return [[1.0, 0.0, (2 * u[0] - 1) * 2 * self.crop], [0.0, 1.0, (2 * u[1] - 1) * 2 * self.crop]]
        if op == "scale":
            sx, sy = 1 + (2 * u[0] - 1) * self.scale, 1 + (2 * u[1] - 1) * self.scale
            return [[sx, 0.0, 0.0], [0.0, sy, 0.0]]
        if op == "rotate":
            t = math.radians((2 * u[0] - 1) * self.rotate_deg)
            return [[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0]]
        raise ValueError(op)  # pragma: no cover - guarded by __post_init__

    @staticmethod
    def _resample(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def __call__(self, x: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
        """Apply one draw ``p`` (from :meth:`sample`) to every image of ``x``."""
        op = p["op"]
        if op in ("crop", "scale", "rotate"):
            th = torch.tensor(self._theta(op, p["u"]), dtype=x.dtype, device=x.device)
            return self._resample(x, th.expand(x.shape[0], 2, 3))
        u = torch.tensor(p["u"], dtype=x.dtype, device=x.device).expand(x.shape[0], 6)
        return self._pixelwise(op, x, u)


def default_augment(channels: int, flip: bool | None = None) -> SiameseAugment:
    """All DSA operations; ``flip=None`` means on for colour images, off for grayscale ones
    (digits: a mirrored 2 or 7 is not a digit, and Fashion-MNIST gains little from it)."""
    use_flip = channels > 1 if flip is None else flip
    return SiameseAugment(ops=tuple(o for o in ALL_OPS if o != "flip" or use_flip))
