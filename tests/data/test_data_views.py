"""Dataset spec views (``:HxW`` resize, ``:rgb`` / ``:gray``) and the npz file forms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from _usps import write_usps_root
from permerge import api
from permerge.data import DatasetSpec, load_dataset, parse_spec
from permerge.data.spec import convert
from permerge.errors import DataError

# --- grammar ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "base", "size", "channels", "classes", "k"),
    [
        ("usps:28x28", "usps", (28, 28), None, None, None),
        ("mnist:32x32:rgb", "mnist", (32, 32), 3, None, None),
        ("mnist:RGB:32x32", "mnist", (32, 32), 3, None, None),  # either order; canonical below
        ("cifar10:gray[0-4]@10", "cifar10", None, 1, (0, 1, 2, 3, 4), 10),
        ("npz:/d/digits.npz:28x28:rgb[1,2]@3", "npz:/d/digits.npz", (28, 28), 3, (1, 2), 3),
        ("rotated-mnist:45:16x16", "rotated-mnist:45", (16, 16), None, None, None),
        ("npz:rgb", "npz:rgb", None, None, None, None),  # a file called rgb, not a view
        ("reduced:/s/x.safetensors:16x20", "reduced:/s/x.safetensors", (16, 20), None, None, None),
    ],
)
def test_parse_views(text, base, size, channels, classes, k):  # type: ignore[no-untyped-def]
    s = parse_spec(text)
    assert (s.base, s.size, s.channels, s.classes, s.per_class) == (base, size, channels, classes, k)
    assert parse_spec(str(s)) == s
    assert s.without_sampling().size == size and s.without_sampling().channels == channels


def test_canonical_form():
    assert str(DatasetSpec("mnist", (0, 1), 5, size=(32, 32), channels=3)) == "mnist:32x32:rgb[0,1]@5"
    assert str(parse_spec("usps:GREY:28x28")) == "usps:28x28:gray"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("mnist:0x28", "image size 0x28 out of range"),
        ("mnist:28x5000", "out of range (1-1024 per side)"),
        ("mnist:28x28:16x16", "gives two sizes"),
        ("rotated-mnist:28x28", "needs an angle"),
    ],
)
def test_view_errors(text, needle):  # type: ignore[no-untyped-def]
    with pytest.raises(DataError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        parse_spec(text)


# --- resize and channel conversion ------------------------------------------------------


def _npz(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    np.savez(path, images=images, labels=labels)
    return path


@pytest.fixture
def small16(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 16, 16), dtype=np.uint8)
    return _npz(tmp_path / "g16.npz", images, np.arange(50) % 10), images


def test_resize_equals_hand_resized(small16, tmp_path):  # type: ignore[no-untyped-def]
    path, images = small16
    both = {s: load_dataset(f"npz:{path}:28x28", s) for s in ("train", "test")}
    raw = {s: load_dataset(f"npz:{path}", s) for s in ("train", "test")}
    for split in ("train", "test"):  # the same resize on both splits
        got = both[split].images
        assert got.shape[1:] == (1, 28, 28) and got.dtype == torch.uint8
        hand = F.interpolate(raw[split].images.double(), size=(28, 28), mode="bilinear", antialias=True)
        assert torch.equal(got, hand.round().clamp(0, 255).to(torch.uint8))
        # and what PIL's bilinear resize gives, within rounding
        for img, mine in zip(raw[split].images, got, strict=True):
            pil = np.asarray(Image.fromarray(img[0].numpy()).resize((28, 28), Image.Resampling.BILINEAR))
            assert np.abs(pil.astype(int) - mine[0].numpy().astype(int)).max() <= 1
    assert both["train"].name == f"npz:{path}:28x28"


def test_shrink_matches_pil(tmp_path: Path) -> None:
    images = np.random.default_rng(1).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    path = _npz(tmp_path / "g28.npz", images, np.arange(10))
    got = load_dataset(f"npz:{path}:16x16", "train").images
    ref = load_dataset(f"npz:{path}", "train").images
    for img, mine in zip(ref, got, strict=True):
        pil = np.asarray(Image.fromarray(img[0].numpy()).resize((16, 16), Image.Resampling.BILINEAR))
        assert np.abs(pil.astype(int) - mine[0].numpy().astype(int)).max() <= 1


def test_channels(tmp_path: Path) -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    path = _npz(tmp_path / "c.npz", rgb, np.arange(10))
    grey = load_dataset(f"npz:{path}:gray", "train")
    ref = load_dataset(f"npz:{path}", "train")
    assert grey.image_shape == (1, 8, 8)
    for img, mine in zip(ref.images, grey.images, strict=True):
        pil = np.asarray(Image.fromarray(img.permute(1, 2, 0).numpy()).convert("L"))
        assert np.abs(pil.astype(int) - mine[0].numpy().astype(int)).max() <= 1
    with pytest.raises(DataError, match="gives two channel conversions"):
        load_dataset(f"npz:{path}:gray:rgb", "train")
    g = load_dataset(f"npz:{path}:gray", "train")
    up = convert(g, None, 3)
    assert up.image_shape == (3, 8, 8) and all(torch.equal(up.images[:, i], g.images[:, 0]) for i in range(3))


def test_grey_to_rgb_and_resize_for_an_rgb_model(shared_data: Path) -> None:
    d = load_dataset("mnist:32x32:rgb@2", "train", data_root=shared_data)
    assert d.image_shape == (3, 32, 32) and len(d) == 20
    plain = load_dataset("mnist@2", "train", data_root=shared_data)
    assert torch.equal(d.labels, plain.labels)  # sampling is unchanged by the view


def test_cifar_to_gray_keeps_normalisation_consistent(shared_data: Path) -> None:
    d = load_dataset("cifar10:gray@1", "test", data_root=shared_data)
    assert d.image_shape == (1, 32, 32) and len(d.normalization.mean) == 1
    assert d.normalization.mean[0] == pytest.approx(0.299 * 0.4914 + 0.587 * 0.4822 + 0.114 * 0.4465)


def test_float_images_stay_float() -> None:
    from permerge.data import ImageSet

    s = ImageSet(torch.rand(4, 1, 16, 16), torch.arange(4), name="syn")
    r = convert(s, (28, 28), None)
    assert r.images.dtype == torch.float32 and r.images.shape == (4, 1, 28, 28)
    assert float(r.images.min()) >= 0 and float(r.images.max()) <= 1


def test_merge_data_of_different_sizes(tmp_path: Path, shared_data: Path, clear_dataset_cache: None) -> None:
    """The paper's MNIST (28x28) vs USPS (16x16): one size for both through the spec."""
    root = write_usps_root(tmp_path / "root", 3, 1)
    with pytest.raises(DataError, match="different image shapes"):
        api.load_merge_data(["mnist@2", f"npz:{_usps_npz(root, tmp_path)}@2"], data_root=shared_data)
    (root / "MNIST").symlink_to(shared_data / "MNIST")
    md = api.load_merge_data(["mnist@2", "usps:28x28@2"], data_root=root)
    assert [s.image_shape for s in md.sources] == [(1, 28, 28), (1, 28, 28)]
    assert api.test_spec("usps:28x28@2") == "usps:28x28"


