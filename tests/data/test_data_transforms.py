"""Deterministic transforms: rotation and the CIFAR crop/flip augmentation."""

from __future__ import annotations

import pytest
import torch

from permerge.data.transforms import random_crop_flip, rotate


@pytest.fixture(scope="module")
def digits(mnist_tiny_test) -> torch.Tensor:
    return mnist_tiny_test.images  # 50 real uint8 digits


@pytest.mark.parametrize(("deg", "k"), [(90, 1), (180, 2), (270, 3), (-90, 3), (450, 1)])
def test_rotate_right_angles_exact_uint8(digits, deg, k):
    out = rotate(digits, deg)
    assert out.dtype == torch.uint8
    assert torch.equal(out, torch.rot90(digits, k, (2, 3)))


@pytest.mark.parametrize("deg", [90, 180, -90])
def test_rotate_right_angles_exact_float(digits, deg):
    x = digits.float() / 255
    assert torch.equal(rotate(x, deg), torch.rot90(x, deg // 90, (2, 3)))


@pytest.mark.parametrize("deg", [0, 360, -720])
def test_rotate_zero_is_identity_copy(digits, deg):
    out = rotate(digits, deg)
    assert torch.equal(out, digits)
    assert out.data_ptr() != digits.data_ptr()  # a copy, never a view


def test_rotate_45_properties(digits):
    a = rotate(digits, 45)
    assert a.dtype == torch.uint8 and a.shape == digits.shape
    assert torch.equal(a, rotate(digits, 45))  # deterministic
    assert not torch.equal(a, digits)
    # chunking does not change the result
    assert torch.equal(a, rotate(digits, 45, chunk=7))
    # 45 + 45 is close to 90 (two bilinear resamplings blur a little)
    twice = rotate(a, 45).float()
    assert (twice - torch.rot90(digits, 1, (2, 3)).float()).abs().mean() < 20
    # and -45 undoes most of +45
    back = rotate(a, -45).float()
    assert (back - digits.float()).abs().mean() < (a.float() - digits.float()).abs().mean() / 2


def test_rotate_counter_clockwise():
    x = torch.zeros(1, 1, 5, 5, dtype=torch.uint8)
    x[0, 0, 0, 4] = 255  # top-right corner
    out = rotate(x, 90)
    assert out[0, 0, 0, 0] == 255 and int(out.sum()) == 255  # now top-left


def test_crop_flip_shapes_and_determinism(digits):
    x = digits.float() / 255
    a = random_crop_flip(x, torch.Generator().manual_seed(0))
    b = random_crop_flip(x, torch.Generator().manual_seed(0))
    c = random_crop_flip(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)


def test_crop_flip_no_pad_is_identity_or_mirror(digits):
    x = digits.float()
    out = random_crop_flip(x, torch.Generator().manual_seed(0), pad=0)
    flipped = 0
    for o, i in zip(out, x, strict=True):
        if torch.equal(o, i):
            continue
        assert torch.equal(o, i.flip(-1))
        flipped += 1
    assert 0 < flipped < len(x)
    assert torch.equal(random_crop_flip(x, torch.Generator(), pad=0, flip=False), x)


def test_crop_is_a_shifted_window(digits):
    x = digits[:8].float()
    out = random_crop_flip(x, torch.Generator().manual_seed(3), pad=2, flip=False)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for o, p in zip(out, padded, strict=True):
        windows = [p[:, dy : dy + 28, dx : dx + 28] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(o, w) for w in windows)
