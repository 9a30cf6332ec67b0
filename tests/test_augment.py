"""Grouped DSA draws (the distillation finisher's batched augmentation) equal per-chunk calls."""

from __future__ import annotations

import pytest
import torch

from permerge.augment import ALL_OPS, SiameseAugment, default_augment


@pytest.mark.parametrize("channels", [1, 3])
def test_grouped_draws_equal_one_call_per_chunk(channels: int) -> None:
    aug = default_augment(channels)
    x = torch.rand(100, channels, 12, 12)
    sizes = [len(c) for c in torch.arange(100).chunk(32)]
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    grouped = aug.grouped(x, sizes, g1)
    chunks, start = [], 0
    for n in sizes:
        chunks.append(aug(x[start : start + n], aug.sample(g2)))
        start += n
    torch.testing.assert_close(grouped, torch.cat(chunks), atol=1e-5, rtol=0)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))  # same draws used


@pytest.mark.parametrize("op", ALL_OPS)
def test_each_operation_alone_matches_and_keeps_gradients(op: str) -> None:
    aug = SiameseAugment(ops=(op,))
    x = torch.rand(6, 3, 10, 10, requires_grad=True)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    out = aug.grouped(x, [2, 4], g1)
    ref = torch.cat([aug(x[:2], aug.sample(g2)), aug(x[2:], aug.sample(g2))])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    out.sum().backward()  # differentiable in the pixels, as DSA needs
    assert x.grad is not None and x.grad.abs().sum() > 0