def _usps_npz(root: Path, tmp_path: Path) -> Path:
    d = load_dataset("usps", "train", data_root=root)
    return _npz(tmp_path / "u16.npz", d.images.numpy(), d.labels.numpy())


# --- npz file forms --------------------------------------------------------------------


def _parts(tmp_path: Path, stem: str = "digits") -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    tr = rng.integers(0, 256, (30, 16, 16), dtype=np.uint8)
    te = rng.integers(0, 256, (10, 16, 16), dtype=np.uint8)
    _npz(tmp_path / f"{stem}_train.npz", tr, np.arange(30) % 10)
    _npz(tmp_path / f"{stem}_test.npz", te, np.arange(10))
    return tr, te


@pytest.mark.parametrize("name", ["digits", "digits.npz"])
def test_npz_split_files_alone(tmp_path: Path, name: str) -> None:
    tr, te = _parts(tmp_path)
    spec = f"npz:{tmp_path / name}"
    assert np.array_equal(load_dataset(spec, "train").images[:, 0].numpy(), tr)
    assert np.array_equal(load_dataset(spec, "test").images[:, 0].numpy(), te)
    assert load_dataset(f"{spec}:28x28@2", "train").image_shape == (1, 28, 28)


def test_npz_only_train_part(tmp_path: Path) -> None:
    _parts(tmp_path)
    (tmp_path / "digits_test.npz").unlink()
    assert len(load_dataset(f"npz:{tmp_path / 'digits'}", "train")) == 30
    with pytest.raises(DataError) as e:
        load_dataset(f"npz:{tmp_path / 'digits'}", "test")
    msg = str(e.value)
    assert "no such file or folder for the test split" in msg and str(tmp_path / "digits_test.npz") in msg


@pytest.mark.parametrize("name", ["digits", "digits.npz"])
def test_npz_nothing_lists_every_candidate(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError) as e:
        load_dataset(f"npz:{tmp_path / name}", "train")
    msg = str(e.value)
    for p in ("digits_train.npz", "digits_test.npz", "digits.npz"):
        assert str(tmp_path / p) in msg, p
    assert "\n" not in msg


def test_npz_combined_file_still_split(tmp_path: Path) -> None:
    images = np.random.default_rng(4).integers(0, 256, (50, 8, 8), dtype=np.uint8)
    _npz(tmp_path / "all.npz", images, np.arange(50) % 10)
    for name in ("all", "all.npz"):
        tr, te = (load_dataset(f"npz:{tmp_path / name}", s) for s in ("train", "test"))
        assert (len(tr), len(te)) == (40, 10)
