"""Deterministic image transforms used to derive datasets (rotation) and to augment."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def rotate(images: torch.Tensor, degrees: float, chunk: int = 8192) -> torch.Tensor:
    """Rotate ``N x C x H x W`` images counter-clockwise about their centre.

    Bilinear sampling, zero fill, same dtype out (uint8 is rounded). At multiples of 90
    degrees the sampling grid hits pixel centres exactly, so 90 degrees equals
    ``torch.rot90(images, 1, (2, 3))`` bit for bit.
    """
    if degrees % 360 == 0:
        return images.clone()
    if degrees % 90 == 0 and (degrees % 180 == 0 or images.shape[-1] == images.shape[-2]):
        # Right angles: an exact index permutation (the sampling grid below is off by ~1e-15,
        # which float images would keep).
        return torch.rot90(images, int(degrees // 90) % 4, (2, 3)).contiguous()
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    # Snap the tiny float residue of cos/sin at right angles so the grid is exact.
    c, s = round(c, 12), round(s, 12)
    theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=torch.float64)
    out = torch.empty_like(images)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].double()
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if images.dtype == torch.uint8:
            y = y.round_().clamp_(0, 255)
        out[start : start + chunk] = y.to(images.dtype)
    return out


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """The standard CIFAR augmentation (pad-and-crop + horizontal flip) on a float batch."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w)
    if flip:
        mirror = torch.rand(n, generator=generator) < 0.5
        cols = torch.where(mirror.view(n, 1, 1, 1), cols.flip(-1), cols)
    batch = torch.arange(n).view(n, 1, 1, 1)
    chan = torch.arange(x.shape[1]).view(1, -1, 1, 1)
    return padded[batch, chan, rows.expand(n, 1, h, w), cols.expand(n, 1, h, w)]


# ITU-R 601-2 luma, what PIL's convert("L") uses
LUMA = (0.299, 0.587, 0.114)


def convert_images(
    images: torch.Tensor, size: tuple[int, int] | None = None, channels: int | None = None, chunk: int = 8192
) -> torch.Tensor:
    """Resize ``N x C x H x W`` images to ``size`` = (H, W) and/or convert them to ``channels``.

    Grey to RGB repeats the channel; RGB to grey is the ITU-R 601-2 luma (PIL's ``"L"``).
    Resizing is bilinear (``align_corners=False``), antialiased when shrinking, like PIL's
    bilinear resize. Both act on float pixels, rounded once at the end for uint8 images
    (float images stay float, clamped to [0, 1]). A no-op returns the images unchanged.
    """
    c, h, w = images.shape[1:]
    to_c = c if channels is None else channels
    to_hw = (h, w) if size is None else size
    if (to_c, *to_hw) == (c, h, w):
        return images
    if to_c != c and (c, to_c) not in ((1, 3), (3, 1)):
        raise ValueError(f"cannot convert {c}-channel images to {to_c} channels (grey <-> RGB only)")
    out = torch.empty((images.shape[0], to_c, *to_hw), dtype=images.dtype)
    luma = torch.tensor(LUMA, dtype=torch.float64).view(1, 3, 1, 1)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].double()
        if to_c == 1 and c == 3:
            x = (x * luma).sum(1, keepdim=True)
        elif to_c == 3 and c == 1:
            x = x.repeat(1, 3, 1, 1)
        if to_hw != (h, w):
            x = F.interpolate(x, size=to_hw, mode="bilinear", align_corners=False, antialias=True)
        x = x.round_().clamp_(0, 255) if images.dtype == torch.uint8 else x.clamp_(0, 1)
        out[start : start + chunk] = x.to(images.dtype)
    return out
